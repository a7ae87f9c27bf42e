"""Candidate latents, chosen from dev-stage data only (the test items never influence which latents
are picked), and the evidence that the SAE's baseline ``b_dec`` is the popularity concept."""

from __future__ import annotations

from typing import get_args

import numpy as np

from recsae import ConfigError
from recsae.debias.inputs import DebiasData, _gain, _list_stats
from recsae.debias.measures import BiasMeasure, PopularityBias, spearman
from recsae.kernel import Codes, SteerMode


# =============================================================================================
# 3. Candidate latents (dev stage only)
# =============================================================================================
def firing(codes: Codes, n_latents: int) -> tuple[np.ndarray, np.ndarray]:
    """(B, m) dense activations and (m,) firing rate."""
    b = codes.idx.shape[0]
    dense = np.zeros((b, n_latents), dtype=np.float32)
    np.put_along_axis(dense, codes.idx, codes.acts, axis=1)
    return dense, (dense > 0).mean(axis=0) if b else np.zeros(n_latents)


def candidate_pool(data: DebiasData, min_freq: float) -> np.ndarray:
    """Latents firing for at least ``min_freq`` of the dev-stage users ("active enough")."""
    _, freq = firing(data.select.codes, data.kernel.n_latents)
    pool = np.flatnonzero(freq >= min_freq)
    if not len(pool):
        raise ConfigError(f"no latent fires for >= {min_freq:.1%} of the dev-stage users; lower min_freq")
    return pool


