"""Shared fixtures. Real datasets are read in place from ``../shared/data`` (never copied here:
their licences forbid redistribution); set ``RECSAE_DATA_DIR`` to point elsewhere."""

from __future__ import annotations

import os
from pathlib import Path

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
