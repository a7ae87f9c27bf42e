"""Service settings, read once from the environment (12-factor style; see docs/SERVICE.md)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from recsae import ConfigError


def _float(env: dict, name: str, default: float, lo: float, hi: float) -> float:
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


def _int(env: dict, name: str, default: int, lo: int, hi: int) -> int:
    v = _float(env, name, default, lo, hi)
    if v != int(v):
        raise ConfigError(f"{name} must be an integer")
    return int(v)


def default_state_dir() -> str:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return str(Path(base) / "recsae")


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
    state_dir: str = ""
    """RECSAE_STATE_DIR: durable copy of the policies (survives a Redis restart)."""
    policy_sync_s: float = 2.0
    """RECSAE_POLICY_SYNC_S: how often a replica refreshes its policy copy (0 = never)."""
    drift_window: int = 2000
    """RECSAE_DRIFT_WINDOW: requests in the sliding window of live firing counts."""
    drift_top: int = 10
    """RECSAE_DRIFT_TOP: latents exported in recsae_concept_firing_rate."""
    warmup: bool = True

    @classmethod
    def from_env(cls, env: dict | None = None) -> "Settings":
        env = dict(os.environ if env is None else env)
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
            state_dir=env.get("RECSAE_STATE_DIR", "").strip() or default_state_dir(),
            policy_sync_s=_float(env, "RECSAE_POLICY_SYNC_S", 2.0, 0.0, 3600.0),
            drift_window=_int(env, "RECSAE_DRIFT_WINDOW", 2000, 10, 1_000_000),
            drift_top=_int(env, "RECSAE_DRIFT_TOP", 10, 1, 100),
            warmup=env.get("RECSAE_WARMUP", "1") not in ("0", "false", "False", "no"),
        )
