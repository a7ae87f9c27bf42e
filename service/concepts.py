"""Concept lookups for the serving path: Redis in front of the bundle's in-process dictionary.

Keys are ``{prefix}:concept:{bundle_hash}:{latent}`` holding a small JSON summary, so a new
bundle never reads an old bundle's entries and replicas serving the same bundle share them.

Requests read a process-local copy (``described``: summary + label, the label split once when
an entry changes, never per request): zero Redis round trips per request. The copy is kept
coherent by ``service.redis_link.Tracker`` — Redis reports every change to a
``{prefix}:concept:{bundle_hash}:`` key (a curator's ``SET``, an expiry, another replica's write
back) and ``refresh`` re-reads just those keys (one ``MGET``), so an edit reaches every replica
within milliseconds. Missing or corrupt entries are answered from the bundle's dictionary and
written back (``SET NX`` for missing ones, so a concurrent curator's write wins). While Redis is
unreachable the last known copy is served (``recsae_concept_cache_fallback``); on reconnection
the whole copy is re-read.

``fetch`` (one ``MGET`` per call) remains for callers outside the request path.
Without ``REDIS_URL`` the copy is the bundle's dictionary.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any, Callable, Iterable, NamedTuple

import orjson
from redis.client import Pipeline

from recsae.concepts import Concept
from service.metrics import CACHE_FALLBACK, CACHE_HITS, CACHE_MISSES
from service.redis_link import RedisLink, RedisUnavailable
from service.schemas import ConceptSummary

log = logging.getLogger("recsae.service.concepts")


def label_of(description: str | None) -> str | None:
    """A concept's short name: the stats describer writes 'name — details'; LLM ones are short."""
    return description.split(" — ", 1)[0] if description else description


class Described(NamedTuple):
    """What an explanation shows of a concept, prepared when the entry changes, not per request."""

    summary: ConceptSummary
    label: str | None
    entry: dict
    """its ``active_latents`` entry (schema ``ActiveLatent``), the per-request fields (activation,
    suppressed, strength) still to fill in: copy it, never change it"""
    contribution: tuple[dict, dict]
    """its entry in an item's ``contributions`` (schema ``Contribution``) when not suppressed /
    suppressed, the number still to fill in: copy it, never change it"""
    json: tuple[bytes, bytes, bytes, bytes, bytes]
    """the same entries as JSON around their per-request fields, for the compiled writer
    (``service.hotpath``): the contribution before its number (``{"latent":12,"contribution":``),
    after it when not suppressed / suppressed (``,"label":...,"suppressed":false}``), the
    ``active_latents`` entry before its activation (``{"latent":12,"activation":``) and after it
    up to its suppressed flag (``,"description":...,"suppressed":``)"""


