"""Which history items switched each concept on: attribution of SAE activations to history positions.

Sequential bundles (the encoder reads the history): **leave-one-out through the encoder**. For
each item the model reads (the last ``max_len``), the history without that item is encoded in
the same ONNX call as the others and SAE-encoded; an item's attribution to concept j is
``z_j(history) - z_j(history without it)``, with ``z_j`` the activation the service computes (0
when j leaves the top-k). It is causal for the served model, needs no gradients (the service has
no torch) and costs one batched encoder call of at most ``max_len`` rows
(``benchmarks/attribution.py`` measures the cost and checks that removing the top-attributed
items lowers an activation more than removing random ones).

User-id bundles (BPR-MF, LightGCN): the user vector is a learned embedding, not a function of
the history, so removing an item changes nothing and leave-one-out would say "no item matters".
There the attribution is an **alignment**, not a cause: ``W_enc[j] . e_i`` (how strongly item i's
embedding points along concept j's encoder direction) scaled so that a history's positive parts
sum to the activation; the response names the method so the page can say so.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from recsae.kernel import Codes

LOO = "leave-one-out"
ALIGN = "encoder-alignment"


def _activation_of(codes: Codes, latents: np.ndarray) -> np.ndarray:
    """(B, len(latents)) activation of each latent per row (0 where it is not in the row's top-k)."""
    out = np.zeros((codes.idx.shape[0], len(latents)), dtype=np.float64)
    for c, j in enumerate(latents.tolist()):
        hit = codes.idx == j
        out[:, c] = np.where(hit, codes.acts, 0.0).sum(axis=1)
    return out


def attribute(engine: Any, history: np.ndarray, user: int | None = None) -> dict[str, Any]:
    """Attribution of the active concepts of ``history`` (catalogue indices, oldest first).

    Returns ``method``, ``window`` (positions the model reads), ``latents`` and ``activations``
    (the active concepts, strongest first), ``attr`` ((n_history, n_active): per position,
    oldest first; 0 outside the window), ``in_window`` and ``seconds``.
    """
    t0 = time.perf_counter()
    sae = engine.sae
    history = np.asarray(history, dtype=np.int64)
    n = len(history)
    if engine.input_kind == "history":
        x = engine.encode_histories([history])
    else:
        x = engine.encode_users(np.array([user], dtype=np.int64))
    codes = sae.encode(x)
    firing = codes.acts[0] > 0
    latents, acts = codes.idx[0][firing].astype(np.int64), codes.acts[0][firing].astype(np.float64)
    window = min(n, engine.max_len) if engine.input_kind == "history" else n
    attr = np.zeros((n, len(latents)), dtype=np.float64)
    in_window = np.zeros(n, dtype=bool)
    in_window[n - window:] = True
    if window and len(latents):
        positions = np.arange(n - window, n)
        if engine.input_kind == "history":
            method = LOO
            variants = [np.delete(history, p) for p in positions.tolist()]
            without = _activation_of(sae.encode(engine.encode_histories(variants)), latents)
            attr[positions] = acts[None, :] - without
        else:
            method = ALIGN
            align = engine.item_emb[history[positions]].astype(np.float64) @ sae.W_enc[latents].T.astype(np.float64)
            pos = np.clip(align, 0.0, None).sum(axis=0)
            attr[positions] = align * np.divide(acts, pos, out=np.zeros_like(acts), where=pos > 0)[None, :]
    else:
        method = LOO if engine.input_kind == "history" else ALIGN
    return {"method": method, "window": int(window), "latents": latents, "activations": acts, "attr": attr,
            "in_window": in_window, "seconds": time.perf_counter() - t0}


MIN_SHARE = 0.01
"""An item is listed as driving a concept when removing it lowers the concept by at least 1% of
its activation: below that, a 0.003 out of 3.4 reads as a cause on the page and is noise."""


def top_positions(attr_col: np.ndarray, m: int, activation: float = 0.0) -> np.ndarray:
    """The ``m`` positions with the largest positive attribution (largest first), at least
    ``MIN_SHARE`` of ``activation``."""
    order = np.argsort(-attr_col, kind="stable")[:m]
    return order[attr_col[order] > max(0.0, MIN_SHARE * activation)]
