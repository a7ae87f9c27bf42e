"""The quality search on small generated activations with a known answer.

Every row is the sum of exactly 4 of 32 dictionary atoms (plus a little noise): an SAE with k < 4
cannot reconstruct it and one with k = 4 largely can (a few epochs here: held-out FVU 0.51 /
0.38 / 0.21 at k = 1 / 2 / 4, NDCG@10 kept 0.54 / 0.61 / 0.74), so against a target the data
puts between k = 2 and k = 4 (FVU <= 0.30, NDCG@10 kept >= 0.70) the search started at k = 1 must
climb the ladder, stop at the first k = 4 setting and not train the next one.
NDCG@10 kept is measured for real: each held-out row's target is its own top item under random
item embeddings, so the original keeps NDCG@10 = 1 and the reconstruction keeps what it ranks.
Nothing here is timed: the budget is tested with an injected clock.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import replace

import numpy as np
import pytest

from recsae.evaluate import ndcg_per_user, target_ranks
from recsae.pipeline import JobConfig, kernel_of, search_warning
from recsae.quality import sae_ladder, search_sae, shortfall
from recsae.stages import Activations, sae_folder

D, ATOMS, ACTIVE, ITEMS = 16, 32, 4, 100


def make_acts(n_train: int = 1500, n_held: int = 400, seed: int = 0) -> Activations:
    rng = np.random.default_rng(seed)
    atoms = rng.normal(size=(ATOMS, D))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)

    def rows(n: int) -> np.ndarray:
        idx = np.argsort(rng.random((n, ATOMS)), axis=1)[:, :ACTIVE]
        w = rng.uniform(1.0, 3.0, size=(n, ACTIVE))
        x = np.einsum("na,nad->nd", w, atoms[idx]) + 0.02 * rng.normal(size=(n, D))
        return x.astype(np.float32)

    none = np.zeros(0, dtype=np.int64)
    return Activations(rows(n_train), rows(n_held), none, none, np.zeros((0, 1), np.int64), np.zeros((0, 1), np.int64))


def evaluator(acts: Activations):
    """NDCG@10 kept by the reconstruction over the held-out rows, and their FVU."""
    emb = np.random.default_rng(1).normal(size=(ITEMS, D)).astype(np.float32)
    x = np.asarray(acts.heldout)
    targets = (x @ emb.T).argmax(1)
    exclude = [np.zeros(0, dtype=np.int64)] * len(x)
    calls = []

    def evaluate(sae, metrics: dict) -> dict:
        k = kernel_of(sae)
        kept = ndcg_per_user(target_ranks(k.decode(k.encode(x)), emb, targets, exclude)[0], 10).mean()
        calls.append(sae.cfg.k)
        return {"ndcg10_kept": float(kept), "fvu": metrics["heldout"]["fvu"], "measured_on": f"{len(x):,} held-out rows"}

    return evaluate, calls


def config(**kw) -> JobConfig:
    base = dict(dataset="generated", k=1, expansion=4, sae_epochs=10, sae_batch_size=128, progress=False,
                quality_budget=3600.0, target_ndcg=0.70, target_fvu=0.30)
    return JobConfig(**{**base, **kw})


def test_the_ladder_raises_k_then_latents_and_epochs_and_caps_k():
    assert sae_ladder(8, 16, 60, 64) == [(8, 16, 60), (16, 16, 60), (32, 32, 120), (32, 64, 120)]
    assert sae_ladder(16, 16, 60, 64) == [(16, 16, 60), (32, 16, 60), (32, 32, 120), (32, 64, 120)]
    assert sae_ladder(32, 32, 120, 64)[1:] == [(32, 64, 240), (32, 128, 240)]  # k stays at d / 2
    # the shortfall is <= 1 exactly when both targets are met
    assert shortfall(0.95, 0.10, 0.95, 0.10) == pytest.approx(1.0)
    assert shortfall(0.96, 0.05, 0.95, 0.10) < 1 < shortfall(0.96, 0.11, 0.95, 0.10)


def test_search_stops_at_the_first_setting_that_meets_the_target_and_records_itself(tmp_path):
    acts = make_acts()
    evaluate, calls = evaluator(acts)
    cfg = config()
    found = search_sae(cfg, acts, tmp_path, evaluate)
    rec = found.record
    tried = [(t["k"], t["expansion"], t["epochs"]) for t in rec["trials"]]
    # k=1 and k=2 cannot reconstruct 4 active atoms; k=4 can, to the target: the search stops there
    assert tried == sae_ladder(1, 4, 10, D)[:3] == [(1, 4, 10), (2, 4, 10), (4, 8, 20)], rec
    assert [t["meets"] for t in rec["trials"]] == [False, False, True], rec
    assert rec["met"] and rec["stopped"] == "target met" and rec["chosen"] == 2
    assert (found.cfg.k, found.cfg.expansion, found.cfg.sae_epochs) == (4, 8, 20) and found.sae.cfg.k == 4
    last = rec["trials"][-1]
    assert last["ndcg10_kept"] >= 0.70 and last["fvu"] <= 0.30, last
    assert rec["trials"][0]["fvu"] > 0.30
    assert all(t["seconds"] >= 0 and not t["cached"] for t in rec["trials"])
    assert "first setting that meets the target" in rec["why"] and search_warning(rec) == []
    json.dumps(rec)  # goes into the manifest as it is
    # each SAE is cached under its own settings: a re-run trains nothing and chooses the same
    assert all((sae_folder(replace(cfg, k=k, expansion=x, sae_epochs=e), tmp_path) / "metrics.json").exists()
               for k, x, e in tried)
    again = search_sae(cfg, acts, tmp_path, evaluate)
    assert [t["cached"] for t in again.record["trials"]] == [True, True, True]
    assert again.record["chosen"] == 2 and calls == [1, 2, 4, 1, 2, 4]


def test_no_search_when_the_configured_sae_already_meets_the_target(tmp_path):
    acts = make_acts()
    evaluate, calls = evaluator(acts)
    found = search_sae(config(k=4, expansion=8, sae_epochs=20), acts, tmp_path, evaluate)
    assert len(found.record["trials"]) == 1 and calls == [4]
    assert found.record["met"] and "configured SAE" in found.record["why"]


def test_a_spent_budget_starts_nothing_more_and_says_what_came_closest(tmp_path):
    acts = make_acts()
    evaluate, calls = evaluator(acts)
    found = search_sae(config(quality_budget=1e-9), acts, tmp_path, evaluate)
    rec = found.record
    assert calls == [1] and len(rec["trials"]) == 1 and rec["chosen"] == 0 and not rec["met"]
    assert rec["stopped"].startswith("budget: k=2 x 64 latents, 10 epochs would take"), rec["stopped"]
    assert "the closest, k=1 x 64 latents, 10 epochs, misses on NDCG@10 kept and FVU" in rec["why"], rec["why"]
    (warning,) = search_warning(rec)
    assert "a larger --quality-budget lets it go on" in warning
    # switched off: the SAE exactly as asked, and no warning about a search
    off = search_sae(config(quality_budget=0), acts, tmp_path, evaluate).record
    assert len(off["trials"]) == 1 and off["stopped"].startswith("search off") and search_warning(off) == []


def test_a_setting_that_runs_past_the_budget_is_stopped_and_not_kept(tmp_path):
    """A clock that advances 10,000 s per reading against a 100,000 s budget: the second setting
    starts (its estimate, from real seconds per epoch, is far below what is left) and is asked
    after each epoch whether to stop, so it ends after a handful of its 60 epochs."""
    acts = make_acts(n_train=600, n_held=200)
    evaluate, calls = evaluator(acts)
    ticks = itertools.count()
    cfg = config(sae_epochs=60, quality_budget=100_000.0)
    found = search_sae(cfg, acts, tmp_path, evaluate, clock=lambda: 10_000.0 * next(ticks))
    rec = found.record
    assert calls == [1] and len(rec["trials"]) == 2, rec
    stopped = rec["trials"][1]
    assert "stopped" in stopped and "of 60 epochs" in stopped["stopped"] and "fvu" not in stopped, stopped
    assert rec["stopped"].startswith("budget: ran out while training k=2"), rec["stopped"]
    assert rec["chosen"] == 0 and found.sae.cfg.k == 1
    half = config(k=2, sae_epochs=60, quality_budget=100_000.0)
    assert not (sae_folder(half, tmp_path) / "metrics.json").exists()  # a stopped SAE is not cached