def describe(latent: int, s: ConceptSummary) -> Described:
    """A concept's prebuilt entries (``Described``) from its summary."""
    label = label_of(s.description)
    entry = {"latent": latent, "activation": 0.0, "description": s.description, "confidence": s.confidence,
             "status": s.status, "suppressed": False, "strength": 0.0}
    contribution = tuple({"latent": latent, "contribution": 0.0, "label": label, "suppressed": sup}
                         for sup in (False, True))
    fixed = {"description": s.description, "confidence": s.confidence, "status": s.status}
    as_json = (b'{"latent":%d,"contribution":' % latent,
               *(b"," + orjson.dumps({"label": label, "suppressed": sup})[1:] for sup in (False, True)),
               b'{"latent":%d,"activation":' % latent, b"," + orjson.dumps(fixed)[1:-1] + b',"suppressed":')
    return Described(s, label, entry, contribution, as_json)


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
        self.key_prefix = self._key_prefix = f"{prefix}:concept:{bundle_hash}:"
        self._local: dict[int, ConceptSummary] = {}
        self._parsed: dict[bytes, ConceptSummary] = {}  # cached value bytes -> parsed summary
        self._lock = threading.Lock()
        self._view: dict[int, Described] = {}
        for j in self.concepts:
            self._put(j, self.summary(j))
        self.tracked: Callable[[], bool] | None = None  # set by the owner of the Tracker
        self._hit_local, self._hit_redis = CACHE_HITS.labels("local"), CACHE_HITS.labels("redis")

    # -- the process-local copy (the request path) --------------------------------------------------
    def _put(self, latent: int, s: ConceptSummary) -> None:
        self._view[latent] = describe(latent, s)  # one dict store: atomic under the GIL

    def described(self, latents: list[int]) -> list[Described]:
        """The active concepts of a request (in the order of ``latents``), from process memory
        (no I/O)."""
        view = self._view
        try:
            out = [view[j] for j in latents]
        except KeyError:  # a latent the bundle does not describe
            for j in latents:
                if j not in view:
                    self._put(j, self.summary(j))
            out = [view[j] for j in latents]
        if self.link is None:
            self._hit_local.inc(len(out))
        elif self.tracked is not None and self.tracked():
            self._hit_redis.inc(len(out))  # the copy is Redis' content, kept coherent
        else:
            CACHE_FALLBACK.inc(len(out))  # Redis unreachable: the last known copy
        return out

    def latent_of(self, key: bytes) -> int | None:
        """The latent of one of this store's keys, else None."""
        prefix = self._key_prefix.encode()
        if key.startswith(prefix):
            try:
                return int(key[len(prefix):])
            except ValueError:
                return None
        return None

    def refresh(self, latents: Iterable[int] | None = None) -> None:
        """Re-read ``latents`` (default: every one held) from Redis into the copy: one MGET, plus
        one write-back pipeline when something was missing or corrupt. Raises RedisUnavailable."""
        latents = sorted(set(self._view) | set(self.concepts)) if latents is None else [int(j) for j in latents]
        if self.link is None or not latents:
            return
        raw = self.link.run("concepts_refresh", lambda r: r.mget([self.key(j) for j in latents]))
        absent, corrupt = {}, {}
        for j, value in zip(latents, raw):
            parsed = self._parse(j, value)
            if parsed is None:
                (absent if value is None else corrupt)[j] = parsed = self.summary(j)
            if self._view.get(j) is None or self._view[j].summary != parsed:
                self._put(j, parsed)
        if absent or corrupt:
            self._write_back(corrupt, absent)

    def _parse(self, latent: int, value: bytes | None) -> ConceptSummary | None:
        if value is None:
            return None
        parsed = self._parsed.get(value)
        if parsed is None:
            try:
                parsed = ConceptSummary.model_validate_json(value)
            except ValueError:
                log.warning("ignoring malformed cache entry %s", self.key(latent))
                return None
            if len(self._parsed) > 4 * max(1, len(self.concepts)):
                self._parsed.clear()  # bounded: entries change only when curated
            self._parsed[value] = parsed
        return parsed if parsed.latent == latent else None

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
            parsed = self._parse(j, value)
            if parsed is not None:
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

    def _write_back(self, entries: dict[int, ConceptSummary], absent: dict[int, ConceptSummary] | None = None) -> None:
        """``entries`` overwrite what is there (corrupt values); ``absent`` ones only if still absent."""
        def write(r: Any) -> None:
            pipe = r.pipeline(transaction=False)
            for j, s in entries.items():
                pipe.set(self.key(j), self._encode(s), ex=self.ttl_s)
            for j, s in (absent or {}).items():
                pipe.set(self.key(j), self._encode(s), ex=self.ttl_s, nx=True)
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
            texts = [(c, searchable_text(c)) for c in items]  # once a concept, for both passes
            # whole words first ("popular" must not match every "mid-popularity"); partial words
            # only when no concept has them all as words ("horr" still finds horror)
            whole = [c for c, t in texts if all(_has_word(t, w) for w in words)]
            items = whole or [c for c, t in texts if all(w in t for w in words)]
        key = sort.lstrip("-")
        desc = sort.startswith("-")
        if key == "latent":
            items.sort(key=lambda c: c.latent, reverse=desc)
        else:
            attr = "firing_frequency" if key == "frequency" else "confidence"
            known = [c for c in items if getattr(c, attr) is not None]
            unknown = [c for c in items if getattr(c, attr) is None]
            few = (lambda c: (c.detection.n_positive if c.detection else 0) < MIN_CHECKED) if attr == "confidence" \
                else (lambda c: False)
            known.sort(key=lambda c: (few(c), -getattr(c, attr) if desc else getattr(c, attr), c.latent))
            items = known + sorted(unknown, key=lambda c: c.latent)  # nulls last either way
        return items


MIN_CHECKED = 20
"""Held-out positives under which a confidence is sorted after the others (too few to trust)."""


def _has_word(text: str, word: str) -> bool:
    """``word`` occurs in ``text`` as a whole word (a plural 's' allowed)."""
    return re.search(rf"(?<![a-z0-9]){re.escape(word)}s?(?![a-z0-9])", text) is not None


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
