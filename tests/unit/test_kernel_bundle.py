"""The NumPy kernel (steering, explanation, top-k) and bundle writing/verification."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from recsae import BundleError, ConfigError
from recsae.bundle import load_bundle, sha256_file, verify_bundle, write_bundle
from recsae.kernel import Codes, SAEKernel, history_windows, recommend, top_items


def random_kernel(m=32, d=8, k=4, seed=0) -> SAEKernel:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((m, d)).astype(np.float32)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    return SAEKernel(w.copy(), rng.normal(0, 0.1, m).astype(np.float32), w, rng.normal(0, 0.1, d).astype(np.float32), k)


def test_encode_is_topk_of_relu_preacts():
    kern = random_kernel()
    x = np.random.default_rng(1).standard_normal((5, 8)).astype(np.float32)
    codes = kern.encode(x)
    pre = np.maximum((x - kern.b_dec) @ kern.W_enc.T + kern.b_enc, 0)
    for b in range(5):
        assert np.allclose(np.sort(pre[b])[::-1][:4], codes.acts[b], atol=1e-6)
        assert np.all(np.diff(codes.acts[b]) <= 0)  # sorted descending


def test_pursuit_recovers_planted_sparse_codes_that_the_topk_encoder_misses():
    """Data built exactly from k decoder rows with non-negative weights (ground truth): matching
    pursuit finds those rows and weights; a TopK encoder that is only the decoder's transpose
    (correlations are not the code) reconstructs far worse. Codes keep the Codes contract."""
    from dataclasses import replace

    from recsae import ConfigError

    rng = np.random.default_rng(5)
    m, d, k, n = 96, 32, 3, 400
    w = rng.standard_normal((m, d)).astype(np.float32)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    b_dec = rng.normal(0, 0.1, d).astype(np.float32)
    true_idx = np.stack([rng.choice(m, k, replace=False) for _ in range(n)])
    true_act = rng.uniform(0.5, 2.0, (n, k)).astype(np.float32)
    x = np.einsum("nk,nkd->nd", true_act, w[true_idx]) + b_dec
    topk = SAEKernel(w.copy(), np.zeros(m, np.float32), w, b_dec, k)
    pursuit = replace(topk, encoder="pursuit")

    def fvu(kern):
        r = kern.decode(kern.encode(x))
        return float(((x - r) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())

    codes = pursuit.encode(x)
    assert codes.idx.shape == (n, k) and (codes.acts >= 0).all() and (np.diff(codes.acts, axis=1) <= 0).all()
    found = np.mean([set(codes.idx[i]) == set(true_idx[i]) for i in range(n)])
    assert found > 0.95 and fvu(pursuit) < 1e-3 and fvu(topk) > 0.05, (found, fvu(pursuit), fvu(topk))
    # the same rows through the chunked path give the same codes
    assert np.array_equal(pursuit.encode(np.tile(x, (11, 1))[: 4097 + 3]).idx[:3], codes.idx[:3])
    with pytest.raises(ConfigError, match="unknown SAE encoder"):
        replace(topk, encoder="omp")


def test_error_preserving_suppression_of_nothing_is_identity_and_removes_only_that_term():
    kern = random_kernel()
    x = np.random.default_rng(2).standard_normal((3, 8)).astype(np.float32)
    codes = kern.encode(x)
    assert np.array_equal(kern.steer(x, codes, {}), x)
    j = int(codes.idx[0, 0])
    xs = kern.steer(x, codes, {j: 1.0})
    expected = x[0] - codes.acts[0, 0] * kern.W_dec[j]
    assert np.allclose(xs[0], expected, atol=1e-6)
    half = kern.steer(x, codes, {j: 0.5})
    assert np.allclose(half[0], x[0] - 0.5 * codes.acts[0, 0] * kern.W_dec[j], atol=1e-6)
    # reconstruction mode drops the error term even when nothing is suppressed
    assert np.allclose(kern.steer(x, codes, {}, mode="reconstruction"), kern.decode(codes), atol=1e-6)


def test_baseline_suppression_removes_exactly_that_share_of_b_dec():
    kern = random_kernel()
    x = np.random.default_rng(4).standard_normal((3, 8)).astype(np.float32)
    codes = kern.encode(x)
    # baseline 0 with nothing suppressed: the very same array, bit for bit
    assert kern.steer(x, codes, {}, baseline=0.0) is x
    assert np.array_equal(kern.steer(x, codes, {}, baseline=0.0), x)
    # error mode: x - baseline * b_dec, on top of any latent suppression
    assert np.array_equal(kern.steer(x, codes, {}, baseline=1.0), x - kern.b_dec)
    assert np.allclose(kern.steer(x, codes, {}, baseline=0.4), x - 0.4 * kern.b_dec, atol=1e-7)
    j = int(codes.idx[0, 0])
    both = kern.steer(x, codes, {j: 1.0}, baseline=0.5)
    assert np.allclose(both, kern.steer(x, codes, {j: 1.0}) - 0.5 * kern.b_dec, atol=1e-6)
    # reconstruction mode: decode with (1 - baseline) b_dec
    rec = kern.steer(x, codes, {}, mode="reconstruction", baseline=0.25)
    assert np.allclose(rec, kern.decode(codes) - 0.25 * kern.b_dec, atol=1e-6)
    assert np.allclose(kern.steer(x, codes, {}, mode="reconstruction", baseline=1.0),
                       kern.decode(codes) - kern.b_dec, atol=1e-6)
    # the explanation keeps adding up: bias shrinks to (1 - s) b_dec . item, error is the SAE's own
    items = np.random.default_rng(5).standard_normal((20, 8)).astype(np.float32)
    ids, scores, codes, xs = recommend(kern, x, items, 5, baseline=0.5)
    assert np.allclose(xs, x - 0.5 * kern.b_dec, atol=1e-6)
    ex = kern.explain(xs, codes, items[ids], baseline=0.5)
    assert np.allclose(ex.bias + ex.contributions.sum(1) + ex.error, scores, atol=1e-4)
    assert np.allclose(ex.bias, 0.5 * np.einsum("d,bnd->bn", kern.b_dec, items[ids]), atol=1e-5)
    plain = kern.explain(x, codes, items[ids])
    assert np.allclose(ex.error, plain.error, atol=1e-5)


@pytest.mark.parametrize("bad", [-0.1, 1.01, float("nan"), float("inf")])
def test_baseline_strength_outside_0_1_is_refused(bad):
    from recsae import ConfigError

    kern = random_kernel()
    x = np.zeros((1, 8), np.float32)
    with pytest.raises(ConfigError, match="baseline"):
        kern.steer(x, kern.encode(x), {}, baseline=bad)
    with pytest.raises(ConfigError, match="baseline"):
        kern.steer(x, kern.encode(x), {}, mode="reconstruction", baseline=bad)


def test_a_batch_is_explained_with_each_rows_own_baseline():
    """The service explains a batch of requests in one call, each with its own baseline
    strength: every row must equal that row explained alone."""
    kern = random_kernel()
    rng = np.random.default_rng(11)
    x = rng.standard_normal((5, 8)).astype(np.float32)
    items = rng.standard_normal((40, 8)).astype(np.float32)
    strengths = [0.0, 0.5, 1.0, 0.25, 0.0]
    codes = kern.encode(x)
    xs = np.concatenate([kern.steer(x[r : r + 1], Codes(codes.acts[r : r + 1], codes.idx[r : r + 1]),
                                    baseline=b) for r, b in enumerate(strengths)])
    ids, scores = top_items(xs @ items.T, 6)
    batch = kern.explain(xs, codes, items[ids], baseline=np.array(strengths))
    assert np.allclose(batch.bias + batch.contributions.sum(1) + batch.error, scores, atol=1e-4)
    for r, b in enumerate(strengths):
        alone = kern.explain(xs[r : r + 1], Codes(codes.acts[r : r + 1], codes.idx[r : r + 1]), items[ids[r : r + 1]], b)
        for got, want in zip(batch, alone):
            assert np.allclose(got[r], want[0], atol=1e-6)
    with pytest.raises(ConfigError, match="baseline"):
        kern.explain(xs, codes, items[ids], baseline=np.array([0.0, 0.5, 1.5, 0.0, 0.0]))


def test_explanation_terms_sum_to_scores():
    kern = random_kernel()
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 8)).astype(np.float32)
    items = rng.standard_normal((50, 8)).astype(np.float32)
    ids, scores, codes, _ = recommend(kern, x, items, 5)
    ex = kern.explain(x, codes, items[ids])
    total = ex.bias + ex.contributions.sum(1) + ex.error
    assert np.allclose(total, scores, atol=1e-4)


def test_top_items_excludes_seen_and_breaks_ties_by_id():
    scores = np.array([[1.0, 3.0, 3.0, 2.0, 0.5]])
    ids, sc = top_items(scores, 3)
    assert ids.tolist() == [[1, 2, 3]]
    ids, _ = top_items(scores, 3, [np.array([1])])
    assert ids.tolist() == [[2, 3, 0]]
    assert scores[0, 1] == 3.0  # input untouched


def test_history_windows_left_pad_and_truncate():
    w = history_windows([np.array([1, 2]), np.arange(10), np.array([], dtype=int)], 4, pad=99)
    assert w.tolist() == [[99, 99, 1, 2], [6, 7, 8, 9], [99, 99, 99, 99]]


def _fill(tmp):
    (tmp / "a.txt").write_text("alpha")
    (tmp / "sub").mkdir()
    (tmp / "sub" / "b.bin").write_bytes(b"\x00\x01")
    return {"model": {"n_items": 0}}


def test_write_bundle_is_atomic_and_verifies(tmp_path):
    out = write_bundle(tmp_path / "b", _fill)
    m = verify_bundle(out)
    assert set(m["files"]) == {"a.txt", "sub/b.bin"}
    assert m["files"]["a.txt"] == sha256_file(out / "a.txt")

    def broken(tmp):
        _fill(tmp)
        raise RuntimeError("job died")

    with pytest.raises(RuntimeError):
        write_bundle(tmp_path / "b", broken)
    # the old bundle is intact and no temporary directory is left behind
    verify_bundle(out)
    assert [p.name for p in tmp_path.iterdir()] == ["b"]


def test_bundle_is_world_readable_whatever_the_umask(tmp_path):
    """A bundle is mounted read-only into a container that runs as another user (uid 10001):
    directories 0755 and files 0644, although mkdtemp makes 0700, safetensors writes 0600 and
    the writer's umask here is 077. The atlas written into it afterwards too."""
    import os
    import stat

    from recsae.concepts import placeholder_dictionary
    from recsae.interpret.atlas import write_atlas
    from recsae.sae import SAEConfig, TopKSAE

    def fill(tmp):
        TopKSAE(SAEConfig(d_in=4, expansion=2, k=1)).save(tmp / "sae")  # what the job writes
        (tmp / "concepts.json").write_text(placeholder_dictionary(np.ones(8)).model_dump_json())
        (tmp / "private").mkdir(mode=0o700)
        fd = os.open(tmp / "private" / "x.bin", os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)
        return {"model": {"n_items": 0}}

    old = os.umask(0o077)
    try:
        out = write_bundle(tmp_path / "b", fill)
        write_atlas(out)
    finally:
        os.umask(old)
    modes = {p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in [out, *out.rglob("*")]}
    assert {"b/sae/sae.safetensors", "b/manifest.json", "b/private/x.bin", "b/atlas.html"} <= set(modes)
    wrong = {p: oct(m) for p, m in modes.items() if m != (0o755 if (tmp_path / p).is_dir() else 0o644)}
    assert not wrong, f"not 0755 dirs / 0644 files: {wrong}"


