"""Ranking metrics on hand-computed cases (recsae.evaluate is NumPy only)."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from recsae.data.core import Split
from recsae.evaluate import (
    eval_users,
    evaluate_reps,
    evaluate_scores,
    metrics_from_ranks,
    popularity_scores,
    rank_metrics,
    ranks_from_scores,
    sample_negatives,
    sampled_metrics,
)


def small_split() -> Split:
    train = [np.array([0, 1], np.int32), np.array([2], np.int32), np.array([3, 4, 5], np.int32)]
    dev, test = np.array([2, 3, -1], np.int32), np.array([3, 0, -1], np.int32)
    return Split(train=train, dev=dev, test=test, n_items=8)


def test_rank_zero_gives_perfect_scores() -> None:
    m = rank_metrics(np.array([[0.9, 0.1, 0.2, 0.3]]), np.array([0]))
    assert m["HR@5"] == m["NDCG@5"] == m["NDCG@10"] == 1.0


def test_rank_two_gives_one_over_log2_4() -> None:
    scores = np.array([[0.5, 0.9, 0.8, 0.1, 0.0, -1.0]])
    m = rank_metrics(scores, np.array([0]), ks=(1, 2, 3, 5))
    assert m["HR@1"] == m["HR@2"] == 0.0 and m["NDCG@2"] == 0.0
    assert m["HR@3"] == 1.0
    assert m["NDCG@3"] == pytest.approx(1 / math.log2(4)) == pytest.approx(0.5)
    assert m["NDCG@5"] == pytest.approx(0.5)


def test_mean_over_users() -> None:
    scores = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 2.0]])
    m = rank_metrics(scores, np.array([0, 0]), ks=(1, 3))  # ranks 0 and 2
    assert m["HR@1"] == 0.5
    assert m["NDCG@3"] == pytest.approx((1 + 0.5) / 2)


def test_excluding_seen_items_changes_rank() -> None:
    scores = np.array([[0.5, 0.9, 0.8, 0.1]])
    assert ranks_from_scores(scores, np.array([0]))[0] == 2
    assert ranks_from_scores(scores, np.array([0]), [np.array([1])])[0] == 1
    assert ranks_from_scores(scores, np.array([0]), [np.array([1, 2])])[0] == 0
    m = rank_metrics(scores, np.array([0]), [np.array([1, 2])], ks=(1,))
    assert m["HR@1"] == 1.0


def test_target_is_never_excluded() -> None:
    scores = np.array([[0.5, 0.9, 0.8, 0.1]])
    # the target (0) also appears among the excluded items: it must still be ranked
    assert ranks_from_scores(scores, np.array([0]), [np.array([0, 1])])[0] == 1


def test_ties_are_deterministic() -> None:
    scores = np.array([[1.0, 1.0, 1.0, 0.0]])
    assert ranks_from_scores(scores, np.array([1]))[0] == 2  # pessimistic: both ties beat it
    assert ranks_from_scores(scores, np.array([1]), ties="optimistic")[0] == 0
    # a constant scorer gets no credit
    flat = np.zeros((3, 10))
    assert rank_metrics(flat, np.array([0, 4, 9]))["HR@5"] == 0.0


def test_sampled_protocol() -> None:
    scores = np.array([[0.0, 5.0, 1.0, 2.0, 3.0, 6.0]])
    negatives = np.array([[0, 2, 3, 4]])  # item 5 (scored higher) is not sampled
    m = sampled_metrics(scores, np.array([1]), negatives, ks=(1, 5))
    assert m == {f"sampled_{k}@{n}": 1.0 for k in ("HR", "NDCG") for n in (1, 5)}
    m = sampled_metrics(scores, np.array([2]), negatives, ks=(1, 3, 5))  # beaten by 3, 4 only
    assert m["sampled_HR@1"] == 0.0 and m["sampled_NDCG@3"] == pytest.approx(0.5)
    tie = sampled_metrics(np.array([[1.0, 1.0, 0.0]]), np.array([0]), np.array([[1, 2]]), ks=(1,))
    assert tie["sampled_HR@1"] == 0.0  # ties count against the target


def test_metrics_from_ranks_keys_and_prefix() -> None:
    m = metrics_from_ranks(np.array([0, 9, 10]), ks=(10,), prefix="x_")
    assert set(m) == {"x_HR@10", "x_NDCG@10"}
    assert m["x_HR@10"] == pytest.approx(2 / 3)


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError):
        rank_metrics(np.zeros((2, 3)), np.array([0]))
    with pytest.raises(ValueError):
        rank_metrics(np.zeros((1, 3)), np.array([3]))
    with pytest.raises(ValueError):
        rank_metrics(np.zeros((1, 3)), np.array([0]), ties="random")  # type: ignore[arg-type]


def test_popularity_scores_by_stage() -> None:
    sp = small_split()
    dev = popularity_scores(sp, "dev")
    test = popularity_scores(sp, "test")
    assert dev.tolist() == [1, 1, 1, 1, 1, 1, 0, 0]
    assert test.tolist() == [1, 1, 2, 2, 1, 1, 0, 0]  # + dev items 2 and 3


def test_evaluate_reps_matches_explicit_scores_and_chunks() -> None:
    sp = small_split()
    rng = np.random.default_rng(0)
    reps, items = rng.normal(size=(2, 4)), rng.normal(size=(8, 4))
    users = eval_users(sp, "test")
    assert users.tolist() == [0, 1]
    got = evaluate_reps(reps, items, sp, users, "test")
    scores = reps.astype(np.float32) @ items.astype(np.float32).T
    want = rank_metrics(scores, sp.test[users], [sp.history(int(u), "test") for u in users])
    assert {k: got[k] for k in want} == want
    assert got["users"] == 2
    assert evaluate_reps(reps, items, sp, users, "test", chunk=1) == got


def test_evaluate_excludes_stage_history() -> None:
    sp = small_split()
    # user 0 at test: target 3, history [0, 1, 2]; make the history score highest
    scores = np.array([[9.0, 8.0, 7.0, 1.0, 0.0, 0.0, 0.0, 0.0]])
    m = evaluate_scores(scores, sp, np.array([0]), "test", ks=(1,))
    assert m["HR@1"] == 1.0
    # at dev the target is 2 and the history [0, 1] is excluded
    assert evaluate_scores(scores, sp, np.array([0]), "dev", ks=(1,))["HR@1"] == 1.0


def test_users_without_target_raise() -> None:
    sp = small_split()
    with pytest.raises(ValueError, match="eval_users"):
        evaluate_scores(np.zeros(8), sp, np.array([2]), "test")
    with pytest.raises(ValueError):
        evaluate_scores(np.zeros(8), sp, np.array([0]), "serve")


def test_sample_negatives_avoid_history_and_are_deterministic() -> None:
    sp = small_split()
    neg = sample_negatives(sp, np.array([0, 1]), n=4, seed=3)
    assert neg.shape == (2, 4)
    for row, u in zip(neg, [0, 1]):
        assert len(set(row)) == 4
        assert not set(row) & set(sp.full_history(u).tolist())
    assert (neg == sample_negatives(sp, np.array([0, 1]), n=4, seed=3)).all()
    with pytest.raises(ValueError):
        sample_negatives(sp, np.array([0]), n=6)
    m = evaluate_scores(np.arange(8.0)[::-1].copy(), sp, np.array([0, 1]), "test", negatives=neg)
    assert "sampled_NDCG@10" in m and "NDCG@10" in m


def test_evaluate_does_not_import_torch() -> None:
    code = "import sys, recsae.evaluate; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_paired_ratio_ci_brackets_the_ratio_and_narrows_with_pairing():
    from recsae.evaluate import paired_ratio_ci

    rng = np.random.default_rng(3)
    ref = rng.random(1000)
    # identical runs: no uncertainty at all
    assert paired_ratio_ci(ref, ref) == (1.0, 1.0)
    # a uniform 10% loss is known exactly, whatever users are drawn
    lo, hi = paired_ratio_ci(0.9 * ref, ref)
    assert lo == pytest.approx(0.9) and hi == pytest.approx(0.9)
    # noisy per-user changes: the interval contains the point estimate and has width
    new = np.clip(ref + rng.normal(0, 0.2, 1000), 0, 1)
    lo, hi = paired_ratio_ci(new, ref)
    point = new.mean() / ref.mean()
    assert lo < point < hi and hi - lo > 0.01
    with pytest.raises(ValueError):
        paired_ratio_ci(new[:10], ref)


def test_per_user_ndcg_averages_to_evaluate_reps():
    from recsae.data import leave_one_out, make_synthetic
    from recsae.evaluate import eval_users, evaluate_reps, ndcg_per_user, stage_ranks

    split = leave_one_out(make_synthetic(n_users=60, n_items=80, seed=1)[0])
    users = eval_users(split, "test")
    rng = np.random.default_rng(0)
    reps, emb = rng.normal(size=(len(users), 8)).astype(np.float32), rng.normal(size=(split.n_items, 8)).astype(np.float32)
    per = ndcg_per_user(stage_ranks(reps, emb, split, users, "test", chunk=7)[0], 10)
    assert per.shape == (len(users),)
    assert per.mean() == pytest.approx(evaluate_reps(reps, emb, split, users, "test")["NDCG@10"])
