"""Concept lookups for the serving path: Redis in front of the bundle's in-process dictionary.

Keys are ``{prefix}:concept:{bundle_hash}:{latent}`` holding a small JSON summary, so a new
bundle never reads an old bundle's entries and replicas serving the same bundle share them.

Round trips (documented in docs/SERVICE.md):

* hit path: all active latents of a request in ONE ``MGET`` (or one pipeline, when the request
  also names a policy: ``HGET`` + ``MGET``);
* misses: answered from the in-process dictionary, then written back in one pipeline of
  ``SET ... EX ttl`` (a second round trip, only when something missed);
* Redis unavailable: answered from the in-process dictionary (``recsae_concept_cache_fallback``).

Without ``REDIS_URL`` the store is an in-process dict filled from the dictionary on first use.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Iterable

from redis.client import Pipeline

from recsae.concepts import Concept
from service.metrics import CACHE_FALLBACK, CACHE_HITS, CACHE_MISSES
from service.redis_link import RedisLink, RedisUnavailable
from service.schemas import ConceptSummary

log = logging.getLogger("recsae.service.concepts")


class ConceptStore:
    def __init__(
        self,
        concepts: list[Concept],
        bundle_hash: str,
        link: RedisLink | None = None,
        prefix: str = "recsae",
        ttl_s: int = 3600,
    ):
        self.concepts = {c.latent: c for c in concepts}
        self.link = link
        self.ttl_s = int(ttl_s)
        self._key_prefix = f"{prefix}:concept:{bundle_hash}:"
        self._local: dict[int, ConceptSummary] = {}
        self._parsed: dict[bytes, ConceptSummary] = {}  # cached value bytes -> parsed summary
        self._lock = threading.Lock()

    # -- keys and values --------------------------------------------------------------------------
    def key(self, latent: int) -> str:
        return f"{self._key_prefix}{int(latent)}"

    def summary(self, latent: int) -> ConceptSummary:
        c = self.concepts.get(int(latent))
        if c is None:
            return ConceptSummary(latent=int(latent), status="undescribed")
        return ConceptSummary.of(c)

    @staticmethod
    def _encode(s: ConceptSummary) -> bytes:
        return s.model_dump_json().encode()

    # -- lookups --------------------------------------------------------------------------------
    def queue(self, pipe: Pipeline, latents: list[int]) -> None:
        """Add this lookup's MGET to a pipeline that the caller runs as one round trip."""
        pipe.mget([self.key(j) for j in latents])

    def fetch(self, latents: Iterable[int]) -> dict[int, ConceptSummary]:
        """Summaries of ``latents``: one MGET on the hit path (see module doc)."""
        latents = [int(j) for j in latents]
        if not latents:
            return {}
        if self.link is None:
            return self._fetch_local(latents)
        try:
            raw = self.link.run("concepts", lambda r: r.mget([self.key(j) for j in latents]))
        except RedisUnavailable:
            return self.fallback(latents)
        return self.resolve(latents, raw)

    def resolve(self, latents: list[int], raw: list[bytes | None]) -> dict[int, ConceptSummary]:
        """Turn MGET replies into summaries; misses come from the dictionary and are written back."""
        out: dict[int, ConceptSummary] = {}
        missing: list[int] = []
        for j, value in zip(latents, raw):
            if value is not None:
                parsed = self._parsed.get(value)
                if parsed is None:
                    try:
                        parsed = ConceptSummary.model_validate_json(value)
                    except ValueError:
                        log.warning("ignoring malformed cache entry %s", self.key(j))
                    else:
                        if len(self._parsed) > 4 * max(1, len(self.concepts)):
                            self._parsed.clear()  # bounded: entries change only when curated
                        self._parsed[value] = parsed
                if parsed is not None and parsed.latent == j:
                    out[j] = parsed
                    continue
            missing.append(j)
            out[j] = self.summary(j)
        CACHE_HITS.labels("redis").inc(len(latents) - len(missing))
        if missing:
            CACHE_MISSES.labels("redis").inc(len(missing))
            self._write_back({j: out[j] for j in missing})
        return out

    def fallback(self, latents: list[int]) -> dict[int, ConceptSummary]:
        CACHE_FALLBACK.inc(len(latents))
        return {j: self.summary(j) for j in latents}

    def _write_back(self, entries: dict[int, ConceptSummary]) -> None:
        def write(r: Any) -> None:
            pipe = r.pipeline(transaction=False)
            for j, s in entries.items():
                pipe.set(self.key(j), self._encode(s), ex=self.ttl_s)
            pipe.execute()

        try:
            self.link.run("concepts_write", write)  # type: ignore[union-attr]
        except RedisUnavailable:
            pass  # served from the dictionary anyway; the next request retries the write

    def prefill(self) -> int:
        """Write every concept that is not cached yet (``SET NX EX``, one pipeline)."""
        if self.link is None or not self.concepts:
            return 0

        def fill(r: Any) -> list:
            pipe = r.pipeline(transaction=False)
            for j in self.concepts:
                pipe.set(self.key(j), self._encode(self.summary(j)), ex=self.ttl_s, nx=True)
            return pipe.execute()

        try:
            return sum(1 for ok in self.link.run("concepts_prefill", fill) if ok)
        except RedisUnavailable:
            return 0

    def _fetch_local(self, latents: list[int]) -> dict[int, ConceptSummary]:
        out: dict[int, ConceptSummary] = {}
        hits = 0
        for j in latents:
            s = self._local.get(j)
            if s is None:
                s = self.summary(j)
                with self._lock:
                    self._local[j] = s
            else:
                hits += 1
            out[j] = s
        CACHE_HITS.labels("local").inc(hits)
        if hits < len(latents):
            CACHE_MISSES.labels("local").inc(len(latents) - hits)
        return out

    # -- the dictionary (GET /concepts) ------------------------------------------------------------
    def search(self, q: str | None, status: str | None, sort: str) -> list[Concept]:
        items = list(self.concepts.values())
        if status:
            items = [c for c in items if c.status == status]
        if q:
            words = [w for w in q.lower().split() if w]
            items = [c for c in items if all(w in searchable_text(c) for w in words)]
        key = sort.lstrip("-")
        desc = sort.startswith("-")
        if key == "latent":
            items.sort(key=lambda c: c.latent, reverse=desc)
        else:
            attr = "firing_frequency" if key == "frequency" else "confidence"
            known = [c for c in items if getattr(c, attr) is not None]
            unknown = [c for c in items if getattr(c, attr) is None]
            known.sort(key=lambda c: (-getattr(c, attr) if desc else getattr(c, attr), c.latent))
            items = known + sorted(unknown, key=lambda c: c.latent)  # nulls last either way
        return items


def searchable_text(c: Concept) -> str:
    parts = [c.description or "", " ".join(c.attributes), " ".join(c.evidence.top_items)]
    return " ".join(parts).lower()


def resolve_query(concepts: Iterable[Concept], query: str) -> list[int]:
    """Latents whose description or attributes contain every word of ``query`` (case-insensitive).

    Only described concepts count: a policy must not match concepts by their evidence alone.
    """
    words = [w for w in query.lower().split() if w]
    out = []
    for c in concepts:
        if c.status != "described":
            continue
        text = f"{c.description or ''} {' '.join(c.attributes)}".lower()
        if words and all(w in text for w in words):
            out.append(c.latent)
    return sorted(out)
