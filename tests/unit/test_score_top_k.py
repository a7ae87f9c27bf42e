"""``score_top_k`` (block-wise scoring with a running threshold) against two references: the
naive ``top_items(X @ E.T, k, exclude)`` and an independent full stable sort of scores computed
elementwise in float64 (no BLAS). Most data is small integers, so every product and sum is exact
and any summation order gives the same float32 scores: ids and scores must be identical."""

from __future__ import annotations

import numpy as np
import pytest

from recsae import kernel
from recsae.kernel import score_top_k, top_items


def reference(X: np.ndarray, E: np.ndarray, k: int, exclude: list[np.ndarray] | None):
    """Best first, ties by lower id, NaN after -inf (by id); k clamped to n. Scores summed in
    float64 one coordinate at a time (exact for these small integers; 0 * inf is NaN, as IEEE)."""
    S = np.zeros((len(X), len(E)))
    for j in range(X.shape[1]):
        with np.errstate(invalid="ignore"):
            S += X[:, j, None].astype(np.float64) * E[None, :, j].astype(np.float64)
    S = S.astype(np.float32)
    n, k = len(E), min(k, len(E))
    ids, sc = [], []
    for r in range(len(X)):
        row = S[r].copy()
        if exclude is not None and len(exclude[r]):
            row[exclude[r]] = -np.inf
        order = np.lexsort((np.arange(n), -row))[:k]  # lexsort sorts NaN last
        ids.append(order)
        sc.append(row[order])
    return np.array(ids), np.array(sc)


