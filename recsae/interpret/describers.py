"""Describers: evidence about a latent -> a description, the attributes it names, and why.

``stats`` (the default) is offline and deterministic: it names the latent from its most enriched
attributes, choosing the few that best tell firing from non-firing *training* samples. ``llm``
asks an OpenAI-compatible chat endpoint; every answer is cached on disk as it arrives, so an
interrupted run resumes by asking only for what is missing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from recsae import ConfigError
from recsae.interpret.evidence import Attribute, LatentEvidence, best_threshold, calibration_rows

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Description:
    """What a describer says about one latent."""

    latent: int
    status: Literal["described", "undescribed"]
    text: str | None = None
    attributes: list[str] = field(default_factory=list)
    threshold: float | None = None  # stats predictor calibration (training samples only)
    reason: str | None = None
    headline: list[str] = field(default_factory=list)  # supported feature attributes the text leads with
    exemplars: list[str] = field(default_factory=list)  # titles of the items that stand for the latent


class Describer(ABC):
    name: str = "describer"
    model: str | None = None

    @abstractmethod
    def describe(self, ev: LatentEvidence) -> Description:
        """Describe one latent from its training evidence; never raises for one bad latent."""

    def usage(self) -> dict:
        return {}


# -- naming ---------------------------------------------------------------------------------------
def _join(words: list[str], last: str = "and") -> str:
    if len(words) <= 1:
        return "".join(words)
    return f"{', '.join(words[:-1])} {last} {words[-1]}"


def name_features(features: list[str]) -> str:
    """Plain words for item features: "1990s Horror and Thriller", "popular (head) titles"."""
    by: dict[str, list[str]] = {}
    for f in features:
        g, _, v = f.partition(":")
        if v not in by.setdefault(g, []):
            by[g].append(v)
    pop = by.pop("popularity", [])
    genres, decades, tags = by.pop("genre", []), by.pop("decade", []), by.pop("tag", [])
    words = ["/".join(sorted(decades))] if decades else []
    coded = False
    for g, vals in by.items():
        if all(v.replace(".", "").isdigit() for v in vals):
            words.append(f"{g.capitalize()} {' or '.join(vals)}")
            coded = True
        else:
            words.append(" or ".join(vals))
    if genres:
        words.append(_join(genres))
    if tags:
        words.append("tagged " + _join([f"'{t}'" for t in tags], "or"))
    core = " ".join(words)
    popw = _join([{"head": "popular (head)", "mid": "mid-popularity", "tail": "long-tail"}.get(p, p) for p in pop], "or")
    if not core:
        return f"{popw} titles" if popw else ""
    if coded and not genres:
        core += " items"
    return f"{core}, {popw}" if popw else core


def describe_attributes(attributes: list[str], label: Callable[[str], str], max_items: int = 4) -> list[str]:
    """One phrase per source: "recommends 1990s Action such as Men in Black (1997) or Eraser (1996)"."""
    by: dict[str, tuple[list[str], list[str]]] = {}
    for name in attributes:
        a = Attribute.parse(name)
        feats, items = by.setdefault(a.source, ([], []))
        (items if a.group == "item" else feats).append(name)
    lead = {"history": "history mostly", "last": "latest item", "next": "recommends", "user": "users:"}
    out = []
    for source in SOURCE_ORDER:
        if source not in by:
            continue
        feats, items = by[source]
        if source == "user":
            out.append(f"users: {', '.join(label(n) for n in feats)}")
            continue
        what = name_features([Attribute.parse(n).feature for n in feats])
        if items:
            titles = [label(n) for n in items]
            more = f" (+{len(titles) - max_items} more)" if len(titles) > max_items else ""
            listed = _join(titles[:max_items], "or") + more
            what = f"{what} such as {listed}" if what else listed
            if source == "history":
                what = f"includes {what}"
        out.append(f"{lead[source]} {what}" if source != "history" or not items else f"history {what}")
    return out


SOURCE_ORDER = ("history", "last", "next", "user")


# -- stats ---------------------------------------------------------------------------------------
class StatsDescriber(Describer):
    """Greedy choice among the most enriched attributes, judged on training samples only.

    Candidates: per source (history, last item, top recommendation) the few item features whose
    share rises most over the background, the most enriched user features, per source one *item
    set* (items much more often the latest item / the recommendation when the latent fires), and
    per feature group the fewest values most firing samples share (a *cover*). Clauses are added
    while they raise the balanced accuracy of the match predictor (firing vs random non-firing
    training samples). The latent is then *named*: covers of every source already used are added
    when that costs at most ``name_tolerance`` of balanced accuracy, so "latest item: Romance
    such as ..." replaces a bare list of titles. The predictor's threshold is kept for scoring.

    The *headline* (the text before " — ") names only features with support as well as lift:
    at least ``min_support`` of the firing samples (mean feature value: the share of rows for
    the latest item / the recommendation, of window items for the history) and ``min_count``
    firing samples, lift >= ``headline_lift``. When no such feature names the latent (popularity
    or tags aside), its *exemplars* do: the items most over-represented as the latest item or
    the recommendation, from the item-set clause (added when it costs at most
    ``name_tolerance``, so the scorer reads what the headline names), e.g.
    "Britney Spears, Christina Aguilera, Rihanna — tags: pop, dance".
    """

    name = "stats"

    def __init__(
        self,
        seed: int = 0,
        max_clauses: int = 3,
        per_source: int = 4,
        item_set: int = 10,
        min_gain: float = 0.005,
        name_tolerance: float = 0.03,
        shared: float = 0.7,
        min_support: float = 0.3,
        min_count: int = 10,
        headline_lift: float = 1.5,
        headline_terms: int = 3,
        n_exemplars: int = 3,
    ) -> None:
        self.seed, self.max_clauses, self.per_source = seed, max_clauses, per_source
        self.item_set, self.min_gain = item_set, min_gain
        self.name_tolerance, self.shared = name_tolerance, shared
        self.min_support, self.min_count, self.headline_lift = min_support, min_count, headline_lift
        self.headline_terms, self.n_exemplars = headline_terms, n_exemplars

    def rules(self) -> dict:
        """The headline rule, stated in the dictionary's summary."""
        return {"headline_min_support": self.min_support, "headline_min_count": self.min_count,
                "headline_min_lift": self.headline_lift}  # fmt: skip

    def headline(self, ev: LatentEvidence) -> list[str]:
        """Up to ``headline_terms`` item/user-free features with support and lift, most telling first
        (share x log lift); one source per feature."""
        ctx = ev.context
        lift = ev.shares / np.maximum(ctx.background, 1e-9)
        ok = (
            (ctx.sources != "user") & (ev.shares >= self.min_support) & (ev.counts >= self.min_count)
            & (lift >= self.headline_lift)
        )  # fmt: skip
        cols = np.flatnonzero(ok)
        cols = cols[np.argsort(-(ev.shares[cols] * np.log(lift[cols])), kind="stable")]
        out, seen = [], set()
        for c in cols:
            a = Attribute.parse(ctx.names[c])
            if a.feature not in seen:
                seen.add(a.feature)
                out.append(ctx.names[c])
            if len(out) == self.headline_terms:
                break
        return out

    def covers(self, ev: LatentEvidence, source: str) -> list[list[str]]:
        """Per feature group, the fewest values (at most 2) that most firing samples have in this
        source, e.g. ``[last:genre:Romance]`` or ``[last:decade:1970s, last:decade:1980s]``;
        kept when they are at least 1.5x as common as in the background."""
        ctx = ev.context
        by: dict[str, list[int]] = {}
        for c in np.flatnonzero(ctx.sources == source):
            by.setdefault(Attribute.parse(ctx.names[c]).group, []).append(int(c))
        out = []
        for cols in by.values():
            cols = sorted(cols, key=lambda c: -ev.shares[c])[:2]
            for n in (1, 2):
                share, bg = ev.shares[cols[:n]].sum(), min(1.0, ctx.background[cols[:n]].sum())
                if share >= self.shared and share >= 1.5 * bg and all(ev.shares[c] >= 0.15 for c in cols[:n]):
                    out.append([ctx.names[c] for c in cols[:n]])
                    break
        return out

    def candidates(self, ev: LatentEvidence) -> list[list[str]]:
        ctx = ev.context
        diff = ev.shares - ctx.background
        lift = ev.shares / np.maximum(ctx.background, 1e-9)
        out: list[list[str]] = []
        for source, n in (("history", self.per_source), ("last", self.per_source), ("next", self.per_source), ("user", 2)):
            cols = np.flatnonzero(ctx.sources == source)
            cols = sorted((c for c in cols if diff[c] > 0.02 and lift[c] > 1.2), key=lambda c: -diff[c])[:n]
            out += [[ctx.names[c]] for c in cols]
        for source in ("last", "next"):
            items = ev.item_set(source, n=self.item_set)
            if items:
                out.append([ctx.space.item_attribute(source, e.item) for e in items])
        for source in ("last", "next"):
            out += [c for c in self.covers(ev, source) if c not in out]
        return out

    def describe(self, ev: LatentEvidence) -> Description:
        ctx, space = ev.context, ev.context.space
        pos, neg = calibration_rows(ev, seed=self.seed)
        rows = np.concatenate([pos, neg])
        n_pos = len(pos)
        memo: dict[tuple, np.ndarray] = {}

        def evaluate(attrs: list[str]) -> tuple[float, float]:
            vals = []
            for c in space.clauses(attrs):
                if c not in memo:
                    memo[c] = space.clause_values(c, ctx.train, rows)
                vals.append(memo[c])
            s = np.mean(vals, axis=0)
            t, ba = best_threshold(s[:n_pos], s[n_pos:])
            return ba, t

        chosen: list[str] = []
        best_ba, best_t = 0.5, None
        cands = self.candidates(ev)
        for _ in range(self.max_clauses):
            trials = [(evaluate(chosen + c), c) for c in cands if not set(c) <= set(chosen)]
            if not trials:
                break
            (ba, t), c = max(trials, key=lambda x: x[0][0])
            if ba < best_ba + self.min_gain:
                break
            chosen, best_ba, best_t = chosen + [a for a in c if a not in chosen], ba, t
        if not chosen:
            return Description(ev.latent, "undescribed", reason="no attribute separates firing from non-firing training samples")
        # name what the firing samples share, in every source already used, when it costs at
        # most name_tolerance of balanced accuracy (item sets become "Romance such as ...")
        floor = best_ba - self.name_tolerance
        used = {Attribute.parse(a).source for a in chosen}
        for source in [s for s in ("history", "last", "next") if s in used]:
            have = {Attribute.parse(a).group for a in chosen if Attribute.parse(a).source == source}
            for cover in self.covers(ev, source):
                if Attribute.parse(cover[0]).group in have:
                    continue
                ba, t = evaluate(chosen + cover)
                if ba >= floor:
                    chosen, best_ba, best_t = chosen + cover, ba, t
        headline = self.headline(ev)
        exemplars: list[str] = []
        if not [h for h in headline if Attribute.parse(h).group not in GENERIC_GROUPS]:
            # no feature names it: its exemplars do, from an item set the scorer reads too
            for source in ev.exemplar_sources():
                items = ev.item_set(source, n=self.item_set)
                clause = [space.item_attribute(source, e.item) for e in items]
                if not clause:
                    continue
                if not set(clause) <= set(chosen):
                    ba, t = evaluate(chosen + clause)
                    if ba < floor:
                        continue
                    chosen, best_ba, best_t = chosen + [a for a in clause if a not in chosen], ba, t
                exemplars = [space.titles[e.item] for e in items[: self.n_exemplars]]
                break
        text = self.text(ev, chosen, headline, exemplars)
        return Description(
            ev.latent, "described", text=text, attributes=chosen, threshold=best_t, headline=headline,
            exemplars=exemplars or ev.exemplars(self.n_exemplars),
        )  # fmt: skip

    def text(self, ev: LatentEvidence, attributes: list[str], headline: list[str], exemplars: list[str]) -> str:
        """Headline (supported features, or exemplars and tags) — what the predictor reads."""
        space = ev.context.space
        feats = [Attribute.parse(h).feature for h in headline]
        if exemplars:
            tags = [f.partition(":")[2] for f in feats if f.startswith("tag:")]
            head = ", ".join(exemplars) + (f" — tags: {', '.join(tags)}" if tags else "")
        else:
            head = name_features(feats)
        body = "; ".join(describe_attributes(attributes, space.label))
        return f"{head} — {body}" if head else body


