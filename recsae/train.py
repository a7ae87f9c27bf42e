"""Train a TopK SAE on cached activations (a memory-mapped ``.npy``), in large batches.

The reference implementation pushes every batch through the recommender again; here the
activations are captured once (``capture_activations`` in ``recsae.pipeline``) and the SAE
trains on the cached matrix, which is what makes an epoch take about a second.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from recsae.kernel import SAEKernel
from recsae.sae import SAEConfig, TopKSAE


@dataclass
class SAETrainConfig:
    epochs: int = 60
    batch_size: int = 512
    lr: float = 2e-3
    lr_warmup_steps: int = 50
    lr_final_fraction: float = 0.1  # cosine decay to this fraction of lr
    seed: int = 0
    threads: int | None = None
    progress: bool = True
    # "data": decoder rows start at random centred training samples (normalised), so each latent
    # begins in a populated region; "random": isotropic Gaussian directions.
    init: str = "data"
    # After each of the first ``resample_until`` share of epochs, latents that have not fired
    # for ``SAEConfig.dead_after`` samples are re-initialised (``resample``: "split" a busy
    # latent or point at a "residual", see ``resample_dead``). AuxK alone could not revive them
    # at d=64 (see README). The epochs after the last resampling let the reconstruction settle.
    resample_until: float = 0.95
    resample: str = "split"


class TrainingStopped(Exception):
    """``train_sae`` was told to stop (``should_stop``) after ``epochs`` of ``of`` epochs."""

    def __init__(self, epochs: int, of: int):
        super().__init__(f"stopped after {epochs} of {of} epochs")
        self.epochs, self.of = epochs, of


@dataclass
class SAEMetrics:
    """Quality of an SAE on one activation set; ``dead_ratio`` counts latents firing on none."""

    fvu: float
    dead_ratio: float
    mean_l0: float
    n_samples: int
    firing_frequency: np.ndarray = field(repr=False)  # per latent, share of samples it fires on
    mean_activation: np.ndarray = field(repr=False)  # per latent, mean activation when firing

    def as_dict(self) -> dict:
        return {
            "fvu": round(self.fvu, 6),
            "dead_ratio": round(self.dead_ratio, 6),
            "mean_l0": round(self.mean_l0, 3),
            "n_samples": self.n_samples,
        }


@dataclass
class SAETrainResult:
    sae: TopKSAE
    train: SAEMetrics
    heldout: SAEMetrics | None
    seconds_per_epoch: float
    samples_per_second: float
    epochs: int
    history: list[dict]

    def summary(self) -> dict:
        out = {
            "train": self.train.as_dict(),
            "seconds_per_epoch": round(self.seconds_per_epoch, 4),
            "samples_per_second": round(self.samples_per_second),
            "epochs": self.epochs,
        }
        if self.heldout is not None:
            out["heldout"] = self.heldout.as_dict()
        return out


@torch.no_grad()
def measure(sae: "TopKSAE | SAEKernel", acts: np.ndarray | torch.Tensor, batch_size: int = 8192) -> SAEMetrics:
    """FVU, dead ratio, L0 and per-latent statistics on ``acts``, with the SAE's own encoder
    (``TopKSAE``: the trained one; ``SAEKernel``: the bundle's, which may be ``pursuit``)."""
    x_all = acts.float().numpy() if isinstance(acts, torch.Tensor) else np.asarray(acts, dtype=np.float32)
    n, m = len(x_all), sae.n_latents if isinstance(sae, SAEKernel) else sae.cfg.n_latents
    total = float(((x_all - x_all.mean(0, dtype=np.float64)) ** 2).sum())
    sq_err = 0.0
    counts = np.zeros(m, dtype=np.float64)
    sums = np.zeros(m, dtype=np.float64)
    for s in range(0, n, batch_size):
        x = x_all[s : s + batch_size]
        if isinstance(sae, SAEKernel):
            codes = sae.encode(x)
            a, idx, recon = codes.acts, codes.idx, sae.decode(codes)
        else:
            at, it = sae.encode(torch.from_numpy(np.array(x, dtype=np.float32)))  # under the decorator's no_grad
            recon = sae.decode(at, it).numpy()
            a, idx = at.numpy(), it.numpy()
        sq_err += float(((recon - x).astype(np.float64) ** 2).sum())
        fired = a > 0
        counts += np.bincount(idx[fired], minlength=m)
        sums += np.bincount(idx[fired], weights=a[fired].astype(np.float64), minlength=m)
    return SAEMetrics(
        fvu=sq_err / max(total, 1e-12),
        dead_ratio=float((counts == 0).mean()),
        mean_l0=float(counts.sum()) / max(n, 1),
        n_samples=n,
        firing_frequency=(counts / max(n, 1)).astype(np.float32),
        mean_activation=(sums / np.maximum(counts, 1)).astype(np.float32),
    )


def train_sae(
    train_acts: np.ndarray,
    cfg: SAEConfig,
    tcfg: SAETrainConfig | None = None,
    heldout_acts: np.ndarray | None = None,
    reserved: torch.Tensor | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> SAETrainResult:
    """Train a TopK SAE with AuxK on ``train_acts`` (N, d_in); report train and held-out quality.

    ``should_stop`` is asked after every epoch but the last; when it answers True, training
    ends with :class:`TrainingStopped` (the quality search's time budget: a half-trained SAE,
    mid-way through its learning-rate schedule, is not one to keep).

    ``reserved`` (r, d_in): directions each given to one latent of its own (latents 0..r-1, decoder
    rows fixed to them) and kept out of every other decoder row and of ``b_dec``, so that what
    lies along them can only be expressed, and suppressed, through those latents. Used to make a
    known bias (item popularity) a concept the service can switch off; see ``recsae.pipeline``.

    Under ``torch.distributed`` (e.g. ``torchrun``), each process passes its own shard: rank 0's
    initial weights are broadcast, gradients are averaged across processes after every step,
    the data mean, firing statistics and the step count are agreed, and dead-latent resampling runs on rank 0 and is
    broadcast, so all replicas stay identical.
    """
    tcfg = tcfg or SAETrainConfig()
    dist = torch.distributed.is_available() and torch.distributed.is_initialized()
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    torch.manual_seed(tcfg.seed)
    x_all = torch.from_numpy(np.array(train_acts, dtype=np.float32))  # a writable copy of the memmap
    n = len(x_all)
    sae = TopKSAE(cfg, seed=tcfg.seed)
    with torch.no_grad():
        # b_dec from the data mean; encoder starts as the decoder (rows), scaled so the typical
        # pre-activation is comparable to the data's spread.
        total = torch.cat([x_all.sum(0), torch.tensor([float(n)])])
        if dist:
            torch.distributed.all_reduce(total)
        sae.b_dec.copy_(total[:-1] / total[-1])
        n_reserved = 0
        if reserved is not None:
            # orthonormal rows (r, d), each pointing the way its direction does (QR may flip signs,
            # and a latent's activation is never negative)
            q, r_ = torch.linalg.qr(reserved.to(torch.float32).t())
            basis = (q * torch.sign(torch.diagonal(r_))).t()
            n_reserved = len(basis)
        if tcfg.init == "data":
            pick = torch.randperm(n, generator=torch.Generator().manual_seed(tcfg.seed + 1))
            # more latents than rows (user-based models on small data): rows are reused, the noise
            # below tells their copies apart
            rows = x_all[pick[torch.arange(cfg.n_latents) % n]] - sae.b_dec
            rows = rows + 1e-3 * torch.randn_like(rows)
            rows = rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)
            sae.W_dec.copy_(rows)
            sae.W_enc.copy_(rows)
        if reserved is not None:  # encoders start as the (projected) decoders: none reads the reserved part
            _keep_reserved(sae, basis)
            sae.W_enc.copy_(sae.W_dec)
        # Rescale the encoder so the initial reconstruction has the data's scale: with k unit
        # decoder rows all firing, the raw transpose init overshoots by roughly a factor k.
        probe = x_all[torch.randperm(n, generator=torch.Generator().manual_seed(tcfg.seed))[:4096]]
        acts, idx = sae.encode(probe)
        rec = sae.decode(acts, idx) - sae.b_dec
        target = probe - sae.b_dec
        s = float((rec * target).sum() / rec.pow(2).sum().clamp_min(1e-12))
        sae.W_enc.mul_(s)

    world = torch.distributed.get_world_size() if dist else 1
    if dist:  # every replica starts from rank 0's weights and runs the same number of steps
        for p in sae.parameters():
            torch.distributed.broadcast(p.data, src=0)
        n_min = torch.tensor([n])
        torch.distributed.all_reduce(n_min, op=torch.distributed.ReduceOp.MIN)
        n_steps_rows = int(n_min)
    else:
        n_steps_rows = n
    # fused: one kernel per parameter instead of a dozen, a third of a small step's time.
    opt = torch.optim.Adam(sae.parameters(), lr=tcfg.lr, betas=(0.9, 0.999), eps=1e-8, fused=True)
    steps_per_epoch = math.ceil(n_steps_rows / tcfg.batch_size)
    total_steps = steps_per_epoch * tcfg.epochs

    def lr_at(step: int) -> float:
        if step < tcfg.lr_warmup_steps:
            return tcfg.lr * (step + 1) / tcfg.lr_warmup_steps
        p = (step - tcfg.lr_warmup_steps) / max(1, total_steps - tcfg.lr_warmup_steps)
        f = tcfg.lr_final_fraction
        return tcfg.lr * (f + (1 - f) * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))

    since_fired = torch.zeros(cfg.n_latents, dtype=torch.long)
    gen = torch.Generator().manual_seed(tcfg.seed)
    history: list[dict] = []
    step = 0
    t_train = 0.0
    bar = tqdm(range(tcfg.epochs), desc=f"SAE k={cfg.k} m={cfg.n_latents}", disable=not tcfg.progress)
    for epoch in bar:
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=gen)
        fvu_sum, aux_sum = 0.0, 0.0
        for s in range(0, n_steps_rows, tcfg.batch_size):
            x = x_all[perm[s : min(s + tcfg.batch_size, n_steps_rows)]]
            dead_ids = (since_fired >= cfg.dead_after).nonzero().squeeze(1)
            out = sae.backward_step(x, dead_ids, cfg.auxk_alpha)
            if dist:  # average the replicas' gradients, as DistributedDataParallel would
                for p in sae.parameters():
                    torch.distributed.all_reduce(p.grad)
                    p.grad /= world
            sae.remove_gradient_parallel_to_decoder_directions()
            if reserved is not None:  # no step towards the reserved directions (Adam would take one)
                _keep_reserved_grad(sae, basis)
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            opt.step()
            sae.set_decoder_norm_to_unit_norm()
            if reserved is not None:
                _keep_reserved(sae, basis)
            with torch.no_grad():
                fired = torch.zeros(cfg.n_latents, dtype=torch.bool)
                fired[out.top_indices[out.top_acts > 0]] = True
                if dist:
                    f = fired.to(torch.int32)
                    torch.distributed.all_reduce(f, op=torch.distributed.ReduceOp.MAX)
                    fired = f.bool()
                since_fired += len(x) * world
                since_fired[fired] = 0
            fvu_sum += out.fvu * len(x)
            aux_sum += out.auxk_loss * len(x)
            step += 1
        if epoch + 1 < tcfg.epochs * tcfg.resample_until:
            dead_now = since_fired >= cfg.dead_after
            dead_now[:n_reserved] = False  # reserved latents are neither renewed nor split
            renewed = resample_dead(sae, opt, x_all, dead_now, gen, dist, tcfg.resample, keep=n_reserved)
            if reserved is not None:
                _keep_reserved(sae, basis)
            since_fired[renewed] = 0
            n_res = len(renewed)
        else:
            n_res = 0
        t_train += time.perf_counter() - t0
        rec = {
            "epoch": epoch + 1,
            "train_fvu": fvu_sum / n_steps_rows,
            "auxk": aux_sum / n_steps_rows,
            "dead_now": float((since_fired >= cfg.dead_after).float().mean()),
            "resampled": n_res,
            "seconds": time.perf_counter() - t0,
        }
        history.append(rec)
        bar.set_postfix(fvu=f"{rec['train_fvu']:.4f}", dead=f"{rec['dead_now']:.3f}")
        if should_stop is not None and epoch + 1 < tcfg.epochs and should_stop():
            bar.close()
            raise TrainingStopped(epoch + 1, tcfg.epochs)
    sae.eval()
    return SAETrainResult(
        sae=sae,
        train=measure(sae, x_all),
        heldout=measure(sae, heldout_acts) if heldout_acts is not None and len(heldout_acts) else None,
        seconds_per_epoch=t_train / max(1, tcfg.epochs),
        samples_per_second=n_steps_rows * tcfg.epochs / max(t_train, 1e-9),
        epochs=tcfg.epochs,
        history=history,
    )


