"""Recommenders: the representation contract, SASRec masking, LightGCN propagation, ONNX export,
and that a short training run learns something."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import models
from models import MODELS, TrainConfig, check_onnx, export_onnx, fit
from models.base import pad_histories, sample_unseen, train_pairs
from models.lightgcn import LightGCN
from models.sasrec import SASRec, training_windows
from models.training import dev_metrics
from recsae import ConfigError
from recsae.data.core import Dataset, FeatureTable, Split, leave_one_out

torch.set_num_threads(1)

N_USERS, N_ITEMS, N_GROUPS, SEQ_LEN = 90, 30, 3, 14


def tiny_dataset(seed: int = 0) -> Dataset:
    """Users of group g walk the items of group g in order (item -> item + 1 within the group),
    from a random start: learnable both as taste (MF, LightGCN) and as next item (SASRec)."""
    rng = np.random.default_rng(seed)
    per = N_ITEMS // N_GROUPS
    users, items, times = [], [], []
    for u in range(N_USERS):
        g, start = u % N_GROUPS, int(rng.integers(per))
        for t in range(SEQ_LEN):
            users.append(u)
            items.append(g * per + (start + t) % per)
            times.append(t)
    return Dataset(
        name="tiny",
        user_ids=np.array([str(u) for u in range(N_USERS)]),
        item_ids=np.array([str(i) for i in range(N_ITEMS)]),
        users=np.array(users),
        items=np.array(items),
        times=np.array(times),
        item_titles=[f"item {i}" for i in range(N_ITEMS)],
        item_features=FeatureTable.empty(N_ITEMS),
    )


@pytest.fixture(scope="module")
def split() -> Split:
    return leave_one_out(tiny_dataset())


def small(name: str, split: Split, **kw) -> models.Recommender:
    hp = {"dim": 16, **kw}
    if name == "sasrec":
        hp.setdefault("max_len", 8)
    return models.build(name, split, **hp).eval()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_shapes_and_score_factorization(name: str, split: Split) -> None:
    m = small(name, split)
    users = np.array([0, 5, 7])
    for stage in ("dev", "test", "serve"):
        x = m.encoder_inputs(split, users, stage)
        assert x.dtype == torch.int64
        assert x.shape == ((3,) if m.input_kind == "user" else (3, m.max_len))
        with torch.no_grad():
            rep = m.represent(x)
            items = m.item_embeddings()
            assert rep.shape == (3, 16) and items.shape == (N_ITEMS, 16)
            torch.testing.assert_close(m.scores(x), rep @ items.T)
            torch.testing.assert_close(m.encoder_module()(x), rep)
    assert m.kind in ("general", "graph", "sequential")
    assert m.input_kind == ("history" if name == "sasrec" else "user")


def test_encoder_inputs_follow_the_stage(split: Split) -> None:
    m = small("sasrec", split, max_len=20)
    u = 4
    full = split.full_history(u)
    for stage, hist in (("dev", full[:-2]), ("test", full[:-1]), ("serve", full)):
        row = m.encoder_inputs(split, [u], stage)[0].numpy()
        assert (row[-len(hist) :] == hist).all()
        assert (row[: -len(hist)] == N_ITEMS).all()  # left padding
    short = small("sasrec", split, max_len=5).encoder_inputs(split, [u], "serve")[0].numpy()
    assert (short == full[-5:]).all()  # only the most recent max_len items
    with pytest.raises(ValueError):
        m.encoder_inputs(split, [u], "train")
    with pytest.raises(ValueError):
        m.encoder_inputs(split, [N_USERS], "dev")


def test_sasrec_left_padding_does_not_change_representation(split: Split) -> None:
    m = small("sasrec", split, max_len=10)
    seq = [3, 4, 5, 6]
    with torch.no_grad():
        reps = [m.represent(pad_histories([np.array(seq)], w, N_ITEMS))[0] for w in (4, 5, 7, 10)]
    for r in reps[1:]:
        torch.testing.assert_close(r, reps[0], atol=1e-5, rtol=1e-5)
    # an empty history gives a finite vector (the pad row only attends to itself)
    with torch.no_grad():
        empty = m.represent(torch.full((2, 10), N_ITEMS))
    assert torch.isfinite(empty).all()


def test_sasrec_attention_is_causal(split: Split) -> None:
    m = small("sasrec", split, max_len=10)
    x = torch.tensor([[N_ITEMS, N_ITEMS, 1, 2, 3, 4, 5, 6, 7, 8]])
    y = x.clone()
    y[0, 6:] = torch.tensor([20, 21, 22, 23])  # change only the future of position 5
    with torch.no_grad():
        hx, hy = m.hidden(x), m.hidden(y)
    torch.testing.assert_close(hx[0, :6], hy[0, :6])
    assert not torch.allclose(hx[0, 6:], hy[0, 6:])
    # a prefix behaves exactly like the shorter history it is (what windowed training relies on)
    with torch.no_grad():
        prefix = m.represent(pad_histories([np.array([1, 2, 3])], 10, N_ITEMS))
    torch.testing.assert_close(hx[0, 4], prefix[0], atol=1e-5, rtol=1e-5)


def test_sasrec_training_windows_cover_each_target_once() -> None:
    rng = np.random.default_rng(0)
    seqs = [np.arange(100, 100 + n) for n in (0, 1, 2, 5, 9, 23, 40)]
    for r in (None, rng, rng):
        x, y = training_windows(seqs, 8, -1, r)
        assert x.shape == y.shape and x.shape[1] == 8
        targets = np.sort(y[y >= 0])
        want = np.sort(np.concatenate([s[1:] for s in seqs]))
        assert (targets == want).all()
        # every target's input is the item just before it in the same sequence
        rows, cols = np.nonzero(y >= 0)
        assert (x[rows, cols] == y[rows, cols] - 1).all()
        # inputs are left-padded, contiguous runs of a sequence
        for row in x:
            real = row[row >= 0]
            assert (np.diff(real) == 1).all() and (row[: 8 - len(real)] == -1).all()


def test_sasrec_stride_keeps_long_contexts() -> None:
    seqs = [np.arange(100, 140)]
    x, y = training_windows(seqs, 8, -1, np.random.default_rng(1), stride=3)
    assert (np.sort(y[y >= 0]) == seqs[0][1:]).all()
    rows, cols = np.nonzero(y >= 0)
    context = (x[rows] >= 0).cumsum(axis=1)[np.arange(len(rows)), cols]
    # every target sees min(items before it, max_len - stride + 1) or more items
    assert (context >= np.minimum(y[rows, cols] - 100, 8 - 3 + 1)).all()
    with pytest.raises(ConfigError):
        training_windows(seqs, 8, -1, stride=9)


def test_lightgcn_propagation_matches_dense_reference(split: Split) -> None:
    m = small("lightgcn", split, n_layers=2)
    assert isinstance(m, LightGCN)
    n = N_USERS + N_ITEMS
    u, i = train_pairs(split)
    a = torch.zeros(n, n)
    a[u, i + N_USERS] = 1.0
    a[i + N_USERS, u] = 1.0
    d = a.sum(1).clamp(min=1).rsqrt()
    a_hat = d[:, None] * a * d[None, :]
    e0 = torch.cat([m.user_emb.weight, m.item_emb.weight]).detach()
    want = (e0 + a_hat @ e0 + a_hat @ a_hat @ e0) / 3
    with torch.no_grad():
        got_u, got_i = m.user_item_vectors()
    torch.testing.assert_close(torch.cat([got_u, got_i]), want, atol=1e-5, rtol=1e-5)
    # the custom sparse backward agrees with autograd through the dense matrix
    m.train()
    pu, pi = m.propagate()
    (pu.square().sum() + pi.sum()).backward()
    e = e0.clone().requires_grad_(True)
    ref = (e + a_hat @ e + a_hat @ a_hat @ e) / 3
    (ref[:N_USERS].square().sum() + ref[N_USERS:].sum()).backward()
    torch.testing.assert_close(m.user_emb.weight.grad, e.grad[:N_USERS], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(m.item_emb.weight.grad, e.grad[N_USERS:], atol=1e-5, rtol=1e-4)


def test_lightgcn_cache_follows_weight_updates(split: Split) -> None:
    m = small("lightgcn", split)
    with torch.no_grad():
        before = m.item_embeddings().clone()
        m.item_emb.weight.add_(1.0)
        after = m.item_embeddings()
    assert not torch.allclose(before, after)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_config_round_trip(name: str, split: Split) -> None:
    m = small(name, split, seed=3)
    clone = models.from_config(m.config()).eval()
    clone.load_state_dict(m.state_dict())
    x = m.encoder_inputs(split, np.arange(6), "test")
    with torch.no_grad():
        torch.testing.assert_close(clone.represent(x), m.represent(x))
        torch.testing.assert_close(clone.item_embeddings(), m.item_embeddings())
    # the seed alone makes initialisation reproducible
    again = small(name, split, seed=3)
    for a, b in zip(again.parameters(), m.parameters()):
        torch.testing.assert_close(a, b)
    with pytest.raises(ConfigError):
        models.from_config({**m.config(), "name": "nope"})


@pytest.mark.parametrize("name", sorted(MODELS))
def test_onnx_export_matches_pytorch(name: str, split: Split, tmp_path: Path) -> None:
    m = small(name, split)
    path = export_onnx(m, tmp_path / f"{name}.onnx")
    assert path.exists() and not (set(tmp_path.iterdir()) - {path})  # one self-contained file
    seq_lens = (1, 3, 8) if name == "sasrec" else None
    diff = check_onnx(m, path, batch_sizes=(1, 2, 17), seq_lens=seq_lens)
    assert diff <= 1e-4
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == (["history"] if name == "sasrec" else ["users"])
    assert [o.name for o in sess.get_outputs()] == ["representation"]
    # real encoder inputs, too
    x = m.encoder_inputs(split, np.arange(N_USERS), "serve")
    with torch.no_grad():
        ref = m.represent(x).numpy()
    assert np.abs(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0] - ref).max() <= 1e-4


@pytest.mark.parametrize(
    "name,hp,tc",
    [
        ("bprmf", {}, {"lr": 3e-2, "batch_size": 16}),
        ("bprmf", {"loss": "bpr", "n_negatives": 2, "l2": 1e-4}, {"lr": 3e-2, "batch_size": 64}),
        ("lightgcn", {}, {"lr": 3e-2, "batch_size": 16}),
        ("sasrec", {"dropout": 0.1}, {"lr": 1e-2, "batch_size": 16}),
    ],
)
def test_short_training_beats_random_init(name: str, hp: dict, tc: dict, split: Split) -> None:
    m = small(name, split, **hp)
    before = dev_metrics(m, split)["NDCG@10"]
    cfg = TrainConfig.for_model(name, epochs=8, patience=8, min_epochs=0, progress=False, **tc)
    result = fit(m, split, cfg)
    after = dev_metrics(m, split)["NDCG@10"]
    assert result.best_dev["NDCG@10"] == pytest.approx(after)  # best weights were restored
    assert 1 <= result.best_epoch <= result.epochs_run <= 8
    assert len(result.history) == result.epochs_run
    assert after > before + 0.1, (before, after)
    assert not m.training


def test_bad_options_raise(split: Split) -> None:
    with pytest.raises(ConfigError):
        models.build("bprmf", split, loss="hinge")
    with pytest.raises(ConfigError):
        models.build("lightgcn", split, loss="bpr", n_negatives=0)
    with pytest.raises(ConfigError):
        models.build("sasrec", split, dim=10, n_heads=3)
    with pytest.raises(ConfigError):
        models.build("nope", split)
    with pytest.raises(ConfigError):
        TrainConfig(epochs=0)
    with pytest.raises(ConfigError):
        TrainConfig(schedule="step")
    with pytest.raises(ConfigError):
        TrainConfig.for_model("nope")


def test_negative_sampling_avoids_training_items(split: Split) -> None:
    users, items = train_pairs(split)
    keys = np.unique(users * N_ITEMS + items)
    rng = np.random.default_rng(0)
    neg = sample_unseen(rng, users, 4, N_ITEMS, keys)
    assert neg.shape == (len(users), 4)
    hit = np.isin(users[:, None] * N_ITEMS + neg, keys)
    assert hit.mean() < 0.01


def test_sasrec_is_the_reference_setting() -> None:
    m = SASRec(10, 50)
    assert (m.dim, m.n_layers, m.n_heads, m.max_len) == (64, 1, 1, 20)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_heldout_targets_line_up_with_captured_rows(name: str, split: Split, tmp_path: Path) -> None:
    """Each held-out activation row's target is the item that followed its input in the user's
    history, and what it skips is exactly that input: what the wide fidelity figure relies on."""
    from recsae.kernel import history_windows
    from recsae.pipeline import JobConfig, capture_activations
    from recsae.stages import heldout_targets

    cfg = JobConfig(dataset="tiny", heldout_fraction=0.3, progress=False)
    model = small(name, split)
    acts = capture_activations(model, split, cfg, tmp_path)
    rows, targets, exclude = heldout_targets(split, cfg, model.input_kind)
    assert len(rows) == len(targets) == len(exclude) > 0 and rows.max() < len(acts.heldout)
    if model.input_kind == "history":  # every held-out row has a next item
        assert len(rows) == len(acts.heldout)
    users = np.asarray(acts.heldout_users)[rows]
    windows = np.asarray(acts.heldout_windows)[rows]
    for u, w, t, ex in zip(users, windows, targets, exclude):
        full = split.full_history(int(u))
        assert np.array_equal(ex, full[: len(ex)]) and t == full[len(ex)]
        if model.input_kind == "history":
            assert np.array_equal(w, history_windows([ex], model.max_len, split.n_items)[0])
