"""``recsae.ann`` on its own: the MIPS -> L2 reduction ranks like inner products, and both index
kinds (IVF, HNSW) built on clustered vectors return the exact top-k for most queries, with
excluded items never returned and exact scores. (Served through a bundle: tests/integration/test_ann.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from recsae import ann
from recsae.kernel import top_items

pytest.importorskip("faiss", reason="faiss-cpu (the `ann` extra) is not installed: `make install` installs it")


def clustered(n: int, d: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, d)).astype(np.float32)
    items = centres[rng.integers(0, 40, n)] + 0.4 * rng.standard_normal((n, d)).astype(np.float32)
    items *= rng.lognormal(0, 0.3, (n, 1)).astype(np.float32)  # unequal norms: the case MIPS needs
    queries = centres[rng.integers(0, 40, 120)] + 0.4 * rng.standard_normal((120, d)).astype(np.float32)
    return items.astype(np.float32), queries.astype(np.float32)


def test_augmented_l2_ranks_like_inner_product():
    items, queries = clustered(500)
    m = float(np.linalg.norm(items, axis=1).max())
    a, q = ann.augment(items, m), ann.augment(queries)
    assert a.shape[1] == ann.index_dim(items.shape[1]) and a.shape[1] % 8 == 0
    d2 = ((q[:, None, :] - a[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(np.argsort(d2, axis=1, kind="stable")[:, :10],
                                  np.argsort(-(queries @ items.T), axis=1, kind="stable")[:, :10])


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_index_finds_the_exact_top_k(kind):
    items, queries = clustered(4000)
    rng = np.random.default_rng(1)
    seen = [rng.choice(len(items), 20, replace=False) for _ in queries]
    index, meta = ann.build(items, kind, queries[:60], seen[:60])
    assert meta["calibration"]["recall_at_10"] >= ann.TARGET_RECALL or kind == "hnsw"
    idx = ann.ANNIndex(index, meta, items)
    ids, sc = idx.top_items(queries[60:], 10, seen[60:])
    ex_ids, _ = top_items(queries[60:] @ items.T, 10, seen[60:])
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids.tolist(), ex_ids.tolist())])
    assert recall >= 0.95, recall
    for r, row in enumerate(ids):
        assert not set(row.tolist()) & set(seen[60 + r].tolist())
        np.testing.assert_allclose(sc[r], items[row] @ queries[60 + r], rtol=1e-6, atol=1e-6)
        assert list(sc[r]) == sorted(sc[r], reverse=True)
