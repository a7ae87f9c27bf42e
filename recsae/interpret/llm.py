"""The LLM transport: any OpenAI-compatible chat endpoint, with an on-disk answer cache (an interrupted
run resumes by asking only for what is missing), a token-bucket rate limiter, retries that honour
Retry-After, usage and cost accounting, and the batch API. Describers and scorers only build
prompts and parse answers."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from recsae import ConfigError

log = logging.getLogger(__name__)
T = TypeVar("T")


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
