"""TopK SAE invariants, the hand-written backward, AuxK, persistence, and the NumPy kernel's equality."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsae import ConfigError
from recsae.kernel import SAEKernel
from recsae.sae import SAEConfig, TopKSAE
from recsae.train import SAETrainConfig, measure, resample_dead, train_sae


def sparse_data(n: int, d: int, n_atoms: int, active: int, seed: int = 0) -> np.ndarray:
    """Samples that are sparse non-negative combinations of random unit atoms (ground truth)."""
    rng = np.random.default_rng(seed)
    atoms = rng.standard_normal((n_atoms, d)).astype(np.float32)
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    idx = rng.integers(0, n_atoms, (n, active))
    w = rng.exponential(1.0, (n, active)).astype(np.float32)
    return (atoms[idx] * w[..., None]).sum(1) + 0.01 * rng.standard_normal((n, d)).astype(np.float32)


def test_k_larger_than_latent_count_is_a_clear_error():
    with pytest.raises(ConfigError, match="k=600 must be between 1 and the latent count 512"):
        SAEConfig(d_in=64, expansion=8, k=600)


def test_exactly_k_active_and_unit_norm_decoder_after_training():
    x = sparse_data(4000, 16, 40, 3)
    res = train_sae(x, SAEConfig(d_in=16, expansion=4, k=5), SAETrainConfig(epochs=3, batch_size=256, progress=False))
    sae = res.sae
    norms = sae.W_dec.detach().norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    acts, idx = sae.encode(torch.as_tensor(x[:100]))
    assert acts.shape == (100, 5) and idx.shape == (100, 5)
    # k distinct latents per sample, all non-negative
    assert all(len(set(r.tolist())) == 5 for r in idx)
    assert bool((acts >= 0).all())
    assert res.train.mean_l0 <= 5.0


def test_more_latents_than_training_rows_still_trains():
    """User-based models on small data (BPR-MF on ml-100k: 859 training users, 2,048 latents)
    give fewer rows than latents: the data initialisation reuses rows instead of failing."""
    x = sparse_data(300, 16, 20, 2)
    res = train_sae(x, SAEConfig(d_in=16, expansion=32, k=4), SAETrainConfig(epochs=3, batch_size=64, progress=False))
    w = res.sae.W_dec.detach()
    assert w.shape == (512, 16) and torch.isfinite(w).all()
    assert len(torch.unique(w, dim=0)) == 512  # reused rows start apart
    assert res.train.fvu < 1.0


@pytest.mark.parametrize("n_dead", [0, 3, 12])
def test_hand_written_gradients_match_autograd_through_forward(n_dead):
    """backward_step (the training path) against autograd on forward's loss, AuxK included."""
    torch.manual_seed(0)
    cfg = SAEConfig(d_in=8, expansion=4, k=3, aux_k=5)
    sae = TopKSAE(cfg).double()
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_()
        sae.W_enc.mul_(2.0)
    x = torch.randn(40, 8, dtype=torch.double)
    dead = torch.zeros(cfg.n_latents, dtype=torch.bool)
    dead[torch.randperm(cfg.n_latents)[:n_dead]] = True
    alpha = 0.25
    out = sae(x, dead_mask=dead)
    (out.fvu + alpha * out.auxk_loss).backward()
    reference = {n: p.grad.clone() for n, p in sae.named_parameters()}
    sae.zero_grad()
    step = sae.backward_step(x, dead.nonzero().squeeze(1), alpha)
    assert step.fvu == pytest.approx(out.fvu.item(), rel=1e-12)
    assert step.auxk_loss == pytest.approx(out.auxk_loss.item(), rel=1e-12)
    if n_dead:
        assert step.auxk_loss > 0
    for n, p in sae.named_parameters():
        assert torch.allclose(p.grad, reference[n], atol=1e-10), n


def test_training_reduces_fvu_on_planted_sparse_data():
    x = sparse_data(6000, 16, 32, 2, seed=1)
    res = train_sae(x[:5000], SAEConfig(d_in=16, expansion=4, k=4), SAETrainConfig(epochs=15, batch_size=256, progress=False), x[5000:])
    assert res.heldout is not None
    assert res.heldout.fvu < 0.1, res.summary()
    untrained = measure(TopKSAE(SAEConfig(d_in=16, expansion=4, k=4)), x[5000:])
    assert res.heldout.fvu < 0.5 * untrained.fvu