@torch.no_grad()
def _keep_reserved(sae: TopKSAE, basis: torch.Tensor) -> None:
    """Decoder rows 0..r-1 = ``basis``; every other row and ``b_dec`` orthogonal to it."""
    r = len(basis)
    sae.b_dec.sub_((sae.b_dec @ basis.t()) @ basis)
    rest = sae.W_dec[r:]
    rest.sub_((rest @ basis.t()) @ basis)
    rest.div_(rest.norm(dim=1, keepdim=True).clamp_min(1e-12))
    sae.W_dec[:r] = basis


@torch.no_grad()
def _keep_reserved_grad(sae: TopKSAE, basis: torch.Tensor) -> None:
    r = len(basis)
    sae.W_dec.grad[:r] = 0.0
    g = sae.W_dec.grad[r:]
    g.sub_((g @ basis.t()) @ basis)
    sae.b_dec.grad.sub_((sae.b_dec.grad @ basis.t()) @ basis)


@torch.no_grad()
def resample_dead(
    sae: TopKSAE,
    opt: torch.optim.Optimizer,
    x_all: torch.Tensor,
    dead: torch.Tensor,
    gen: torch.Generator,
    dist: bool = False,
    mode: str = "split",
    keep: int = 0,
) -> torch.Tensor:
    """Give dead latents a new start and return their ids; reset the Adam state of all touched.

    ``split`` (default): each dead latent becomes a perturbed copy of a busy latent (drawn in
    proportion to how often it fires) and the pair share the encoder, each at half scale, so
    their summed contribution starts where the busy latent's was. The new latent begins in a
    populated region and training splits the region between the two, as in k-means
    splitting. ``residual`` (Bricken et al. 2023): point the dead latent at the residual of a
    badly reconstructed sample, at the alive latents' mean encoder norm; under TopK such a
    latent fires at full strength where it is wrong, which costs far more reconstruction
    while it learns (k=32 x 2,048, 100 epochs: see README).
    """
    dead_ids = dead.nonzero().squeeze(1)
    if len(dead_ids) == 0:
        return dead_ids
    probe = x_all[torch.randperm(len(x_all), generator=gen)[: max(16384, 4 * len(dead_ids))]]
    if mode == "split":
        counts = torch.bincount(sae.encode(probe).top_indices.flatten(), minlength=sae.cfg.n_latents).float()
        counts[dead] = 0
        counts[:keep] = 0  # reserved latents are never split
        n_new = min(len(dead_ids), int((counts > 0).sum()))
        src = torch.multinomial(counts / counts.sum(), n_new, replacement=False, generator=gen) if n_new else None
        if dist:  # shards see different counts: every rank takes rank 0's parents
            n_t = torch.tensor([n_new])
            torch.distributed.broadcast(n_t, src=0)
            src_t = src if torch.distributed.get_rank() == 0 and src is not None else torch.zeros(int(n_t), dtype=torch.long)
            torch.distributed.broadcast(src_t, src=0)
            n_new, src = int(n_t), src_t
        if n_new == 0:
            return dead_ids[:0]
        dead_ids = dead_ids[:n_new]
        d_noise = torch.randn(n_new, sae.cfg.d_in, generator=gen)
        e_noise = torch.randn(n_new, sae.cfg.d_in, generator=gen)
        dec = sae.W_dec[src] + 0.3 * d_noise / d_noise.norm(dim=1, keepdim=True)
        sae.W_dec[dead_ids] = dec / dec.norm(dim=1, keepdim=True)
        enc_norm = sae.W_enc[src].norm(dim=1, keepdim=True)
        sae.W_enc[src] *= 0.5
        sae.b_enc[src] *= 0.5
        sae.W_enc[dead_ids] = sae.W_enc[src] + 0.15 * enc_norm * e_noise / e_noise.norm(dim=1, keepdim=True)
        sae.b_enc[dead_ids] = sae.b_enc[src]
        touched = torch.cat([dead_ids, src])
    elif mode == "residual":
        out = sae(probe)
        resid = probe - out.recon
        loss = resid.pow(2).sum(1)
        pick = torch.multinomial(loss / loss.sum(), len(dead_ids), replacement=len(dead_ids) > len(probe), generator=gen)
        dirs = resid[pick]
        dirs = dirs / dirs.norm(dim=1, keepdim=True).clamp_min(1e-12)
        alive = ~dead
        enc_norm = float(sae.W_enc[alive].norm(dim=1).mean()) if alive.any() else 1.0
        sae.W_dec[dead_ids] = dirs
        sae.W_enc[dead_ids] = dirs * enc_norm
        sae.b_enc[dead_ids] = float(sae.b_enc[alive].mean()) if alive.any() else 0.0
        touched = dead_ids
    else:
        raise ValueError(f"unknown resampling mode {mode!r}: use 'split' or 'residual'")
    if dist:  # rank 0's choice wins; the dead mask is already identical on every rank
        for p in (sae.W_dec, sae.W_enc, sae.b_enc):
            torch.distributed.broadcast(p.data, src=0)
    for p in (sae.W_dec, sae.W_enc, sae.b_enc):
        st = opt.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in st:
                st[key][touched] = 0.0
    return dead_ids


def config_dict(cfg: SAEConfig, tcfg: SAETrainConfig) -> dict:
    return {"sae": asdict(cfg), "train": asdict(tcfg)}