#: feature groups that alone do not name a concept: popularity says how popular, tags need items
GENERIC_GROUPS = ("popularity", "tag")


def names_nothing(text: str | None, attributes: list[str], exemplars: list[str]) -> bool:
    """A description whose attributes name no item and no feature beyond popularity, and whose
    text names none of the latent's exemplars."""
    return all(Attribute.parse(a).group == "popularity" for a in attributes) and not any(
        e in (text or "") for e in exemplars
    )


# -- LLM -----------------------------------------------------------------------------------------
class LLMSettings(BaseModel):
    """``JobConfig.llm``: where to ask, how hard to try, and what it costs."""

    model_config = ConfigDict(extra="forbid")

    base_url: str | None = Field(None, description="OpenAI-compatible endpoint, e.g. http://host:8000/v1")
    model: str = "gpt-4o-mini"
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    timeout_s: float = Field(60.0, gt=0)
    max_attempts: int = Field(4, ge=1)
    backoff_s: float = Field(1.0, ge=0, description="first retry delay; doubles per attempt")
    backoff_max_s: float = Field(30.0, ge=0)
    concurrency: int = Field(8, ge=1, le=256)
    max_tokens: int = Field(400, ge=1)
    cache: str | None = Field(None, description="JSONL answer cache (default: in the work directory)")
    price_input_per_1m: float = Field(0.0, ge=0, description="USD per million prompt tokens")
    price_output_per_1m: float = Field(0.0, ge=0, description="USD per million completion tokens")
    scorer: Literal["llm", "stats"] = "llm"
    repeats: int = Field(3, ge=1, description="paper-protocol repeats (one request each)")
    detection_per_class: int = Field(50, ge=1)
    chunk: int = Field(25, ge=1, description="samples per scoring request")
    max_titles: int = Field(10, ge=1, description="history titles shown per sample")
    requests_per_minute: float | None = Field(
        None, gt=0, description="client-side limit on real requests (token bucket; burst = one second's worth, >= 1)"
    )
    tokens_per_minute: float | None = Field(
        None, gt=0, description="client-side limit on estimated tokens (prompt chars / 4 + max_tokens)"
    )
    mode: Literal["sync", "batch"] = Field("sync", description="batch: OpenAI Batch API, sync fallback for the rest")
    batch_poll_s: float = Field(30.0, gt=0, description="seconds between batch status polls")
    batch_timeout_s: float = Field(86400.0, gt=0, description="give up on a batch (cancel it, go sync) after this")
    batch_max_requests: int = Field(50000, ge=1, description="requests per submitted batch (OpenAI: 50,000)")