def _trapped_run(alpha: float, resample_until: float = 0.0, resample: str = "split") -> float:
    """Train with half the latents trapped behind a large negative encoder bias.

    Many true atoms per sample (12 of 256) leave a large residual made of real features, the
    regime where AuxK can revive latents (with few strong atoms the k-th activation is too high
    for a latent trained on the residual ever to win; see README, "dead latents").
    """
    x = sparse_data(8000, 32, 256, 12, seed=2)
    cfg = SAEConfig(d_in=32, expansion=8, k=4, dead_after=1000, auxk_alpha=alpha, aux_k=16)
    tcfg = SAETrainConfig(
        epochs=12, batch_size=256, progress=False, resample_until=resample_until, resample=resample, init="random", seed=3
    )
    orig_init = TopKSAE.__init__

    def trapped_init(self, cfg_, *, seed=0):
        orig_init(self, cfg_, seed=seed)
        with torch.no_grad():
            self.b_enc[cfg_.n_latents // 2 :] = -3.0

    TopKSAE.__init__ = trapped_init
    try:
        return train_sae(x, cfg, tcfg).train.dead_ratio
    finally:
        TopKSAE.__init__ = orig_init


def test_auxk_revives_dead_latents_in_a_trap():
    without = _trapped_run(alpha=0.0)
    with_aux = _trapped_run(alpha=1 / 32)
    assert without >= 0.45, f"the case should leave the trapped half dead without AuxK (got {without:.2f})"
    assert with_aux < without - 0.1, (without, with_aux)


def test_residual_resampling_revives_trapped_latents():
    """Many true features, half the latents trapped: residual resampling finds the uncovered ones.

    (Split resampling leaves ~10% dead here: copies of busy latents do not discover features
    the SAE has not covered yet, which is why ``resample="residual"`` stays available.)
    """
    assert _trapped_run(alpha=1 / 32, resample_until=0.9, resample="residual") < 0.05


def test_split_resampling_starts_new_latents_where_busy_ones_were():
    """A split pair shares its parent's work: renewed latents fire, the reconstruction barely moves."""
    x = torch.as_tensor(sparse_data(6000, 16, 48, 3, seed=4))
    cfg = SAEConfig(d_in=16, expansion=8, k=4)
    sae = train_sae(x.numpy(), cfg, SAETrainConfig(epochs=6, batch_size=256, progress=False)).sae
    dead = torch.zeros(cfg.n_latents, dtype=torch.bool)
    dead[torch.randperm(cfg.n_latents, generator=torch.Generator().manual_seed(0))[: cfg.n_latents // 8]] = True
    with torch.no_grad():
        sae.b_enc[dead] = -100.0  # an eighth of the latents never win the top-k
    before = measure(sae, x)
    assert before.dead_ratio >= 0.12
    renewed = resample_dead(sae, torch.optim.Adam(sae.parameters()), x, dead, torch.Generator().manual_seed(1))
    assert sorted(renewed.tolist()) == dead.nonzero().squeeze(1).tolist()
    norms = sae.W_dec.detach().norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    after = measure(sae, x)
    assert after.dead_ratio < 0.5 * before.dead_ratio, (before.dead_ratio, after.dead_ratio)
    # bounded: where both halves of a pair fire they take two of the k=4 slots
    assert after.fvu < 1.5 * before.fvu, (before.fvu, after.fvu)


def test_split_resampling_never_splits_kept_latents():
    """``keep=r``: the first r latents (reserved directions) are never a split's parent, however
    busy: their encoder, bias and decoder come out of resampling untouched."""
    x = torch.as_tensor(sparse_data(4000, 16, 48, 3, seed=6))
    cfg = SAEConfig(d_in=16, expansion=8, k=4)
    sae = train_sae(x.numpy(), cfg, SAETrainConfig(epochs=2, batch_size=256, progress=False)).sae
    with torch.no_grad():
        sae.b_enc[0] = 100.0  # latent 0 fires for every sample: the likeliest parent of all
    dead = torch.zeros(cfg.n_latents, dtype=torch.bool)
    dead[-40:] = True
    before = [t.detach().clone() for t in (sae.W_enc[0], sae.b_enc[0], sae.W_dec[0])]
    resample_dead(sae, torch.optim.Adam(sae.parameters()), x, dead, torch.Generator().manual_seed(2), keep=1)
    after = (sae.W_enc[0], sae.b_enc[0], sae.W_dec[0])
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    # without keep, the same call does split it (so the assertion above can fail)
    resample_dead(sae, torch.optim.Adam(sae.parameters()), x, dead, torch.Generator().manual_seed(2))
    assert not torch.equal(before[0], sae.W_enc[0])


def test_save_load_and_numpy_kernel_agree_with_torch(tmp_path):
    x = sparse_data(3000, 16, 40, 3)
    sae = train_sae(x, SAEConfig(d_in=16, expansion=4, k=5), SAETrainConfig(epochs=2, batch_size=256, progress=False)).sae
    sae.save(tmp_path / "sae")
    again = TopKSAE.load(tmp_path / "sae")
    kern = SAEKernel.load(tmp_path / "sae")
    xt = torch.as_tensor(x[:64])
    with torch.no_grad():
        a1, i1 = sae.encode(xt)
        a2, i2 = again.encode(xt)
        r1 = sae.decode(a1, i1).numpy()
    assert torch.equal(a1, a2) and torch.equal(i1, i2)
    codes = kern.encode(x[:64])
    # same support and values (the kernel sorts by activation)
    for b in range(64):
        t = dict(zip(i1[b].tolist(), a1[b].tolist()))
        k = dict(zip(codes.idx[b].tolist(), codes.acts[b].tolist()))
        assert set(t) == set(k)
        assert np.allclose([t[j] for j in k], list(k.values()), atol=1e-5)
    assert np.allclose(kern.decode(codes), r1, atol=1e-5)


def test_reserved_direction_lives_in_its_own_latent_only():
    """Planted: every sample carries a shared, varying amount of one direction ``p`` on top of a
    sparse part. A plain SAE puts the shared mean along ``p`` into ``b_dec``; with ``reserved=p``
    latent 0 is pinned to ``p``, no other decoder row nor ``b_dec`` has any of it, and latent 0's
    activation tracks each sample's component along ``p``."""
    rng = np.random.default_rng(3)
    d, n = 16, 6000
    p = rng.standard_normal(d).astype(np.float32)
    p /= np.linalg.norm(p)
    amount = rng.uniform(2.0, 6.0, n).astype(np.float32)
    x = sparse_data(n, d, n_atoms=48, active=3, seed=3) + amount[:, None] * p
    cfg = SAEConfig(d_in=d, expansion=4, k=4)
    tc = SAETrainConfig(epochs=8, batch_size=256, progress=False)

    plain_res = train_sae(x, cfg, tc)
    plain = plain_res.sae
    assert float(plain.b_dec.detach() @ torch.from_numpy(p)) > 2.0  # the shared part went to the bias

    res = train_sae(x, cfg, tc, reserved=torch.from_numpy(p)[None])
    sae, pt = res.sae, torch.from_numpy(p)
    with torch.no_grad():
        assert torch.allclose(sae.W_dec[0], pt, atol=1e-6)
        assert float((sae.W_dec[1:] @ pt).abs().max()) < 1e-5
        assert abs(float(sae.b_dec @ pt)) < 1e-5
        assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(cfg.n_latents), atol=1e-5)
        codes = sae.encode(torch.from_numpy(x))
    a0 = (codes.top_acts * (codes.top_indices == 0)).sum(1).numpy()
    assert (a0 > 0).mean() > 0.95  # fires for (almost) every sample
    # no other latent nor b_dec can hold any of p, so latent 0 carries each sample's whole
    # component along p: the planted amount plus what the sparse atoms happen to add along p
    assert np.corrcoef(a0, x @ p)[0, 1] > 0.9 and np.corrcoef(a0, amount)[0, 1] > 0.7
    # and it costs the reconstruction little: the other latents read and write only the rest
    assert res.train.fvu < 1.1 * plain_res.train.fvu and res.train.dead_ratio <= plain_res.train.dead_ratio + 0.02


@pytest.mark.parametrize("rows,k", [(1, 8), (3, 16), (8, 8), (300, 16), (5, 32)])
def test_largest_first_matches_a_stable_sort_with_ties_to_the_lower_latent(rows, k):
    from recsae.kernel import largest_first

    rng = np.random.default_rng(rows + k)
    pre = rng.standard_normal((rows, 256)).astype(np.float32)
    pre[:, 40:60] = pre[:, :1]  # each row's first value repeated: ties, some of them across the k-th place
    pre[:, 100:104] = np.float32(9.0)  # a four-way tie at the top
    expected = np.argsort(-pre.astype(np.float64), axis=1, kind="stable")[:, :k]
    before = pre.copy()
    idx, vals = largest_first(pre, k)
    assert (idx == expected).all()
    assert (vals == np.take_along_axis(pre, expected, axis=1)).all()
    assert (pre == before).all()  # the input is not overwritten
