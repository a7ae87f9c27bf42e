"""Shared fixtures. Real datasets are read in place from ``../shared/data`` (never copied here:
their licences forbid redistribution); set ``RECSAE_DATA_DIR`` to point elsewhere.

Two served bundles: ``synthetic_bundle`` (the embedded planted-concept data, built in seconds,
no files needed: every service, browser and fault test runs on it, so they run on a fresh
clone) and ``small_bundle`` (SASRec on real ml-100k, for checks whose numbers depend on that
dataset; they skip, saying so, where ``../shared/data`` is absent)."""

from __future__ import annotations

import ast
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

# Before anything imports prometheus_client/bentoml: in-process service tests need a multiprocess
# metrics dir (or /metrics hangs), and nothing may call out to the network.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="recsae-prom-"))
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
_CONFIG: pytest.Config | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _CONFIG
    _CONFIG = config


def announce(message: str) -> None:
    """One line on the terminal past pytest's output capture: a fixture that takes minutes says
    what it is doing instead of leaving a silent row of dots."""
    cap = _CONFIG.pluginmanager.getplugin("capturemanager") if _CONFIG else None
    reporter = _CONFIG.pluginmanager.getplugin("terminalreporter") if _CONFIG else None
    if cap is None or reporter is None:
        print(message, file=sys.stderr, flush=True)
        return
    with cap.global_and_fixture_disabled():
        reporter.write_line(message)


def shared_data_dir() -> Path:
    return Path(os.environ.get("RECSAE_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The folder holding ml-100k/, ml-1m/, recsae-reference/, for checks of a real dataset's
    parsing or numbers (skips, saying so, when absent)."""
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"checks real-dataset data or numbers; the licensed data folder {path} is absent "
                    "(set RECSAE_DATA_DIR to run it)")
    return path


# Test bundles are built once through the offline job itself and cached across sessions in
# .pytest-bundles/. Two cache levels, so that only what a code change can affect is rebuilt:
# - the job's work folder (trained recommender, activations, SAE) is keyed by the code that
#   changes the weights (WEIGHT_SOURCES);
# - the bundle (fidelity, concepts, atlas, files) by all of recsae/ and models/: an interpret or
#   bundle change re-describes from the cached weights in seconds instead of retraining.
# Both digests read the code, not the text: docstrings and comments do not count.
BUNDLE_CACHE = REPO_ROOT / ".pytest-bundles"
WEIGHT_SOURCES = ("models", "recsae/__init__.py", "recsae/data", "recsae/sae.py", "recsae/train.py",
                  "recsae/kernel.py", "recsae/evaluate.py", "recsae/pipeline.py", "recsae/config.py",
                  "recsae/stages.py", "recsae/quality.py")  # fmt: skip


def _code_text(path: Path) -> str:
    """The module's syntax tree without docstrings (so neither they nor comments change a key)."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def code_digest(*roots: str) -> str:
    """Digest of the code of every ``.py`` file under ``roots`` (files or folders, repo-relative)."""
    files = set()
    for root in roots:
        p = REPO_ROOT / root
        files.update(p.rglob("*.py") if p.is_dir() else [p])
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(path.relative_to(REPO_ROOT).as_posix().encode() + b"\0" + _code_text(path).encode() + b"\0")
    return h.hexdigest()[:10]


def _weights_digest() -> str:
    # the popularity-reserved SAE is pinned to a direction over debias.head_items: that one
    # function of the (large, often edited) de-bias module changes weights too
    import inspect

    from recsae.debias import head_items

    return code_digest(*WEIGHT_SOURCES) + hashlib.sha256(inspect.getsource(head_items).encode()).hexdigest()[:4]


def build_test_bundle(name: str, dataset: str, data_dir: Path | None, **settings) -> Path:
    """Build (or reuse) a bundle of the offline job with these JobConfig settings."""
    from recsae.pipeline import JobConfig, run_job

    # quality_budget=0: the SAE exactly as set here (tests/unit/test_quality_search.py tests the search)
    cfg = JobConfig(dataset=dataset, data_dir=str(data_dir) if data_dir else None, seed=0, progress=False,
                    quality_budget=0)
    for k, v in settings.items():
        setattr(cfg, k, v)
    out = BUNDLE_CACHE / f"{name}-{cfg.key(*cfg.__dataclass_fields__)}-{code_digest('recsae', 'models')}"
    if not (out / "manifest.json").exists():
        announce(f"building test bundle {name} (first run, or after a change under recsae/ or models/; "
                 f"a few minutes, cached in .pytest-bundles/) ...")
        t0 = time.monotonic()
        run_job(cfg, out, BUNDLE_CACHE / f"work-{_weights_digest()}")
        announce(f"built test bundle {name} in {time.monotonic() - t0:.0f} s; running the tests")
    return out


# SASRec on ml-100k, few epochs: a small but real bundle.
SMALL_SETTINGS = dict(model="sasrec", train_params={"epochs": 4, "patience": 4}, expansion=8, k=8, sae_epochs=6)
# SASRec on the synthetic planted concepts (600 users, 400 items): the same recipe with the
# 128 latents `recsae train` sizes its SAE to there (more are mostly dead).
SYNTHETIC_SETTINGS = dict(model="sasrec", train_params={"epochs": 4, "patience": 4}, expansion=2, k=8, sae_epochs=6)


def build_small_bundle(data_dir: Path, name: str = "ml100k-sasrec", describer: str = "stats", **overrides) -> Path:
    return build_test_bundle(name, "ml-100k", data_dir, **{**SMALL_SETTINGS, "describer": describer, **overrides})


def build_synthetic_bundle(name: str = "synthetic-sasrec", describer: str = "stats", **overrides) -> Path:
    return build_test_bundle(name, "synthetic", None, **{**SYNTHETIC_SETTINGS, "describer": describer, **overrides})


@pytest.fixture(scope="session")
def small_bundle(data_dir: Path) -> Path:
    """Path of a verified bundle: SASRec on ml-100k, SAE k=8 x 512 latents, stats concepts."""
    return build_small_bundle(data_dir)


@pytest.fixture(scope="session")
def synthetic_bundle() -> Path:
    """Path of a verified bundle on the embedded synthetic data: SASRec, SAE k=8 x 128, stats concepts."""
    return build_synthetic_bundle()


def serving_bundle(describer: str | None = None) -> Path:
    """The bundle served by service, browser and fault tests (also outside fixtures, for served
    processes): the synthetic one, so they need no dataset; `stats` concepts unless
    RECSAE_TEST_DESCRIBER says otherwise (``none``: a bundle without described concepts)."""
    return build_synthetic_bundle(describer=describer or os.environ.get("RECSAE_TEST_DESCRIBER", "stats"))


@pytest.fixture(scope="module")
def bundle() -> Path:
    """The served bundle of a service test module (``serving_bundle``); a module that serves
    another one defines its own ``bundle``."""
    return serving_bundle()


@pytest.fixture(scope="module")
def engine(bundle: Path):
    """The module's bundle loaded as the service loads it (ONNX Runtime + the NumPy kernel)."""
    from recsae.engine import Engine

    return Engine.from_path(str(bundle))
