"""Shared fixtures. Real datasets are read in place from ``../shared/data`` (never copied here:
their licences forbid redistribution); set ``RECSAE_DATA_DIR`` to point elsewhere."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

# Before anything imports prometheus_client/bentoml: in-process service tests need a multiprocess
# metrics dir (or /metrics hangs), and nothing may call out to the network.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="recsae-prom-"))
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    return Path(os.environ.get("RECSAE_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The folder holding ml-100k/, ml-1m/, recsae-reference/ (skips when absent)."""
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"shared data folder {path} is absent (set RECSAE_DATA_DIR to run this test)")
    return path


# A small but real bundle (SASRec on ml-100k, few epochs), built once per session through the
# offline job itself and cached across sessions in .pytest-bundles/ keyed by the job settings
# and the library's source (a code change must not be tested against a bundle older code built).
# Tests that need a served model use it; the offline-job tests check the full-size numbers.
BUNDLE_CACHE = REPO_ROOT / ".pytest-bundles"


def _source_digest() -> str:
    h = hashlib.sha256()
    for path in sorted([*(REPO_ROOT / "recsae").rglob("*.py"), *(REPO_ROOT / "models").rglob("*.py")]):
        h.update(path.relative_to(REPO_ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:10]


def build_small_bundle(data_dir: Path, name: str = "ml100k-sasrec", describer: str = "stats", **overrides):
    from recsae.pipeline import JobConfig, run_job

    cfg = JobConfig(
        dataset="ml-100k",
        data_dir=str(data_dir),
        model="sasrec",
        train_params={"epochs": 4, "patience": 4},
        expansion=8,
        k=8,
        sae_epochs=6,
        quality_budget=0,  # the SAE exactly as set here (tests/unit/test_quality_search.py tests the search)
        describer=describer,
        seed=0,
        progress=False,
    )
    for k, v in overrides.items():
        setattr(cfg, k, v)
    out = BUNDLE_CACHE / f"{name}-{cfg.key(*cfg.__dataclass_fields__)}-{_source_digest()}"
    if not (out / "manifest.json").exists():
        run_job(cfg, out, BUNDLE_CACHE / "work")
    return out


@pytest.fixture(scope="session")
def small_bundle(data_dir: Path) -> Path:
    """Path of a verified bundle: SASRec on ml-100k, SAE k=8 x 512 latents, stats concepts."""
    return build_small_bundle(data_dir)


def small_bundle_or_skip() -> Path:
    """The small real bundle, for tests that run outside the fixtures (served processes)."""
    if not shared_data_dir().is_dir():
        pytest.skip(f"no shared data folder at {shared_data_dir()} (set RECSAE_DATA_DIR)")
    return build_small_bundle(shared_data_dir())