class LLMFatalError(ConfigError):
    """The endpoint refuses us (bad key, no access): retrying cannot help, stop the job."""


class RateLimiter:
    """Thread-safe token bucket: ``per_minute`` units refill continuously up to ``burst``.

    ``acquire(n)`` blocks until n units are available, so over any window of W seconds at most
    ``burst + per_minute * W / 60`` units are spent; a request larger than ``burst`` waits for a
    full bucket and leaves it in debt (the long-run rate still holds). ``pause(s)``
    (a server's ``Retry-After``) holds every caller for s seconds; it works without a rate too.
    """

    def __init__(self, per_minute: float | None, burst: float | None = None) -> None:
        self.rate = per_minute / 60.0 if per_minute else None
        self.burst = max(1.0, burst if burst is not None else (self.rate or 1.0))
        self.tokens = self.burst
        self.t = time.monotonic()
        self.blocked_until = 0.0
        self.lock = threading.Lock()

    def acquire(self, n: float = 1.0) -> float:
        """Block until granted; returns the ``time.monotonic()`` of the grant."""
        need = min(float(n), self.burst)
        while True:
            with self.lock:
                now = time.monotonic()
                if self.rate is not None:
                    self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
                self.t = now
                wait = self.blocked_until - now
                if wait <= 0:
                    if self.rate is None:
                        return now
                    if self.tokens >= need:
                        self.tokens -= n
                        return now
                    wait = (need - self.tokens) / self.rate
            time.sleep(max(wait, 0.001))

    def pause(self, seconds: float) -> None:
        with self.lock:
            self.blocked_until = max(self.blocked_until, time.monotonic() + seconds)


