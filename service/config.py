"""Service settings: the one place that reads the environment (12-factor style; docs/SERVICE.md).

Two objects, each built once: ``SERVER`` (what BentoML's decorator and the ASGI app need when
``service.service`` is imported: workers, port, body limit) and ``Settings`` (what a worker
serves: bundle, Redis, tokens, batching; built when the worker starts). No other module of
``service/`` reads ``os.environ`` (tests/unit/test_service_config.py greps for it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from recsae import ConfigError


def _float(env: Mapping, name: str, default: float, lo: float, hi: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        v = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not lo <= v <= hi:
        raise ConfigError(f"{name}={raw!r} must be in [{lo}, {hi}]")
    return v


def _int(env: Mapping, name: str, default: int, lo: int, hi: int) -> int:
    v = _float(env, name, default, lo, hi)
    if v != int(v):
        raise ConfigError(f"{name} must be an integer")
    return int(v)


def _flag(env: Mapping, name: str, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={env.get(name)!r}: use 1 or 0")


def _share(env: Mapping, name: str, default: float) -> float:
    """A share in [0, 1], clamped; not a number -> the default (lenient, as it always was)."""
    try:
        return min(1.0, max(0.0, float(env.get(name, str(default)))))
    except ValueError:
        return default


def _state_dir(env: Mapping) -> str:
    return env.get("RECSAE_STATE_DIR", "").strip() or default_state_dir(env)


def default_state_dir(env: Mapping | None = None) -> str:
    env = os.environ if env is None else env
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return str(Path(base) / "recsae")


@dataclass(frozen=True)
class ServerSettings:
    """Process-wide settings, needed when the service module is imported (BentoML's decorator
    takes workers and port then; the body limit is middleware of the app built then)."""

    workers: int = 1
    """RECSAE_WORKERS: BentoML workers per replica."""
    port: int = 3000
    """RECSAE_PORT: the HTTP port (``bentoml serve --port`` overrides it)."""
    max_body_bytes: int = 64 * 1024
    """RECSAE_MAX_BODY_BYTES: larger request bodies get 413 before a route runs."""
    access_log: bool = True
    """RECSAE_ACCESS_LOG: BentoML's access log, a line per request (0: off; on two cores it costs
    ~100 us a request, ~12% of throughput; the Prometheus metrics count every request either way)."""

    @classmethod
    def from_env(cls, env: Mapping | None = None) -> "ServerSettings":
        env = os.environ if env is None else env
        return cls(
            workers=_int(env, "RECSAE_WORKERS", 1, 1, 1024),
            port=_int(env, "RECSAE_PORT", 3000, 0, 65535),
            max_body_bytes=_int(env, "RECSAE_MAX_BODY_BYTES", 64 * 1024, 0, 1 << 40),
            access_log=_flag(env, "RECSAE_ACCESS_LOG", True),
        )


@dataclass(frozen=True)
class Settings:
    bundle: str
    """RECSAE_BUNDLE: the bundle directory to serve (required)."""
    redis_url: str | None = None
    """REDIS_URL: shared concept cache + policy store; unset -> in-process only."""
    redis_prefix: str = "recsae"
    """RECSAE_REDIS_PREFIX: key prefix of this deployment (all replicas share it)."""
    redis_timeout_s: float = 0.1
    """RECSAE_REDIS_TIMEOUT_S: socket connect/read timeout; a slow Redis costs at most this."""
    redis_backoff_s: float = 1.0
    """RECSAE_REDIS_BACKOFF_S: after a failure, Redis is skipped for this long, then retried."""
    concept_ttl_s: int = 3600
    """RECSAE_CONCEPT_TTL_S: lifetime of cached concept entries."""
    admin_token: str | None = None
    """RECSAE_ADMIN_TOKEN: bearer token of the admin endpoints; unset -> they answer 503."""
    audit_token: str | None = None
    """RECSAE_AUDIT_TOKEN: bearer token of /audit/recent, /audit/policies, /drift; unset -> open."""
    audit_sample: float = 0.1
    """RECSAE_AUDIT_SAMPLE: share of served answers kept for /audit/recent (0 = none, 1 = all)."""
    state_dir: str = ""
    """RECSAE_STATE_DIR: durable copy of the policies (survives a Redis restart)."""
    policy_sync_s: float = 2.0
    """RECSAE_POLICY_SYNC_S: how often a replica refreshes its policy copy (0 = never)."""
    drift_window: int = 2000
    """RECSAE_DRIFT_WINDOW: requests in the sliding window of live firing counts."""
    drift_top: int = 10
    """RECSAE_DRIFT_TOP: latents exported in recsae_concept_firing_rate."""
    ort_threads: int = 1
    """RECSAE_ORT_THREADS: ONNX Runtime intra-op threads (0 = its own default)."""
    max_batch: int = 32
    """RECSAE_MAX_BATCH: most concurrent recommendation requests computed as one batch."""
    plain_scores: bool = False
    """RECSAE_PLAIN_SCORES=1: the recommender alone (no SAE encode, steering or explanation),
    the baseline of benchmarks/hot_path.py's "price of explanation"."""
    warmup: bool = True
    """RECSAE_WARMUP: run the request path before reporting ready."""
    compiled_hotpath: bool = True
    """RECSAE_COMPILED_HOTPATH: use the compiled hot path where built (service/_hotpath.c); 0: the
    NumPy/Python path, same answers (a switch for ops, and the baseline benchmarks compare)."""

    @classmethod
    def from_env(cls, env: Mapping | None = None) -> "Settings":
        env = os.environ if env is None else env
        bundle = env.get("RECSAE_BUNDLE", "").strip()
        if not bundle:
            raise ConfigError(
                "RECSAE_BUNDLE is not set: point it at a bundle directory built by "
                "`recsae train --out bundles/<name>` (e.g. RECSAE_BUNDLE=bundles/dev-ml100k)"
            )
        prefix = env.get("RECSAE_REDIS_PREFIX", "recsae").strip() or "recsae"
        if any(c.isspace() for c in prefix) or len(prefix) > 64:
            raise ConfigError(f"RECSAE_REDIS_PREFIX={prefix!r}: no spaces, at most 64 characters")
        return cls(
            bundle=bundle,
            redis_url=env.get("REDIS_URL", "").strip() or None,
            redis_prefix=prefix,
            redis_timeout_s=_float(env, "RECSAE_REDIS_TIMEOUT_S", 0.1, 0.001, 10.0),
            redis_backoff_s=_float(env, "RECSAE_REDIS_BACKOFF_S", 1.0, 0.05, 60.0),
            concept_ttl_s=_int(env, "RECSAE_CONCEPT_TTL_S", 3600, 1, 30 * 86400),
            admin_token=env.get("RECSAE_ADMIN_TOKEN") or None,
            audit_token=env.get("RECSAE_AUDIT_TOKEN") or None,
            audit_sample=_share(env, "RECSAE_AUDIT_SAMPLE", 0.1),
            state_dir=_state_dir(env),
            policy_sync_s=_float(env, "RECSAE_POLICY_SYNC_S", 2.0, 0.0, 3600.0),
            drift_window=_int(env, "RECSAE_DRIFT_WINDOW", 2000, 10, 1_000_000),
            drift_top=_int(env, "RECSAE_DRIFT_TOP", 10, 1, 100),
            ort_threads=_int(env, "RECSAE_ORT_THREADS", 1, 0, 1024),
            max_batch=_int(env, "RECSAE_MAX_BATCH", 32, 0, 1_000_000),
            plain_scores=env.get("RECSAE_PLAIN_SCORES") == "1",
            warmup=env.get("RECSAE_WARMUP", "1") not in ("0", "false", "False", "no"),
            compiled_hotpath=_flag(env, "RECSAE_COMPILED_HOTPATH", True),
        )


# -- the few variables the service sets for the libraries it loads -------------------------------
def set_env_default(name: str, value: str) -> None:
    """Set a variable read by a library (OpenBLAS, BentoML) unless the operator already set it."""
    os.environ.setdefault(name, value)


def worker_metrics_dirs() -> tuple[str | None, str]:
    """(PROMETHEUS_MULTIPROC_DIR as BentoML set it, the state directory): see
    ``service.metrics.instance_multiproc_dir``."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR"), _state_dir(os.environ)


def use_metrics_dir(path: str) -> None:
    """Point prometheus_client (read when it is imported) at this worker's metrics folder."""
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path


try:
    SERVER = ServerSettings.from_env()
    """Read once, when the service is imported."""
    SERVER_ERROR: ConfigError | None = None
except ConfigError as _e:  # the service refuses to start with this one line (service.service)
    SERVER, SERVER_ERROR = ServerSettings(), _e