def test_altered_or_missing_file_is_named(tmp_path):
    out = write_bundle(tmp_path / "b", _fill)
    (out / "a.txt").write_text("tampered")
    with pytest.raises(BundleError, match=r"a\.txt does not match its manifest hash"):
        verify_bundle(out)
    (out / "a.txt").unlink()
    with pytest.raises(BundleError, match=r"a\.txt is missing"):
        verify_bundle(out)
    with pytest.raises(BundleError, match="no bundle at"):
        verify_bundle(tmp_path / "nowhere")
    (out / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        verify_bundle(out)


def test_real_bundle_loads_and_onnx_matches_engine(synthetic_bundle, tmp_path):
    from recsae.engine import Engine

    b = load_bundle(synthetic_bundle)
    assert b.item_emb.shape == (b.model["n_items"], b.model["d"])
    assert len(b.concepts) == b.manifest["sae"]["n_latents"]
    eng = Engine(b)
    x = eng.encode_users(np.arange(5))
    ids, scores, codes, _ = eng.recommend(x, 10, exclude=[b.users.history(u) for u in range(5)])
    assert ids.shape == (5, 10)
    for u in range(5):
        assert not set(ids[u]) & set(b.users.history(u).tolist())
    # a bundle whose ONNX file was swapped is refused by name
    bad = tmp_path / "bad"
    shutil.copytree(synthetic_bundle, bad)
    (bad / "encoder.onnx").write_bytes(b"garbage")
    with pytest.raises(BundleError, match="encoder.onnx"):
        load_bundle(bad)
    m = json.loads((synthetic_bundle / "manifest.json").read_text())
    assert m["metrics"]["onnx_max_abs_diff"] <= 1e-4


def test_top_items_block_pruning_equals_a_full_sort_on_large_catalogues():
    """From 16k items on top_items prunes with block maxima; same answer as a full stable sort
    (best first, ties by lower item id), with exclusions, ties and a flat row."""
    import numpy as np

    from recsae.kernel import top_items

    rng = np.random.default_rng(3)
    for trial in range(40):
        n, k = int(rng.integers(16384, 120000)), int(rng.integers(1, 101))
        s = rng.standard_normal((2, n)).astype(np.float32)
        if trial % 3 == 0:
            s = np.round(s, 1)
        if trial % 10 == 0:
            s[1] = 0.5
        ex = [rng.integers(0, n, size=200), np.array([], dtype=np.int64)]
        ids, sc = top_items(s, k, ex)
        for r in range(2):
            row = s[r].copy()
            row[ex[r]] = -np.inf
            want = np.lexsort((np.arange(n), -row))[:k]
            assert np.array_equal(ids[r], want) and np.array_equal(sc[r], row[want])
