"""SAE presets on the command line: named shapes, each value overridable by its own flag."""

from __future__ import annotations

import pytest

from recsae.cli import SAE_PRESETS, build_parser, sae_shape
from recsae.pipeline import JobConfig


def shape(*args: str) -> tuple[int, int, int]:
    return sae_shape(build_parser().parse_args(["train", *args]))


def test_default_preset_is_the_job_defaults():
    cfg = JobConfig()
    assert shape() == SAE_PRESETS["paper"] == (cfg.k, cfg.expansion, cfg.sae_epochs)


def test_fidelity_preset_and_overrides():
    assert shape("--sae-preset", "fidelity") == (32, 32, 120)
    assert shape("--sae-preset", "fidelity", "--sae-epochs", "80") == (32, 32, 80)
    assert shape("--k", "16") == (16, 16, 60) == shape("--sae-preset", "balanced")


def test_unknown_preset_is_refused(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--sae-preset", "huge"])
    assert "invalid choice" in capsys.readouterr().err
