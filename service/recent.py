"""A bounded sample of served recommendations, for the audit page (``GET /audit/recent``)."""

from __future__ import annotations

import json
import logging
import queue
import random
import threading
import time
from collections import deque

from service.redis_link import RedisLink, RedisUnavailable

log = logging.getLogger("recsae.service")


class RecentLog:
    """A bounded sample of served recommendations for the audit page (``GET /audit/recent``).

    A share ``RECSAE_AUDIT_SAMPLE`` (default 0.1) of served answers is kept: in a Redis stream
    ``{prefix}:recent`` capped with ``XADD MAXLEN ~ 500`` (shared by the replicas), written by a
    background thread so the request never waits for Redis; always also in an in-process deque
    of 500 (the answer without Redis or while it is down). Entries: time, user (or history),
    top items, firing latents, suppression.
    """

    MAXLEN = 500

    def __init__(self, link: RedisLink | None, prefix: str, rate: float = 0.1):
        self.link, self.key = link, f"{prefix}:recent"
        self.rate = min(1.0, max(0.0, rate))
        self.local: deque[dict] = deque(maxlen=self.MAXLEN)
        self._seq = 0
        self._q: queue.Queue[dict | None] = queue.Queue(maxsize=1000)
        self._thread: threading.Thread | None = None
        if link is not None:
            self._thread = threading.Thread(target=self._drain, name="recsae-recent", daemon=True)
            self._thread.start()

    def sampled(self) -> bool:
        """Whether to record this answer (a draw at ``rate``)."""
        return self.rate > 0 and (self.rate >= 1 or random.random() < self.rate)

    def record(self, user_id: str | None, items: list[tuple[str, str]], active: list[int],
               strengths: dict[int, float], policy: str | None, baseline: float = 0.0) -> None:
        """Keep one answer: ``items`` its listed (item_id, title), best first."""
        self._seq += 1
        entry = {
            "id": f"local-{self._seq}", "ts": round(time.time(), 3), "user_id": user_id, "policy": policy,
            "suppressed": sorted(strengths), "baseline": baseline, "active": active,
            "items": [{"item_id": i, "title": t} for i, t in items[:10]],
        }
        self.local.append(entry)
        if self._thread is not None:
            try:
                self._q.put_nowait(entry)
            except queue.Full:  # Redis slower than traffic: drop the sample, never the request
                pass

    def _drain(self) -> None:
        while True:
            entry = self._q.get()
            if entry is None:
                return
            data = json.dumps({k: v for k, v in entry.items() if k != "id"})
            try:
                self.link.run("recent", lambda r: r.xadd(self.key, {"e": data}, maxlen=self.MAXLEN, approximate=True))
            except RedisUnavailable:
                pass
            except Exception:  # noqa: BLE001 - a sample must never take the writer thread down
                log.exception("could not record a recent-traffic sample")

    def recent(self, limit: int) -> list[dict]:
        """Newest first: from the Redis stream (all replicas), else this worker's deque."""
        if self.link is not None:
            try:
                rows = self.link.run("recent", lambda r: r.xrevrange(self.key, "+", "-", count=limit))
                out = []
                for sid, fields in rows:
                    try:
                        e = json.loads(fields[b"e"])
                    except (KeyError, ValueError):
                        continue
                    if isinstance(e, dict):
                        out.append({**e, "id": sid.decode()})
                return out
            except RedisUnavailable:
                pass
        return list(reversed(self.local))[:limit]

    def close(self) -> None:
        if self._thread is not None:
            try:
                self._q.put_nowait(None)
            except queue.Full:
                pass