def check(X, E, k, exclude=None):
    ids, sc = score_top_k(X, E, k, exclude)
    want_ids, want_sc = reference(X, E, k, exclude)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(sc, want_sc)  # NaN == NaN here
    naive_ids, naive_sc = top_items(X @ E.T, k, exclude)
    np.testing.assert_array_equal(ids, naive_ids)
    np.testing.assert_array_equal(sc, naive_sc)
    assert ids.dtype == np.int64 and sc.dtype == np.float32


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 1024 items (the default is 16k+): many blocks, merges and thresholds at small n."""
    monkeypatch.setattr(kernel, "_MIN_BLOCK", 1024)
    monkeypatch.setattr(kernel, "SCORE_TILE", 4096)


def ints(rng, shape, lo=-3, hi=4):
    return rng.integers(lo, hi, size=shape).astype(np.float32)


def layout(E: np.ndarray, order: str) -> np.ndarray:
    return np.asfortranarray(E) if order == "F" else np.ascontiguousarray(E)


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("n", [1000, 16384, 40007])
def test_equals_references_across_shapes(small_blocks, order, n):
    rng = np.random.default_rng(n)
    E = layout(ints(rng, (n, 8)), order)
    for b in (1, 2, 33):
        X = ints(rng, (b, 8))
        for k in (1, 10, 1000, 1025, n, n + 5):
            ex = [rng.integers(0, n, size=int(rng.integers(0, 150))) for _ in range(b)]
            if b > 1:
                ex[1] = np.zeros(0, np.int64)  # a row with nothing excluded
            check(X, E, k, ex)
        check(X, E, 7)  # no exclusions at all


@pytest.mark.parametrize("order", ["C", "F"])
def test_default_blocks(order):
    """The real block sizes: one block for a few rows, several at 33 rows (16k items each, the
    last one longer)."""
    rng = np.random.default_rng(5)
    n = 70001
    E = layout(ints(rng, (n, 16)), order)
    for b in (1, 3, 33):
        X = ints(rng, (b, 16))
        check(X, E, 10, [rng.integers(0, n, size=100) for _ in range(b)])


def test_heavy_ties_are_cut_by_lower_id(small_blocks):
    """Scores from {-1, 0, 1} embeddings of size 3: a handful of distinct values over 30k
    items, so the k-th place sits inside a huge tie, in every block."""
    rng = np.random.default_rng(1)
    n = 30011
    E = ints(rng, (n, 3), -1, 2)
    X = ints(rng, (33, 3), -1, 2)
    X[0] = 0  # a flat row: every item ties
    for k in (1, 5, 100, 1000):
        check(X, E, k, [rng.integers(0, n, size=50) for _ in range(33)])


def test_excluding_all_but_a_few_items_leaves_minus_inf_at_the_tail(small_blocks):
    rng = np.random.default_rng(2)
    n = 20000
    E = ints(rng, (n, 8))
    X = ints(rng, (4, 8))
    keep = np.array([5, 17000, 19999])
    ex = [np.setdiff1d(np.arange(n), keep), np.arange(0, n, 2), np.zeros(0, np.int64), np.arange(n)]
    for k in (3, 10, 600):
        check(X, E, k, ex)
    ids, sc = score_top_k(X, E, 10, ex)
    assert set(ids[0, :3]) == set(keep) and np.isneginf(sc[0, 3:]).all()
    assert np.isneginf(sc[3]).all() and ids[3].tolist() == list(range(10))  # all excluded: lowest ids


def test_nan_and_infinite_scores(small_blocks):
    """Items 0..2999 get +inf in two coordinates. Rows with weights (1, -1) there score them NaN
    (inf - inf): fewer than k non-NaN scores in the first block, a row that has no threshold and
    is scored whole; (1, 1) scores them +inf (a tie at +inf wider than k); (-1, -1) scores them
    -inf (a threshold of -inf). One item is NaN for every row."""
    rng = np.random.default_rng(3)
    n = 40000
    E = ints(rng, (n, 6))
    E[:3000, :2] = np.inf
    E[25000, 3] = np.nan
    X = ints(rng, (6, 6), 1, 3)
    X[0, :2] = (1, -1)
    X[1, :2] = (1, 1)
    X[2, :2] = (-1, -1)
    X[3, :2] = (-1, 1)
    ex = [rng.integers(0, n, size=100) for _ in range(6)]
    ex[4] = np.arange(3000, n)  # finite items all excluded: +inf ones first, then -inf
    for k in (1, 10, 1000):
        check(X, E, k, ex)
    X[5] = np.nan  # a NaN user: every score NaN; the lowest ids come back, all dropped by callers
    check(X, E, 10, ex)


def test_float_data_gives_the_matrix_products_scores():
    """Continuous data: the block products round like the whole one (the same BLAS matrix
    product), so ids and scores equal ``top_items(X @ E.T)`` bit for bit (B >= 2: numpy's
    ``X @ E.T`` for one row is a matrix-vector product, which rounds differently)."""
    rng = np.random.default_rng(4)
    n = 50003
    E = rng.standard_normal((n, 64), dtype=np.float32)
    for b in (2, 8, 33):
        X = rng.standard_normal((b, 64), dtype=np.float32)
        ex = [rng.integers(0, n, size=100) for _ in range(b)]
        ids, sc = score_top_k(X, E, 10, ex)
        want_ids, want_sc = top_items(X @ E.T, 10, ex)
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_array_equal(sc, want_sc)
        one = [score_top_k(X[r : r + 1], E, 10, ex[r : r + 1]) for r in range(b)]  # batch-invariant
        np.testing.assert_array_equal(np.concatenate([o[0] for o in one]), ids)
        np.testing.assert_array_equal(np.concatenate([o[1] for o in one]), sc)


def test_other_dtypes_and_many_rows_fall_back_to_the_plain_product(monkeypatch):
    rng = np.random.default_rng(6)
    E = ints(rng, (20000, 4))
    X = ints(rng, (5, 4)).astype(np.float64)
    ids, sc = score_top_k(X, E, 10)
    want_ids, want_sc = top_items(X @ E.T, 10)
    assert sc.dtype == np.float64
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(sc, want_sc)
    monkeypatch.setattr(kernel, "_ROWS", 4)  # 9 rows: in parts of 5 and 4
    X = ints(rng, (9, 4))
    check(X, E, 10, [rng.integers(0, 20000, size=30) for _ in range(9)])


def test_out_of_range_exclusions_raise_like_indexing():
    E = np.ones((20000, 4), np.float32)
    with pytest.raises(IndexError):
        score_top_k(np.ones((1, 4), np.float32), E, 5, [np.array([20000])])
    ids, _ = score_top_k(np.ones((1, 4), np.float32), E, 2, [np.array([-20000, 1])])  # -n is item 0
    assert ids.tolist() == [[2, 3]]


def test_top_items_cuts_ties_at_the_kth_place_by_id():
    """Below 16k items ``top_items`` partitions; a tie across the k-th place used to be cut
    arbitrarily (argpartition), not by lower id."""
    rng = np.random.default_rng(7)
    for _ in range(50):
        n = int(rng.integers(5, 3000))
        k = int(rng.integers(1, n))
        s = rng.integers(0, 4, size=(3, n)).astype(np.float32)
        s[2, rng.integers(0, n, size=n // 3)] = np.nan
        ids, sc = top_items(s, k)
        for r in range(3):
            want = np.lexsort((np.arange(n), -s[r]))[:k]
            np.testing.assert_array_equal(ids[r], want)
            np.testing.assert_array_equal(sc[r], s[r, want])
