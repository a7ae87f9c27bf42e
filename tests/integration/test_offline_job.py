"""The offline job through its CLI: bad input gives one clear line, re-runs resume, fidelity holds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str, cwd: Path, timeout: float = 3600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "recsae.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(cwd)},
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "no-such-data"], "unknown dataset"),
        (["--dataset", "ml-100k", "--data-dir", "/nonexistent"], "--data-dir"),
        (["--dataset", "synthetic", "-k", "5000"], "k=5000 must be between 1 and the latent count"),
        (["--dataset", "synthetic", "--min-fidelity", "1.5"], "--min-fidelity 1.5 must be in (0, 1]"),
    ],
)
def test_bad_input_is_one_clear_line_and_leaves_no_bundle(tmp_path, args, message):
    out = tmp_path / "bundle"
    r = run_cli("train", *args, "--out", str(out), "-q", "--sae-epochs", "1", cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert not out.exists()


@pytest.mark.slow
def test_synthetic_job_builds_a_bundle_and_a_rerun_resumes(tmp_path):
    out = tmp_path / "b"
    args = ["train", "--dataset", "synthetic", "--out", str(out), "-q", "--sae-epochs", "4",
            "--expansion", "8", "--describer", "none", "--train-param", "epochs=3", "--quality-budget", "0",
            "--json", str(tmp_path / "s.json")]
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    first = json.loads((tmp_path / "s.json").read_text())
    assert (out / "manifest.json").exists() and (out / "encoder.onnx").exists()
    assert first["onnx_max_abs_diff"] <= 1e-4
    assert first["fidelity"]["error_preserving_none_equal"] is True
    # second run: recommender, activations and SAE come from the cache
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    second = json.loads((tmp_path / "s.json").read_text())
    assert second["timings_s"]["recommender"] < 2.0 and second["timings_s"]["sae"] < 2.0
    assert second["sae"] == first["sae"]
    r = run_cli("info", str(out), "--json", cwd=tmp_path)
    assert r.returncode == 0 and json.loads(r.stdout)["model"]["name"] == "sasrec"
    r = run_cli("info", str(out), cwd=tmp_path)  # for a person: verified, headline figures, how to serve
    assert r.returncode == 0, r.stderr
    assert "verified" in r.stdout and f"recsae serve --bundle {out}" in r.stdout, r.stdout
    assert f"{first['recommender']['test']['NDCG@10']:.4f}" in r.stdout, r.stdout


@pytest.mark.slow
def test_auto_without_ml100k_says_so_and_sizes_the_synthetic_sae_to_its_data(tmp_path):
    """`recsae train` as `make serve` runs it, where ml-100k is absent: the log names the dataset
    and why, and the SAE is retrained with fewer latents (the default 1,024 leave ~80% dead on
    the synthetic data) until at most 10% are dead."""
    out = tmp_path / "b"
    r = run_cli("train", "--data-dir", str(tmp_path), "--out", str(out), "-q", "--describer", "none",
                "--train-param", "epochs=3", "--sae-epochs", "20", "--quality-budget", "0", "--json", str(tmp_path / "s.json"),
                cwd=tmp_path, timeout=3600)  # two SAEs, one of 1,024 latents: slow on a busy machine
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"dataset auto: {tmp_path / 'ml-100k'} not found" in r.stderr and ": synthetic" in r.stderr, r.stderr
    assert "retraining the SAE with expansion 16 ->" in r.stderr, r.stderr[-3000:]
    m = json.loads((out / "manifest.json").read_text())
    assert m["dataset"]["dataset"] == "synthetic"
    assert m["sae"]["n_latents"] < 1024 and m["sae"]["expansion"] == m["settings"]["expansion"] < 16
    assert json.loads((tmp_path / "s.json").read_text())["sae"]["heldout"]["dead_ratio"] <= 0.10


@pytest.mark.slow
def test_min_fidelity_refuses_a_weak_sae_and_writes_no_bundle(tmp_path):
    """A one-latent SAE trained for one epoch cannot keep 99% of NDCG@10: the gate stops the job
    before anything is written, and says what to change."""
    out = tmp_path / "b"
    r = run_cli("train", "--dataset", "synthetic", "--out", str(out), "-q", "-k", "1", "--expansion", "1",
                "--sae-epochs", "1", "--describer", "none", "--train-param", "epochs=3",
                "--min-fidelity", "0.99", "--quality-budget", "0", cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-3000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "below --min-fidelity 0.99; no bundle written" in lines[0], r.stderr[-2000:]
    assert "--sae-preset balanced" in lines[0] and "Traceback" not in r.stderr
    assert not out.exists()


@pytest.mark.slow
def test_small_ml100k_bundle_fidelity(small_bundle):
    m = json.loads((small_bundle / "manifest.json").read_text())
    fid = m["metrics"]["fidelity"]
    assert fid["error_preserving_none_equal"] is True
    # even a small SAE keeps most of the ranking quality with its reconstruction in the path; over
    # the 943 test users alone the ratio moves by ~±0.05 between builds (0.897 seen on 2026-11-29),
    # so the 0.9 bar is checked below on all held-out rows, where its interval is ~±0.015
    assert fid["ndcg10_ratio_reconstruction"] >= 0.85, fid
    # the same against 99 sampled negatives (the protocol of published figures)
    assert 0.9 <= fid["ndcg10_ratio_reconstruction_sampled99"] <= 1.1, fid
    # and over every held-out row with a next item (prefixes + dev + test inputs): many more
    # rows than the 943 test users, so a narrower interval around the same kind of ratio
    assert fid["heldout_rows"] > 943 and fid["heldout_ndcg10_original"] > 0, fid
    lo, hi = fid["heldout_ndcg10_ratio_reconstruction_ci95"]
    assert lo <= fid["heldout_ndcg10_ratio_reconstruction"] <= hi and fid["heldout_ndcg10_ratio_reconstruction"] >= 0.9, fid
    tlo, thi = fid["ndcg10_ratio_reconstruction_ci95"]
    assert hi - lo < thi - tlo, fid
    assert m["metrics"]["sae"]["heldout"]["fvu"] < 0.5
    # the quality figure is the ratio over the larger set: here the held-out rows
    q = m["metrics"]["quality"]
    assert q["ndcg10_ratio"] == fid["heldout_ndcg10_ratio_reconstruction"], q
    assert q["measured_on"] == f"{fid['heldout_rows']:,} held-out rows"
    assert all(isinstance(w, str) for w in q["warnings"])


@pytest.mark.slow
@pytest.mark.parametrize("model", ["bprmf", "lightgcn"])
def test_user_based_recommenders_build_a_bundle_on_ml100k(data_dir, tmp_path, model):
    """The whole job for the general and graph recommenders on real data: one activation row per
    user gives fewer SAE training rows (859) than the default latent count (16 x d = 2,048)."""
    from recsae.pipeline import JobConfig, run_job

    cfg = JobConfig(dataset="ml-100k", data_dir=str(data_dir), model=model, train_params={"epochs": 3},
                    sae_epochs=3, describer="none", progress=False, quality_budget=0)
    res = run_job(cfg, tmp_path / "b", tmp_path / "work")
    s = res.summary
    m = json.loads((res.bundle / "manifest.json").read_text())
    assert m["model"]["name"] == model and m["model"]["input_kind"] == "user"
    assert s["sae"]["train"]["n_samples"] < m["sae"]["n_latents"]  # the case that used to crash
    assert s["onnx_max_abs_diff"] <= 1e-4
    fid = s["fidelity"]
    assert fid["error_preserving_none_equal"] is True
    # the held-out rows are the ~10% of users kept from SAE training that have a test item
    assert 0 < fid["heldout_rows"] < 943 and fid["heldout_ndcg10_original"] > 0
    # ... too few for the quality figure, which falls back to the test users; and the job warns
    # that the SAE has more latents than rows to learn from
    q = s["quality"]
    assert q["ndcg10_ratio"] == fid["ndcg10_ratio_reconstruction"] and q["measured_on"] == "943 test users"
    assert any("training rows" in w and "--model sasrec" in w for w in q["warnings"]), q["warnings"]


@pytest.mark.slow
def test_reserved_popularity_latent_is_found_described_and_suppressible(data_dir, tmp_path):
    """``--sae-reserve popularity`` on real data: latent 0 is pinned to the direction that raises
    the 20% most popular items (recomputed here from the bundle's own files), it is described as
    popularity with a measured confidence, the de-bias search ranks it first, and suppressing it
    cuts the head share of the test users' top-10 lists far more than random latents do."""
    import numpy as np

    from recsae import debias as D
    from recsae.kernel import SAEKernel
    from tests.conftest import build_small_bundle

    bundle = build_small_bundle(data_dir, name="ml100k-sasrec-reserved", sae_reserve="popularity")
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["settings"]["sae_reserve"] == "popularity"
    emb = np.load(bundle / "item_embeddings.npy")
    pop = np.asarray(json.loads((bundle / "catalog.json").read_text())["popularity"])
    head = D.head_items(pop)
    p = emb[head].mean(0) - emb.mean(0)
    p /= np.linalg.norm(p)
    kernel = SAEKernel.load(bundle / "sae")
    assert np.allclose(kernel.W_dec[0], p, atol=1e-5)
    assert np.abs(kernel.W_dec[1:] @ p).max() < 1e-4 and abs(float(kernel.b_dec @ p)) < 1e-4
    c0 = json.loads((bundle / "concepts.json").read_text())["concepts"][0]
    assert c0["status"] == "described" and "popularity" in c0["description"]
    assert c0["detection"]["auc"] > 0.6 and c0["confidence"] == round(c0["detection"]["auc"], 4)

    data = D.load_data(bundle, data_dir)
    measure = data.measure("popularity")
    assert D.latent_evidence(data, measure)["association_order"][0] == 0  # found on the dev stage
    base = D.evaluate_suppression(data, data.test, measure, [], 1.0)["bias"]
    cut = 1 - D.evaluate_suppression(data, data.test, measure, [0], 1.0)["bias"] / base
    rng = np.random.default_rng(0)
    pool = D.candidate_pool(data, 0.005)
    rand = [1 - D.evaluate_suppression(data, data.test, measure, [int(rng.choice(pool[pool != 0]))], 1.0)["bias"] / base
            for _ in range(5)]
    assert cut > 0.15 and cut > max(rand) + 0.1, (cut, rand)
    # the CLI sweeps finer strengths by default for such a bundle (one broad concept)
    from recsae.cli import main

    assert main(["debias", str(bundle), "--bias", "popularity", "--data-dir", str(data_dir), "--counts", "1",
                 "--seeds", "1", "--baseline-strengths", "0.2", "--out", str(tmp_path / "d"), "-q"]) == 0
    swept = json.loads((tmp_path / "d" / "debias-popularity.json").read_text())["settings"]["strengths"]
    assert swept == list(D.RESERVED_STRENGTHS)
    # re-describing the bundle (recsae interpret) keeps latent 0's popularity description
    import shutil

    from recsae.interpret import reinterpret_bundle

    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    reinterpret_bundle(copy, "stats", data_dir=str(data_dir), work_dir=tmp_path / "w")
    again = json.loads((copy / "concepts.json").read_text())["concepts"][0]
    assert again["status"] == "described" and again["detection"]["auc"] == pytest.approx(c0["detection"]["auc"], abs=0.01)


@pytest.mark.slow
def test_pursuit_encoder_bundle_keeps_more_of_the_model_and_serves(data_dir):
    """``--sae-encoder pursuit``: the same trained SAE, encoded by matching pursuit in the bundle.
    Its held-out FVU beats the trained encoder's on the same weights, the bundle's kernel (what
    the service loads) uses it, and explanations still add up to the served scores."""
    import numpy as np

    from recsae.engine import Engine
    from tests.conftest import build_small_bundle

    bundle = build_small_bundle(data_dir, name="ml100k-sasrec-pursuit", describer="none", sae_encoder="pursuit")
    m = json.loads((bundle / "manifest.json").read_text())
    sae = m["metrics"]["sae"]
    assert sae["encoder"] == "pursuit" and json.loads((bundle / "sae" / "cfg.json").read_text())["encoder"] == "pursuit"
    assert sae["heldout"]["fvu"] < sae["heldout_trained_encoder"]["fvu"], sae
    assert sae["heldout"]["mean_l0"] <= 8 and m["metrics"]["fidelity"]["error_preserving_none_equal"] is True
    engine = Engine.from_path(str(bundle))
    assert engine.sae.encoder == "pursuit"
    x = engine.encode_users(np.arange(5))
    ids, scores, codes, _ = engine.recommend(x, 10, exclude=[engine.bundle.users.history(u) for u in range(5)])
    ex = engine.sae.explain(x, codes, engine.item_emb[ids])
    assert np.allclose(ex.bias + ex.contributions.sum(1) + ex.error, scores, atol=1e-4)
