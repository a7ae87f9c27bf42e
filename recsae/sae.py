"""TopK sparse autoencoder (Gao et al. 2024) over a recommender's user representation.

The training-time module (torch). Serving never imports this file: it reads the same weights
with ``recsae.kernel.SAEKernel`` (NumPy). Weights are stored as safetensors + ``cfg.json``.

Shapes: ``W_enc`` and ``W_dec`` are both ``(n_latents, d_in)`` so row ``j`` of ``W_dec`` is the
direction latent ``j`` writes, and the encoder starts as exactly that matrix (the "transpose"
initialisation of the paper, in row form).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from recsae import ConfigError


@dataclass
class SAEConfig:
    """Architecture of a TopK SAE. ``n_latents = expansion * d_in``."""

    d_in: int
    expansion: int = 16
    k: int = 8
    # AuxK: a latent is dead once it has not fired for this many training samples; the
    # auxiliary loss asks the top ``aux_k`` dead latents to reconstruct the residual error.
    dead_after: int = 20_000
    aux_k: int | None = None  # default d_in // 2
    auxk_alpha: float = 1 / 32
    # How a bundle encodes at inference (``recsae.kernel``): "topk" (the trained encoder) or
    # "pursuit" (matching pursuit over the decoder). Training always uses the TopK encoder.
    encoder: str = "topk"

    @property
    def n_latents(self) -> int:
        return self.expansion * self.d_in

    def __post_init__(self) -> None:
        if self.d_in <= 0 or self.expansion <= 0:
            raise ConfigError("d_in and expansion must be positive")
        if not 0 < self.k <= self.n_latents:
            raise ConfigError(
                f"k={self.k} must be between 1 and the latent count {self.n_latents} "
                f"(= expansion {self.expansion} x d_in {self.d_in}); lower --k or raise --expansion"
            )
        if self.aux_k is None:
            self.aux_k = max(1, self.d_in // 2)


class EncoderOutput(NamedTuple):
    top_acts: Tensor
    """Activations of the k selected latents, (B, k), all >= 0."""
    top_indices: Tensor
    """Latent ids of those activations, (B, k), int64."""


class StepOutput(NamedTuple):
    top_acts: Tensor
    """Activations of the selected latents, (B, k)."""
    top_indices: Tensor
    """Latent ids of the selected latents, (B, k)."""
    fvu: float
    """Fraction of variance unexplained on this batch."""
    auxk_loss: float
    """AuxK loss on this batch (0 if no latent is dead)."""


class ForwardOutput(NamedTuple):
    recon: Tensor
    """Reconstruction of the input, (B, d_in)."""
    top_acts: Tensor
    """Activations of the selected latents, (B, k)."""
    top_indices: Tensor
    """Latent ids of the selected latents, (B, k)."""
    fvu: Tensor
    """Fraction of variance unexplained on this batch (scalar)."""
    auxk_loss: Tensor
    """AuxK loss: how well the top dead latents explain the residual (scalar, 0 if none dead)."""


class TopKSAE(nn.Module):
    def __init__(self, cfg: SAEConfig, *, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(cfg.n_latents, cfg.d_in, generator=g)
        w = w / w.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w.clone())
        self.W_enc = nn.Parameter(w.clone())
        self.b_enc = nn.Parameter(torch.zeros(cfg.n_latents))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))

    # -- core -------------------------------------------------------------------------------
    def pre_acts(self, x: Tensor) -> Tensor:
        return F.relu(F.linear(x - self.b_dec, self.W_enc, self.b_enc))

    def encode(self, x: Tensor) -> EncoderOutput:
        acts, idx = self.pre_acts(x).topk(self.cfg.k, dim=-1, sorted=False)
        return EncoderOutput(acts, idx)

    def decode(self, top_acts: Tensor, top_indices: Tensor) -> Tensor:
        # embedding_bag gathers only the k active decoder rows (and scatters only their grads).
        return F.embedding_bag(
            top_indices, self.W_dec, per_sample_weights=top_acts, mode="sum"
        ) + self.b_dec

    def forward(self, x: Tensor, dead_mask: Tensor | None = None) -> ForwardOutput:
        acts, idx = self.encode(x)
        recon = self.decode(acts, idx)
        err = recon - x
        total_var = (x - x.mean(0)).pow(2).sum()
        fvu = err.pow(2).sum() / total_var.clamp_min(1e-12)

        auxk_loss = x.new_zeros(())
        if dead_mask is not None and bool(dead_mask.any()):
            # Only the dead latents' pre-activations are needed: usually a small slice.
            dead_ids = dead_mask.nonzero().squeeze(1)
            k_aux = min(int(self.cfg.aux_k), len(dead_ids))
            dead_pre = F.relu(F.linear(x - self.b_dec, self.W_enc[dead_ids], self.b_enc[dead_ids]))
            if k_aux < len(dead_ids):  # keep each sample's top k_aux (ties at the bar all kept)
                bar = dead_pre.topk(k_aux, dim=-1, sorted=False).values.amin(-1, keepdim=True)
                dead_pre = dead_pre * (dead_pre >= bar)
            # The dead set is small, so a dense product beats embedding_bag (whose backward sorts).
            aux_recon = dead_pre @ self.W_dec[dead_ids]
            # Residual to explain: stop-gradient through the main reconstruction.
            residual = (x - recon).detach()
            # Normalised by the residual's own variance (an FVU of the residual), so the signal
            # does not vanish as the main reconstruction improves.
            resid_var = (residual - residual.mean(0)).pow(2).sum()
            auxk_loss = (aux_recon - residual).pow(2).sum() / resid_var.clamp_min(1e-12)
        return ForwardOutput(recon, acts, idx, fvu, auxk_loss)

    # -- training step --------------------------------------------------------------------
    @torch.no_grad()
    def backward_step(self, x: Tensor, dead_ids: Tensor, auxk_alpha: float) -> StepOutput:
        """Gradients of ``fvu + auxk_alpha * auxk_loss`` (as ``forward`` defines them) into ``.grad``.

        Written out by hand because at d=64 autograd's bookkeeping and ``embedding_bag``'s
        sorting backward cost more than the arithmetic: only the k active rows of each matrix
        get gradient per sample, gathered and index-added here without a dense (B, n_latents)
        tensor. ``tests/unit/test_sae.py`` checks these against autograd through ``forward``.
        """
        W_enc, W_dec, b_enc, b_dec = self.W_enc, self.W_dec, self.b_enc, self.b_dec
        B, d = x.shape
        xc = x - b_dec
        vals, idx = torch.addmm(b_enc, xc, W_enc.t()).topk(self.cfg.k, dim=-1, sorted=False)
        acts = vals.clamp_min(0.0)
        rows = W_dec.index_select(0, idx.reshape(-1)).view(B, self.cfg.k, d)  # (B, k, d); 6x faster than W_dec[idx]
        err = torch.bmm(acts.unsqueeze(1), rows).squeeze(1) + b_dec - x
        total_var = float((x - x.mean(0)).pow(2).sum().clamp_min(1e-12))
        fvu = float(err.pow(2).sum()) / total_var
        g = err * (2.0 / total_var)  # d fvu / d recon
        flat = idx.reshape(-1)
        g_acts = torch.bmm(rows, g.unsqueeze(-1)).squeeze(-1) * (vals > 0)
        grad_W_dec = torch.zeros_like(W_dec).index_add_(0, flat, (acts.unsqueeze(-1) * g.unsqueeze(1)).reshape(-1, d))
        grad_W_enc = torch.zeros_like(W_enc).index_add_(0, flat, (g_acts.unsqueeze(-1) * xc.unsqueeze(1)).reshape(-1, d))
        grad_b_enc = torch.zeros_like(b_enc).index_add_(0, flat, g_acts.reshape(-1))
        # b_dec is added to the reconstruction and subtracted before the encoder.
        grad_b_dec = g.sum(0) - grad_b_enc @ W_enc

        auxk = 0.0
        if len(dead_ids) and auxk_alpha:
            k_aux = min(int(self.cfg.aux_k), len(dead_ids))
            We, Wd = W_enc[dead_ids], W_dec[dead_ids]
            dead_pre = torch.addmm(b_enc[dead_ids], xc, We.t()).clamp_min_(0.0)
            if k_aux < len(dead_ids):
                bar = dead_pre.topk(k_aux, dim=-1, sorted=False).values.amin(-1, keepdim=True)
                dead_pre = dead_pre * (dead_pre >= bar)
            residual = -err
            resid_var = float((residual - residual.mean(0)).pow(2).sum().clamp_min(1e-12))
            aux_err = dead_pre @ Wd - residual
            auxk = float(aux_err.pow(2).sum()) / resid_var
            ga = aux_err * (2.0 * auxk_alpha / resid_var)
            g_pre = (ga @ Wd.t()) * (dead_pre > 0)
            grad_W_dec.index_add_(0, dead_ids, dead_pre.t() @ ga)
            grad_W_enc.index_add_(0, dead_ids, g_pre.t() @ xc)
            g_b = g_pre.sum(0)
            grad_b_enc.index_add_(0, dead_ids, g_b)
            grad_b_dec -= g_b @ We
        for p, grad in ((W_enc, grad_W_enc), (W_dec, grad_W_dec), (b_enc, grad_b_enc), (b_dec, grad_b_dec)):
            p.grad = grad
        return StepOutput(acts, idx, fvu, auxk)

    # -- decoder norm constraint ------------------------------------------------------------
    @torch.no_grad()
    def set_decoder_norm_to_unit_norm(self) -> None:
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)

    @torch.no_grad()
    def remove_gradient_parallel_to_decoder_directions(self) -> None:
        """Keep Adam from fighting the unit-norm projection (Bricken et al. 2023)."""
        if self.W_dec.grad is None:
            return
        parallel = (self.W_dec.grad * self.W_dec).sum(dim=1, keepdim=True)
        self.W_dec.grad -= parallel * self.W_dec

    # -- persistence ------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.detach().contiguous() for k, v in self.state_dict().items()},
            str(path / "sae.safetensors"),
        )
        (path / "cfg.json").write_text(json.dumps(asdict(self.cfg), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "TopKSAE":
        path = Path(path)
        cfg = SAEConfig(**json.loads((path / "cfg.json").read_text()))
        sae = cls(cfg)
        sae.load_state_dict(load_file(str(path / "sae.safetensors")))
        return sae