class _Incremental:
    """Dev-stage state for greedy selection: current representation, per-user bias statistic
    and NDCG gain; a candidate latent only changes the rows where it fires."""

    def __init__(self, data: DebiasData, measure: BiasMeasure, strength: float, mode: SteerMode,
                 baseline: float = 0.0):
        self.data, self.measure, self.strength = data, measure, float(strength)
        if mode not in get_args(SteerMode):
            raise ConfigError(f"unknown steering mode {mode!r}; use one of {list(get_args(SteerMode))}")
        st = data.select
        self.st = st
        self.x = np.array(data.kernel.steer(st.x, st.codes, {}, mode, baseline), dtype=np.float32)
        self.w = measure.weights(st.users)
        ids, ranks = _list_stats(data, st, self.x)
        self.b = measure.per_user(ids)
        self.g = _gain(ranks, data.top_k)
        self.v0, self.n0 = float(self.w @ self.b), float(self.g.mean())
        self.act = {}

    def rows_of(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        if j not in self.act:
            hit = self.st.codes.idx == j
            rows = np.flatnonzero(hit.any(axis=1))
            self.act[j] = (rows, (self.st.codes.acts * hit).sum(axis=1)[rows])
        return self.act[j]

    def try_latent(self, j: int) -> tuple[float, float, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(bias, ndcg) after also suppressing ``j``, and the row update to apply it."""
        rows, a = self.rows_of(j)
        if not len(rows):
            return float(self.w @ self.b), float(self.g.mean()), rows, self.x[rows], self.b[rows], self.g[rows]
        xr = self.x[rows] - (self.strength * a)[:, None] * self.data.kernel.W_dec[j]
        ids, ranks = _list_stats(self.data, self.st, xr, rows=rows)
        br, gr = self.measure.per_user(ids), _gain(ranks, self.data.top_k)
        bias = float(self.w @ self.b + self.w[rows] @ (br - self.b[rows]))
        ndcg = float((self.g.sum() + (gr - self.g[rows]).sum()) / len(self.g))
        return bias, ndcg, rows, xr, br, gr

    def apply(self, rows, xr, br, gr) -> None:
        self.x[rows], self.b[rows], self.g[rows] = xr, br, gr


def latent_evidence(data: DebiasData, measure: BiasMeasure, min_freq: float = 0.005,
                    strength: float = 1.0, mode: SteerMode = "error") -> dict:
    """Per candidate latent, from dev-stage data only: why it is associated with the bias.

    * ``contrast`` = ``sum_u w_u a_uj`` with the bias' user weights: the mean activation
      (popularity) or mean activation of female minus male users (gender);
    * ``rate_contrast``: the same with firing indicators (firing rate; F - M for gender);
    * ``direct_effect`` = ``W_dec[j] . item_emb.T @ item_direction``: how much more the latent
      adds to biased items' scores than to the others (head - tail mean; F-genre - M-genre mean);
    * ``association`` = sign(bias) * contrast * direct_effect: the latent's direct contribution to
      the bias (the simple ranking);
    * ``solo_bias`` / ``solo_ndcg``: dev-stage change in the bias (sign-adjusted: negative =
      less biased) and in NDCG@k when this latent alone is suppressed.
    """
    st = data.select
    pool = candidate_pool(data, min_freq)
    dense, freq = firing(st.codes, data.kernel.n_latents)
    w = measure.weights(st.users)
    contrast = w @ dense
    rate_contrast = w @ (dense > 0).astype(np.float32)
    item_dir = data.item_emb.T @ measure.item_direction  # (d,)
    direct = data.kernel.W_dec @ item_dir
    inc = _Incremental(data, measure, strength, mode)
    sign = 1.0 if inc.v0 >= 0 else -1.0
    assoc = sign * contrast * direct
    solo_b = np.full(data.kernel.n_latents, np.nan)
    solo_n = np.full(data.kernel.n_latents, np.nan)
    for j in pool:
        bias, ndcg, *_ = inc.try_latent(int(j))
        solo_b[j] = abs(bias) - abs(inc.v0)
        solo_n[j] = ndcg - inc.n0
    mean_act = np.where(freq > 0, dense.sum(0) / np.maximum(1, (dense > 0).sum(0)), 0.0)
    order = pool[np.argsort(-assoc[pool], kind="stable")]
    return {
        "pool": pool, "association_order": order, "freq": freq, "mean_act": mean_act,
        "contrast": contrast, "rate_contrast": rate_contrast, "direct_effect": direct,
        "association": assoc, "solo_bias": solo_b, "solo_ndcg": solo_n,
        "base_select": {"bias": inc.v0, "ndcg": inc.n0},
    }


def greedy_selection(
    data: DebiasData, measure: BiasMeasure, n_max: int = 32, strength: float = 1.0, mode: SteerMode = "error",
    min_freq: float = 0.005, max_ndcg_loss: float = 0.10, pool: np.ndarray | None = None,
    baseline: float = 0.0, ndcg_ref: float | None = None,
) -> tuple[list[int], list[dict]]:
    """Forward greedy selection on dev-stage users (never the test items).

    Each step adds the candidate that leaves the lowest dev-stage |bias| when suppressed
    together with the latents already chosen (at ``strength``), among the candidates that keep
    dev NDCG@k within ``max_ndcg_loss`` (relative) of ``ndcg_ref`` (default: the starting
    point's); if none does, the one that loses least NDCG. Ties go to higher NDCG. ``baseline``:
    start from the representation with the baseline already suppressed (the combined method).
    Returns the order and a trace of the dev-stage bias and NDCG after each step.
    """
    pool = candidate_pool(data, min_freq) if pool is None else np.asarray(pool)
    inc = _Incremental(data, measure, strength, mode, baseline)
    floor = (1.0 - max_ndcg_loss) * (inc.n0 if ndcg_ref is None else ndcg_ref)
    chosen: list[int] = []
    trace: list[dict] = []
    left = [int(j) for j in pool]
    for _ in range(min(n_max, len(left))):
        best = None
        for j in left:
            bias, ndcg, *upd = inc.try_latent(j)
            key = (0, round(abs(bias), 12), -ndcg) if ndcg >= floor else (1, -ndcg, round(abs(bias), 12))
            if best is None or key < best[0]:
                best = (key, j, bias, ndcg, upd)
        _, j, bias, ndcg, upd = best
        inc.apply(*upd)
        chosen.append(j)
        left.remove(j)
        trace.append({"latent": j, "bias": bias, "ndcg": ndcg})
    return chosen, trace


def baseline_evidence(data: DebiasData, pool: np.ndarray | None = None) -> dict:
    """Why ``b_dec`` is the popularity concept (training-split popularity, dev-stage codes only).

    * Spearman correlation over all items between ``b_dec . e_i`` and item popularity, and the
      same for every candidate decoder row ``W_dec[j]`` (``pool``): the item embeddings have a
      popularity axis, so correlation alone does not single ``b_dec`` out;
    * what does is weight and universality: ``b_dec`` is in every representation at full weight;
      the popularity-aligned latents (rho > 0.5) fire for few users. Compared through the
      head-minus-tail direct effect, latents weighted by their mean dev-stage activation;
    * the head share of the ``top_k`` items with the highest ``b_dec . e_i`` (chance: the head
      fraction) and of the ``|head|`` highest.
    """
    pop = data.popularity
    measure = PopularityBias(pop)
    head = measure.head
    b = data.item_emb @ data.kernel.b_dec
    order = np.argsort(-b, kind="stable")
    rows = np.arange(data.kernel.n_latents) if pool is None else np.asarray(pool)
    rho = np.array([spearman(r, pop) for r in data.kernel.W_dec[rows] @ data.item_emb.T])
    dense, freq = firing(data.select.codes, data.kernel.n_latents)
    item_dir = data.item_emb.T @ measure.item_direction
    weighted = dense.mean(axis=0)[rows] * (data.kernel.W_dec[rows] @ item_dir)  # mean act x direct effect
    aligned = rho > 0.5
    hi, lo = (int(np.nanargmax(rho)), int(np.nanargmin(rho))) if len(rho) else (0, 0)
    xbar = data.select.x.mean(axis=0)
    cos = float(xbar @ data.kernel.b_dec / max(1e-12, float(np.linalg.norm(xbar) * np.linalg.norm(data.kernel.b_dec))))
    return {
        "spearman_bdec_popularity": spearman(b, pop),
        "head_share_top_k_by_bdec": float(head[order[: data.top_k]].mean()),
        "head_share_top_head_by_bdec": float(head[order[: int(head.sum())]].mean()),
        "head_fraction": float(head.mean()),
        "latents_compared": int(len(rho)),
        "latents_spearman_over_0_5": int(aligned.sum()),
        "latents_spearman_under_minus_0_5": int((rho < -0.5).sum()),
        "most_aligned_latent": int(rows[hi]) if len(rho) else None,
        "most_aligned_spearman": float(rho[hi]) if len(rho) else float("nan"),
        "most_aligned_firing_rate": float(freq[rows[hi]]) if len(rho) else float("nan"),
        "most_opposed_latent": int(rows[lo]) if len(rho) else None,
        "most_opposed_spearman": float(rho[lo]) if len(rho) else float("nan"),
        "aligned_latents_mean_firing_rate": float(freq[rows[aligned]].mean()) if aligned.any() else 0.0,
        "direct_effect_bdec": float(data.kernel.b_dec @ item_dir),
        "direct_effect_aligned_latents": float(weighted[aligned].sum()),
        "direct_effect_all_latents": float(weighted.sum()),
        "spearman_mean_x_popularity": spearman(data.item_emb @ xbar, pop),
        "cosine_bdec_mean_x": cos,
        "bdec_norm": float(np.linalg.norm(data.kernel.b_dec)),
        "mean_x_norm": float(np.linalg.norm(xbar)),
    }
