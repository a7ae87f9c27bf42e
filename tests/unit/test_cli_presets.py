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


def _fid(heldout_rows: int, heldout_ratio: float, test_ratio: float) -> dict:
    return {"heldout_rows": heldout_rows, "heldout_ndcg10_ratio_reconstruction": heldout_ratio,
            "heldout_ndcg10_ratio_reconstruction_ci95": [heldout_ratio - 0.01, heldout_ratio + 0.01],
            "original": {"users": 943}, "ndcg10_ratio_reconstruction": test_ratio,
            "ndcg10_ratio_reconstruction_ci95": [test_ratio - 0.05, test_ratio + 0.05]}


def _sae(fvu: float, dead: float, n_train: int) -> dict:
    return {"heldout": {"fvu": fvu, "dead_ratio": dead}, "train": {"n_samples": n_train}}


def test_quality_report_reads_the_larger_set_and_warns_at_each_threshold():
    from recsae.pipeline import WARN_DEAD, WARN_FVU, WARN_NDCG_RATIO, quality_report

    ok = quality_report(_sae(0.035, 0.0, 98_000), _fid(11_757, 0.973, 0.93), 1024)
    assert ok["ndcg10_ratio"] == 0.973 and ok["measured_on"] == "11,757 held-out rows" and ok["warnings"] == []
    # few held-out rows (user-based models): the test users' figure is the one read
    few = quality_report(_sae(0.035, 0.0, 98_000), _fid(84, 0.5, 0.95), 1024)
    assert few["ndcg10_ratio"] == 0.95 and few["measured_on"] == "943 test users"
    # each threshold on its own, just past it
    low = quality_report(_sae(0.035, 0.0, 98_000), _fid(11_757, WARN_NDCG_RATIO - 0.001, 0.93), 1024)["warnings"]
    assert len(low) == 1 and "keeps only 89.9% of NDCG@10" in low[0] and "--sae-preset balanced" in low[0]
    fvu = quality_report(_sae(WARN_FVU + 0.01, 0.0, 98_000), _fid(11_757, 0.95, 0.93), 1024)["warnings"]
    assert len(fvu) == 1 and "FVU 0.110" in fvu[0]
    dead = quality_report(_sae(0.035, WARN_DEAD + 0.05, 98_000), _fid(11_757, 0.95, 0.93), 1024)["warnings"]
    assert len(dead) == 1 and "15% of latents" in dead[0]
    rows = quality_report(_sae(0.035, 0.0, 859), _fid(84, 0.5, 0.95), 2048)["warnings"]
    assert len(rows) == 1 and "2,048 latents for 859 training rows" in rows[0]


def test_concept_warnings_only_below_the_confidence_bar():
    from recsae.pipeline import WARN_CONFIDENCE, concept_warnings

    assert concept_warnings({"mean_confidence": 0.887, "share_confidence_ge_0.8": 0.87}) == []
    assert concept_warnings({"describer": "none"}) == []  # nothing described, nothing to say
    w = concept_warnings({"mean_confidence": WARN_CONFIDENCE - 0.054, "share_confidence_ge_0.8": 0.328})
    assert len(w) == 1 and "mean confidence 0.746" in w[0] and "33% of them" in w[0]


def test_refit_expansion_sizes_to_the_latents_the_data_kept_alive():
    from recsae.pipeline import refit_expansion

    # the synthetic default: ~20% of 1,024 latents alive -> 128 (2% dead measured), not 512
    assert refit_expansion(16, 64, 0.80) == 2
    assert refit_expansion(4, 64, 0.31) == 2  # 177 alive of 256 -> 128
    assert refit_expansion(16, 64, 0.12) == 8  # at most half, even when most are alive
    assert refit_expansion(2, 64, 0.99) == 1 and refit_expansion(1, 64, 0.5) == 1