def _retry_after(e: Exception) -> float | None:
    """Seconds from a 429/503's ``retry-after-ms`` or ``Retry-After`` (seconds or HTTP date)."""
    headers = getattr(getattr(e, "response", None), "headers", None)
    if not headers:
        return None
    try:
        if headers.get("retry-after-ms"):
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
        v = headers.get("retry-after")
        if not v:
            return None
        try:
            return max(0.0, float(v))
        except ValueError:
            from email.utils import parsedate_to_datetime

            return max(0.0, parsedate_to_datetime(v).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class Usage:
    """Requests and tokens, thread-safe; cached answers cost nothing."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = self.cached = self.failed = self.retries = 0
        self.batches = self.batch_requests = self.rate_waits = 0
        self.prompt_tokens = self.completion_tokens = 0

    def add(self, **kw: int) -> None:
        with self.lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)

    def as_dict(self, s: LLMSettings) -> dict:
        cost = (self.prompt_tokens * s.price_input_per_1m + self.completion_tokens * s.price_output_per_1m) / 1e6
        return {
            "model": s.model, "requests": self.requests, "cached_answers": self.cached,
            "failed_requests": self.failed, "retries": self.retries,
            "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
            "cost_usd": round(cost, 6), "batches": self.batches, "batch_requests": self.batch_requests,
        }  # fmt: skip


class LLMClient:
    """The ``openai`` client plus a persistent answer cache, retries with backoff, and usage.

    Cache key: SHA-256 of (model, temperature, messages). Each valid answer is appended to the
    JSONL file (and flushed) the moment it arrives; invalid or failed answers are not cached,
    so a re-run asks again exactly for those and for what was never asked.

    Every real request first waits for the rate limits (``requests_per_minute``,
    ``tokens_per_minute``: token buckets shared by all threads); a 429's ``Retry-After`` pauses
    them all. ``run_batch`` fills the cache through the Batch API (``mode="batch"``).
    """

    def __init__(self, settings: LLMSettings, cache_path: Path) -> None:
        from openai import OpenAI

        self.s = settings
        key = os.environ.get(settings.api_key_env)
        if not key:
            raise ConfigError(
                f"the LLM describer needs an API key in ${settings.api_key_env} "
                "(set it, or choose another variable with llm.api_key_env)"
            )
        self.client = OpenAI(base_url=settings.base_url, api_key=key, timeout=settings.timeout_s, max_retries=0)
        self.endpoint = str(self.client.base_url)
        self.usage = Usage()
        self.cache_path = Path(cache_path)
        self._cache: dict[str, str] = {}
        self._lock = threading.Lock()
        self._batch_reasons: dict[str, str] = {}  # why a batch did not answer a key (sync fallback)
        self.requests_limiter = RateLimiter(settings.requests_per_minute)
        self.tokens_limiter = (
            RateLimiter(settings.tokens_per_minute) if settings.tokens_per_minute else None
        )
        if self.cache_path.exists():
            for line in self.cache_path.read_text().splitlines():
                try:  # a line cut short by an interruption is skipped, not fatal
                    rec = json.loads(line)
                    self._cache[rec["key"]] = rec["content"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue

    def _fatal(self, e: Exception) -> LLMFatalError:
        status = getattr(e, "status_code", "?")
        return LLMFatalError(
            f"LLM endpoint {self.endpoint} rejected the API key from ${self.s.api_key_env} "
            f"(HTTP {status}): set a valid key for model {self.s.model!r}"
        )

    def check(self) -> None:
        """One cheap call before any work: a wrong key or unreachable endpoint fails here."""
        import openai

        try:
            self.client.models.list()
        except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
            raise self._fatal(e) from None
        except openai.NotFoundError:  # servers without /models: a 1-token completion instead
            try:
                self.client.chat.completions.create(
                    model=self.s.model, messages=[{"role": "user", "content": "ping"}], max_tokens=1
                )
            except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
                raise self._fatal(e) from None
        except openai.APIConnectionError as e:
            raise ConfigError(f"cannot reach the LLM endpoint {self.endpoint}: {e}") from None

    def key(self, messages: list[dict]) -> str:
        blob = json.dumps({"model": self.s.model, "temperature": self.s.temperature, "messages": messages}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def ask(self, messages: list[dict], parse: Callable[[str], T]) -> tuple[T | None, str | None]:
        """(parsed answer, None) or (None, reason) after ``max_attempts`` tries."""
        import openai

        key = self.key(messages)
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None:
            try:
                value = parse(cached)
                self.usage.add(cached=1)
                return value, None
            except (ValueError, ValidationError):
                pass  # the parser got stricter: ask again
        reason = "no attempt"
        hint: float | None = None  # the server's Retry-After
        for attempt in range(self.s.max_attempts):
            if attempt:
                self.usage.add(retries=1)
                delay = min(self.s.backoff_max_s, self.s.backoff_s * 2 ** (attempt - 1))
                if hint is not None:
                    delay = max(delay, min(hint, MAX_RETRY_AFTER_S))
                log.info("LLM request failed (%s); retry %d in %.2f s", reason, attempt, delay)
                time.sleep(delay)
            hint = None
            self.throttle(messages)
            try:
                resp = self.client.chat.completions.create(
                    model=self.s.model,
                    messages=messages,
                    temperature=self.s.temperature,
                    max_tokens=self.s.max_tokens,
                    response_format={"type": "json_object"},
                )
            except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
                raise self._fatal(e) from None
            except openai.APITimeoutError:
                reason = f"timeout after {self.s.timeout_s:g} s"
            except openai.RateLimitError as e:
                reason = "rate limited (HTTP 429)"
                hint = _retry_after(e)
                if hint is not None:  # everyone waits, not just this request
                    self.requests_limiter.pause(min(hint, MAX_RETRY_AFTER_S))
            except openai.APIStatusError as e:
                reason = f"HTTP {e.status_code}"
                if e.status_code < 500:  # a bad request stays bad
                    self.usage.add(requests=1, failed=1)
                    return None, f"{reason}: {str(e)[:200]}"
            except openai.APIConnectionError as e:
                reason = f"connection error ({e})"
            else:
                u = resp.usage
                self.usage.add(
                    requests=1,
                    prompt_tokens=getattr(u, "prompt_tokens", 0) or 0,
                    completion_tokens=getattr(u, "completion_tokens", 0) or 0,
                )
                content = (resp.choices[0].message.content if resp.choices else None) or ""
                try:
                    value = parse(content)
                except (ValueError, ValidationError) as e:
                    reason = f"invalid answer ({_short(e)})"
                    self.usage.add(failed=1)
                    continue
                self._store(key, content)
                return value, None
            self.usage.add(requests=1, failed=1)
        batch = self._batch_reasons.get(key)
        return None, f"{reason}; gave up after {self.s.max_attempts} attempts" + (f" (batch: {batch})" if batch else "")

    def throttle(self, messages: list[dict]) -> None:
        """Wait for the rate limits before a real request (cached answers never get here)."""
        self.requests_limiter.acquire(1)
        if self.tokens_limiter is not None:
            chars = sum(len(str(m.get("content", ""))) for m in messages)
            self.tokens_limiter.acquire(chars / 4 + self.s.max_tokens)

    def peek(self, messages: list[dict], parse: Callable[[str], T]) -> T | None:
        """The cached answer, parsed, or None; asks nothing and counts nothing."""
        with self._lock:
            cached = self._cache.get(self.key(messages))
        if cached is None:
            return None
        try:
            return parse(cached)
        except (ValueError, ValidationError):
            return None

    # -- batch mode ------------------------------------------------------------------------------
    def batch_state_path(self, phase: str) -> Path:
        return self.cache_path.with_name(f"{self.cache_path.stem}.batch-{phase}.json")

    def run_batch(self, phase: str, items: list[tuple[list[dict], Callable[[str], object]]]) -> dict:
        """Ask for every uncached item through the OpenAI Batch API; valid answers go to the cache.

        Submitted batch ids are saved next to the cache before polling, so an interrupted job
        resumes polling the same batches instead of submitting new ones. Whatever does not come
        back valid (failed lines, missing lines, a failed/expired batch, a timeout, a server
        without batch support) is left uncached: the sync path then asks for it with its retries.
        """
        import openai

        pending: dict[str, tuple[list[dict], Callable]] = {}
        for messages, parse in items:
            k = self.key(messages)
            if k not in pending and self.peek(messages, parse) is None:
                pending[k] = (messages, parse)
        state_path = self.batch_state_path(phase)
        stats = {"phase": phase, "pending": len(pending), "answered": 0, "invalid": 0, "failed": 0, "missing": 0}
        ids: list[str] = []
        if state_path.exists():
            try:
                ids = list(json.loads(state_path.read_text())["batches"])
                log.info("LLM batch (%s): resuming %s", phase, ", ".join(ids))
            except (json.JSONDecodeError, KeyError, TypeError):
                ids = []
        stats["resumed"] = bool(ids)
        if not ids:
            if not pending:
                return stats
            try:
                ids = self._submit(phase, pending)
            except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
                raise self._fatal(e) from None
            except openai.APIError as e:
                log.warning("LLM batch (%s) could not be submitted (%s): asking synchronously", phase, _short(e))
                for k in pending:
                    self._batch_reasons[k] = f"not submitted ({_short(e)})"
                stats["missing"] = len(pending)
                return stats
        stats["batches"] = ids
        answered: set[str] = set()
        for bid in ids:
            try:
                batch = self._poll(phase, bid)
            except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
                raise self._fatal(e) from None
            except openai.APIError as e:
                log.warning("LLM batch %s: polling failed (%s): asking synchronously", bid, _short(e))
                continue
            if batch is None:
                for k in pending:
                    self._batch_reasons.setdefault(k, f"batch {bid} not done after {self.s.batch_timeout_s:g} s")
                continue
            if batch.status != "completed":
                why = f"batch {batch.status}"
                errs = getattr(getattr(batch, "errors", None), "data", None) or []
                if errs:
                    why += f": {getattr(errs[0], 'message', '') or getattr(errs[0], 'code', '')}"
                for k in pending:
                    self._batch_reasons.setdefault(k, why)
                log.warning("LLM batch %s (%s) ended %s: its missing answers are asked synchronously", bid, phase, why)
            for fid, is_err in ((batch.output_file_id, False), (batch.error_file_id, True)):
                if not fid:
                    continue
                try:
                    text = self.client.files.content(fid).text
                except openai.APIError as e:
                    log.warning("LLM batch %s: cannot download %s (%s)", bid, fid, _short(e))
                    continue
                self._read_results(text, pending, answered, stats, is_err)
        for k in pending:
            if k not in answered and k not in self._batch_reasons:
                self._batch_reasons[k] = "no answer in the batch output"
        stats["missing"] = len([k for k in pending if k not in answered]) - stats["invalid"] - stats["failed"]
        state_path.unlink(missing_ok=True)
        log.info("LLM batch (%s): %s", phase, {k: v for k, v in stats.items() if k != "batches"})
        return stats

    def _submit(self, phase: str, pending: dict[str, tuple[list[dict], Callable]]) -> list[str]:
        lines = [
            json.dumps({
                "custom_id": k, "method": "POST", "url": "/v1/chat/completions",
                "body": {
                    "model": self.s.model, "messages": messages, "temperature": self.s.temperature,
                    "max_tokens": self.s.max_tokens, "response_format": {"type": "json_object"},
                },
            })  # fmt: skip
            for k, (messages, _) in pending.items()
        ]
        ids = []
        step = self.s.batch_max_requests
        state_path = self.batch_state_path(phase)
        state_path.parent.mkdir(parents=True, exist_ok=True)
        for i in range(0, len(lines), step):
            data = ("\n".join(lines[i : i + step]) + "\n").encode()
            f = self.client.files.create(file=(f"recsae-{phase}-{i // step}.jsonl", data), purpose="batch")
            b = self.client.batches.create(
                input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                metadata={"recsae_phase": phase},
            )  # fmt: skip
            ids.append(b.id)
            self.usage.add(batches=1)
            # saved after every submission: an interruption never loses a submitted batch
            state_path.write_text(json.dumps({"phase": phase, "batches": ids, "model": self.s.model}))
        log.info("LLM batch (%s): submitted %d requests as %s", phase, len(lines), ", ".join(ids))
        return ids

    def _poll(self, phase: str, bid: str):
        """The finished batch, or None after ``batch_timeout_s`` (then it is cancelled)."""
        t0 = time.monotonic()
        while True:
            b = self.client.batches.retrieve(bid)
            rc = b.request_counts
            log.info(
                "LLM batch %s (%s): %s, %s/%s done, %s failed", bid, phase, b.status,
                getattr(rc, "completed", "?"), getattr(rc, "total", "?"), getattr(rc, "failed", "?"),
            )  # fmt: skip
            if b.status in BATCH_DONE:
                return b
            if time.monotonic() - t0 > self.s.batch_timeout_s:
                log.warning("LLM batch %s: not done after %g s; cancelling it and asking synchronously", bid, self.s.batch_timeout_s)
                try:
                    self.client.batches.cancel(bid)
                except Exception:  # noqa: BLE001 -- best effort
                    pass
                return None
            self._wait(self.s.batch_poll_s)

    def _wait(self, seconds: float) -> None:  # a seam for tests (interrupting a poll)
        time.sleep(seconds)

    def _read_results(self, text: str, pending: dict, answered: set, stats: dict, is_err: bool) -> None:
        for line in text.splitlines():
            try:
                rec = json.loads(line)
                k = rec["custom_id"]
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
            if k not in pending or k in answered:
                continue
            resp = rec.get("response") or {}
            body = resp.get("body") or {}
            status = resp.get("status_code")
            if is_err or rec.get("error") or status != 200:
                err = rec.get("error") or body.get("error") or {}
                msg = err.get("message") if isinstance(err, dict) else str(err)
                self._batch_reasons[k] = f"HTTP {status}: {msg}"[:200] if status else f"{msg}"[:200]
                stats["failed"] += 1
                self.usage.add(batch_requests=1, failed=1)
                continue
            u = body.get("usage") or {}
            self.usage.add(
                requests=1, batch_requests=1,
                prompt_tokens=int(u.get("prompt_tokens") or 0), completion_tokens=int(u.get("completion_tokens") or 0),
            )  # fmt: skip
            try:
                content = (body.get("choices") or [{}])[0].get("message", {}).get("content") or ""
                pending[k][1](content)
            except (ValueError, ValidationError, AttributeError, IndexError, TypeError) as e:
                self._batch_reasons[k] = f"invalid answer ({_short(e)})"
                stats["invalid"] += 1
                self.usage.add(failed=1)
                continue
            self._store(k, content)
            answered.add(k)
            stats["answered"] += 1

    def _store(self, key: str, content: str) -> None:
        with self._lock:
            self._cache[key] = content
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.cache_path, "a") as f:
                f.write(json.dumps({"key": key, "model": self.s.model, "content": content}) + "\n")
                f.flush()
                os.fsync(f.fileno())


MAX_RETRY_AFTER_S = 600.0
BATCH_DONE = ("completed", "failed", "expired", "cancelled")


def _short(e: Exception) -> str:
    if isinstance(e, ValidationError):
        err = e.errors()[0]
        return f"{'.'.join(str(x) for x in err['loc']) or 'answer'}: {err['msg']}"
    return str(e).splitlines()[0][:120]


def parse_json(content: str, model: type[BaseModel]) -> BaseModel:
    try:
        data = json.loads(content)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON: {e.msg}") from None
    return model.model_validate(data)


class DescribeAnswer(BaseModel):
    model_config = ConfigDict(extra="ignore")

    description: str
    attributes: list[str] = Field(default_factory=list)

    @field_validator("description")
    @classmethod
    def _not_empty(cls, v: str) -> str:
        v = " ".join(v.split())
        if not v:
            raise ValueError("empty description")
        return v[:300]


def parse_describe(content: str) -> DescribeAnswer:
    return parse_json(content, DescribeAnswer)


SYSTEM = (
    "You explain latent features of a sparse autoencoder trained on the internal user "
    "representation of a recommender system. Answer with one JSON object and nothing else."
)


def exemplar_lines(ev: LatentEvidence, n: int = 3) -> list[str]:
    """The stats describer's naming evidence for the LLM: exemplar items and the supported
    features (the headline rule), so names-only data gets named by items and tags there too."""
    space, out = ev.context.space, []
    for source in ev.exemplar_sources():
        items = ev.item_set(source)[:n]
        if items:
            where = "the most recent item" if source == "last" else "the recommended item"
            out.append(
                f"Exemplar items (most over-represented as {where}): "
                + "; ".join(f"{space.titles[e.item]} ({space.item_attribute(source, e.item)})" for e in items)
            )
            break
    d = StatsDescriber()
    head = d.headline(ev)
    if head:
        out.append(
            f"Attributes shared by >= {d.min_support:.0%} of firing samples: "
            + ", ".join(f"{h} ({ev.shares[ev.context.names.index(h)]:.2f})" for h in head)
        )
    out.append("If no attribute names what the latent detects, name it by its exemplar items.")
    return out + [""]


class LLMDescriber(Describer):
    """Shows the LLM the evidence; it names the latent and picks attributes from a given list."""

    name = "llm"

    def __init__(self, client: LLMClient, dataset: str = "") -> None:
        self.client, self.dataset = client, dataset
        self.model = client.s.model

    def prompt(self, ev: LatentEvidence) -> list[dict]:
        ctx, space, n = ev.context, ev.context.space, self.client.s.max_titles
        q = ev.quantiles
        lines = [
            f"Latent {ev.latent} of the SAE over a recommender trained on {self.dataset or 'a dataset'}.",
            "A sample is a user's recent history (oldest -> newest) and the item the model recommends next.",
            f"It fires on {ev.firing_frequency:.2%} of samples; activation median {q['p50']:.3g}, max {q['max']:.3g}.",
            "",
            "Samples where it fires most strongly:",
            *[f"{i + 1}. {ctx.text(ctx.train, r, n)}" for i, r in enumerate(ev.top_rows)],
            "",
            "Samples where it does not fire:",
            *[f"{i + 1}. {ctx.text(ctx.train, r, n)}" for i, r in enumerate(ev.negative_rows)],
            "",
            "Attributes over-represented where it fires (share among firing samples vs all samples):",
            *[f"- {e.feature}: {e.share:.2f} vs {e.background:.2f} (lift {e.lift:.1f})" for e in ev.enriched],
            *[
                f"- {space.item_attribute(e.source, e.item)} ({space.titles[e.item]}): "
                f"{e.share:.2f} vs {e.background:.3f} (lift {e.lift:.1f})"
                for e in ev.items[:5] + [i for i in ev.items if i.source == "next"][:3]
            ],
            "",
            *exemplar_lines(ev),
            "Attribute names: 'genre:X' = share of history items with it; 'last:' = the most recent item; "
            "'next:' = the recommended item; 'user:' = the user; 'item:ID' = that item.",
            'Reply with {"description": "<at most 15 words naming what the latent detects>", '
            '"attributes": [<names from the attribute list above that your description refers to>]}',
        ]
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n".join(lines)}]

    def describe(self, ev: LatentEvidence) -> Description:
        ans, reason = self.client.ask(self.prompt(ev), parse_describe)
        if ans is None:
            return Description(ev.latent, "undescribed", reason=f"LLM: {reason}")
        return self.from_answer(ev, ans)

    def cached(self, ev: LatentEvidence) -> Description | None:
        """The description from the answer cache alone (batch mode), or None."""
        ans = self.client.peek(self.prompt(ev), parse_describe)
        return None if ans is None else self.from_answer(ev, ans)

    @staticmethod
    def from_answer(ev: LatentEvidence, ans: DescribeAnswer) -> Description:
        space = ev.context.space
        attrs = list(dict.fromkeys(a for a in ans.attributes if space.is_valid(a)))
        return Description(ev.latent, "described", text=ans.description, attributes=attrs, exemplars=ev.exemplars())

    def usage(self) -> dict:
        return self.client.usage.as_dict(self.client.s)
