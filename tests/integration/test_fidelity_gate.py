"""The fidelity gate on a bundle the job really builds: a deliberately tiny SAE (1 active latent
of 64, one epoch) on the synthetic data. Every measure (all held-out rows, test users, 99 sampled
negatives, top-10 overlap) is in the manifest, worst first; the warning leads with the worst and
names the sampled-negatives figure; ``min_fidelity`` gates on the worst, so a bar the old single
figure passed refuses the bundle; the service's GET /bundle carries the measures."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest


def test_the_gate_fires_on_the_worst_measure_of_a_built_bundle(tmp_path):
    from recsae.pipeline import JobConfig, QualityError, run_job

    cfg = JobConfig(dataset="synthetic", train_params={"epochs": 3}, k=1, expansion=1, sae_epochs=1,
                    describer="none", progress=False, quality_budget=0)
    res = run_job(cfg, tmp_path / "b", tmp_path / "work")
    m = json.loads((res.bundle / "manifest.json").read_text())
    q, fid = m["metrics"]["quality"], m["metrics"]["fidelity"]
    by_name = {x["name"]: x["value"] for x in q["measures"]}
    assert by_name == {
        "heldout_rows": fid["heldout_ndcg10_ratio_reconstruction"],
        "test_users": fid["ndcg10_ratio_reconstruction"],
        "sampled99": fid["ndcg10_ratio_reconstruction_sampled99"],
        "top10_overlap": fid["overlap10_reconstruction"],
    }, q["measures"]
    values = [x["value"] for x in q["measures"]]
    assert values == sorted(values) and q["worst"] == q["measures"][0]
    worst = q["worst"]
    assert worst["value"] < q["bar"] and worst["value"] < q["ndcg10_ratio"], q
    w = q["warnings"][0]
    assert w.startswith(f"the SAE keeps only {worst['value']:.1%} {worst['what']}"), w
    assert f"{by_name['sampled99']:.1%} of NDCG@10 against 99 sampled negatives" in w, w
    assert m["metrics"]["sae_search"]["stopped"].startswith("search off")
    # GET /bundle's body (no Redis needed for it): the warnings and the measures
    from service.config import Settings
    from service.core import Core

    info = Core(Settings(bundle=str(res.bundle))).bundle_info()
    assert info.quality_warnings == q["warnings"]
    assert info.metrics["sae_sampled99_ndcg10_ratio"] == round(by_name["sampled99"], 4)
    assert info.metrics["sae_top10_overlap"] == round(by_name["top10_overlap"], 4)
    assert info.metrics["sae_fidelity_worst"] == {"name": worst["name"], "value": round(worst["value"], 4)}
    # a bar between the worst measure and the old headline figure: the old gate let this bundle
    # through; the gate on the worst refuses it and writes nothing
    bar = round((worst["value"] + q["ndcg10_ratio"]) / 2, 4)
    with pytest.raises(QualityError) as e:
        run_job(replace(cfg, min_fidelity=bar), tmp_path / "b2", tmp_path / "work")
    assert f"keeps {worst['value']:.1%} {worst['what']}, the worst of its fidelity measures" in str(e.value)
    assert "--sae-preset balanced" in str(e.value) and not (tmp_path / "b2").exists()


def _head_and_niches_log(path, seed: int = 1) -> None:
    """A log where the whole catalogue ranking hangs on a popular head but each user's remaining
    taste is six niche clusters (10 of 40 items each): what a play-count log looks like. A one-
    latent SAE keeps the head ordering (full-ranking NDCG, top-10 overlap) and loses most niches,
    which only the 99-sampled-negatives protocol (random, mostly niche, competitors) sees."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n_users, n_head, n_clusters, per = 800, 80, 30, 40
    head_p = 1 / np.arange(1, n_head + 1)
    head_p /= head_p.sum()
    with open(path, "w") as f:
        f.write("user,item\n")
        for u in range(n_users):
            items = set(rng.choice(n_head, 15, replace=False, p=head_p).tolist())
            for c in rng.choice(n_clusters, 6, replace=False):
                items |= set((n_head + c * per + rng.choice(per, 10, replace=False)).tolist())
            f.writelines(f"u{u},i{i}\n" for i in sorted(items))


def test_the_gate_fires_on_a_bundle_whose_sampled_negatives_ratio_is_low(tmp_path):
    """The music-log failure (#22): all-rows NDCG passed while the sampled-negatives ratio was low
    and nothing warned. Here the job builds such a bundle from a generated log: the sampled ratio
    is the worst measure and under the bar while the old headline (test users) passes; the
    warning leads with it and a bar between the two refuses the bundle."""
    from recsae.pipeline import JobConfig, QualityError, run_job

    _head_and_niches_log(tmp_path / "log.csv")
    cfg = JobConfig(data={"path": str(tmp_path / "log.csv"), "user_col": "user", "item_col": "item"},
                    model="bprmf", k=1, expansion=1, sae_epochs=1, describer="none", progress=False,
                    quality_budget=0)
    res = run_job(cfg, tmp_path / "b", tmp_path / "work")
    q = json.loads((res.bundle / "manifest.json").read_text())["metrics"]["quality"]
    by_name = {x["name"]: x["value"] for x in q["measures"]}
    assert q["worst"]["name"] == "sampled99", q["measures"]
    assert by_name["sampled99"] < q["bar"] <= by_name["test_users"], q["measures"]
    assert q["warnings"] and q["warnings"][0].startswith(
        f"the SAE keeps only {by_name['sampled99']:.1%} of NDCG@10 against 99 sampled negatives"), q["warnings"]
    bar = round((by_name["sampled99"] + min(v for n, v in by_name.items() if n != "sampled99")) / 2, 4)
    with pytest.raises(QualityError) as e:
        run_job(replace(cfg, min_fidelity=bar), tmp_path / "b2", tmp_path / "work")
    assert f"keeps {by_name['sampled99']:.1%} of NDCG@10 against 99 sampled negatives" in str(e.value), str(e.value)
    assert "the worst of its fidelity measures" in str(e.value) and "/work/log-bprmf-" in str(e.value), str(e.value)
    assert not (tmp_path / "b2").exists()
