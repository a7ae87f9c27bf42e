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
    from recsae.pipeline import WARN_DEAD, quality_report
    from recsae.quality import WARN_FVU, WARN_NDCG_RATIO

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
    # user-based models: the few held-out users keep 50%, which the gate reads (the test users
    # were trained on), and the advice points at the rows, not at k
    rows = quality_report(_sae(0.035, 0.0, 859), _fid(84, 0.5, 0.95), 2048)["warnings"]
    assert len(rows) == 2 and "keeps only 50.0% of NDCG@10 over 84 held-out rows" in rows[0], rows
    assert "too few training rows" in rows[0] and "2,048 latents for 859 training rows" in rows[1]


def test_the_gate_reads_every_measure_and_names_the_worst_first():
    """The music-log case of issue 22: the all-rows figure (0.911) passes the 0.90 bar while 99
    sampled negatives keep 0.554. The warning leads with the worst measure, lists them all, and
    never advises the setting that was just tried (balanced, here)."""
    from recsae.pipeline import quality_report

    fid = {**_fid(40_000, 0.911, 0.95), "ndcg10_ratio_reconstruction_sampled99": 0.554, "overlap10_reconstruction": 0.86}
    balanced = {"k": 16, "expansion": 16, "epochs": 60, "encoder": "topk", "d_in": 64}
    q = quality_report(_sae(0.05, 0.0, 98_000), fid, 1024, balanced)
    assert [m["name"] for m in q["measures"]] == ["sampled99", "top10_overlap", "heldout_rows", "test_users"]
    assert q["worst"]["name"] == "sampled99" and q["worst"]["value"] == 0.554
    assert q["ndcg10_ratio"] == 0.911  # the headline of older bundles is still there
    (w,) = q["warnings"]
    assert w.startswith("the SAE keeps only 55.4% of NDCG@10 against 99 sampled negatives (943 test users)"), w
    assert w.index("55.4%") < w.index("86.0%") < w.index("91.1%") < w.index("95.0%"), w
    assert "balanced" not in w and "--sae-preset fidelity" in w and "--sae-encoder pursuit" in w, w
    # after the largest preset (and with pursuit already on) the advice is a setting not yet tried
    fidelity = {"k": 32, "expansion": 32, "epochs": 120, "encoder": "pursuit", "d_in": 64}
    advice = quality_report(_sae(0.05, 0.0, 98_000), fid, 2048, fidelity)["advice"]
    assert advice == "try -k 32 --expansion 64 --sae-epochs 180", advice
    # a search that already tried (32, 64, 120) and kept balanced as the closest advises beyond it
    tried = [(8, 16, 60), (16, 16, 60), (32, 32, 120), (32, 64, 120)]
    advice = quality_report(_sae(0.05, 0.0, 98_000), fid, 1024, balanced, tried)["advice"]
    assert "--sae-preset" not in advice and "-k 32 --expansion 128 --sae-epochs 180" in advice, advice
    # above the bar on every measure: no warning, and the worst is still named
    fine = {**fid, "ndcg10_ratio_reconstruction_sampled99": 0.97, "overlap10_reconstruction": 0.92, "heldout_ndcg10_ratio_reconstruction": 0.96}
    q = quality_report(_sae(0.05, 0.0, 98_000), fine, 1024, balanced)
    assert q["warnings"] == [] and q["worst"]["name"] == "top10_overlap"


def test_concept_warnings_only_below_the_confidence_bar():
    from recsae.pipeline import concept_warnings
    from recsae.quality import WARN_CONFIDENCE

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
