"""The one numerical kernel: SAE encode, suppression, scoring, top-k and concept contributions.

NumPy only. The offline evaluation (fidelity, de-bias sweeps) and the service both call these
functions, so a served answer equals the offline one by construction.

Decomposition used by explanations, for a user representation ``x`` and item embedding ``e_i``::

    score_i = x . e_i = b_dec . e_i  +  sum_j z_j (W_dec[j] . e_i)  +  (x - x_hat) . e_i
                        \\ bias /      \\ concept contributions /     \\ error term /

Error-preserving suppression removes only the suppressed latents' terms, so suppressing
nothing returns exactly the original model's scores.

The bias term is a concept too, the *baseline*: a TopK SAE absorbs what every input shares into
``b_dec`` (it is initialised at, and stays near, the data mean) and never spends a sparse latent
on it. In a recommender that shared part is chiefly item popularity, so ``steer(baseline=s)``
(removing ``s * b_dec``) is how popularity is suppressed (docs/DEBIAS.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal, Mapping, NamedTuple, get_args

import numpy as np

from recsae import BundleError, ConfigError

SteerMode = Literal["error", "reconstruction"]
Encoder = Literal["topk", "pursuit"]
ENCODERS = get_args(Encoder)


class Codes(NamedTuple):
    acts: np.ndarray
    """(B, k) float32 activations, sorted descending per row; zeros mean 'not firing'."""
    idx: np.ndarray
    """(B, k) int64 latent ids matching ``acts``."""


class Explanation(NamedTuple):
    contributions: np.ndarray
    """(B, k, n) contribution of each active latent (as in ``Codes``) to each listed item."""
    bias: np.ndarray
    """(B, n) the decoder bias' share of each item's score."""
    error: np.ndarray
    """(B, n) what the SAE does not reconstruct; bias + contributions + error = score."""


ENCODE_CHUNK = 4096
"""Rows encoded at once; larger batches are encoded in pieces (same result, bounded memory)."""


@dataclass(frozen=True)
class SAEKernel:
    W_enc: np.ndarray  # (m, d)
    b_enc: np.ndarray  # (m,)
    W_dec: np.ndarray  # (m, d)
    b_dec: np.ndarray  # (d,)
    k: int
    # "topk": the trained encoder (a matrix product and a top-k); "pursuit": the k latents and
    # their activations chosen by non-negative orthogonal matching pursuit over the decoder (the
    # same dictionary, a better sparse code for it; see ``pursuit``)
    encoder: Encoder = "topk"

    def __post_init__(self) -> None:
        if self.encoder not in ENCODERS:
            raise ConfigError(f"unknown SAE encoder {self.encoder!r}; choose one of {list(ENCODERS)}")

    @cached_property
    def _W_dec64(self) -> np.ndarray:
        """The decoder in float64 for ``pursuit``'s solves, converted once per kernel (not per request)."""
        return self.W_dec.astype(np.float64)

    @cached_property
    def _W_enc_t(self) -> np.ndarray:
        """The encoder transposed and contiguous: ``x @ W_enc.T`` through a strided view is 3x
        slower at serving batch sizes (8 rows: 47 -> 14 us)."""
        return np.ascontiguousarray(self.W_enc.T)

    @property
    def n_latents(self) -> int:
        return self.W_dec.shape[0]

    @property
    def d_in(self) -> int:
        return self.W_dec.shape[1]

    @classmethod
    def load(cls, folder: str | Path) -> "SAEKernel":
        """Read ``sae.safetensors`` + ``cfg.json`` as written by ``recsae.sae.TopKSAE.save``."""
        from safetensors.numpy import load_file

        folder = Path(folder)
        try:
            cfg = json.loads((folder / "cfg.json").read_text())
            t = load_file(str(folder / "sae.safetensors"))
        except (OSError, ValueError) as e:
            raise BundleError(f"cannot read SAE weights in {folder}: {e}") from e
        f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
        return cls(f32(t["W_enc"]), f32(t["b_enc"]), f32(t["W_dec"]), f32(t["b_dec"]), int(cfg["k"]),
                   cfg.get("encoder", "topk"))

    # -- encode / decode ----------------------------------------------------------------------
    def encode(self, x: np.ndarray) -> Codes:
        x = _rows(x)
        if len(x) > ENCODE_CHUNK:  # offline batches: (B, n_latents) pre-activations and indices add up
            parts = [self.encode(x[s : s + ENCODE_CHUNK]) for s in range(0, len(x), ENCODE_CHUNK)]
            return Codes(np.concatenate([p.acts for p in parts]), np.concatenate([p.idx for p in parts]))
        if self.encoder == "pursuit":
            return self.pursuit(x)
        pre = (x - self.b_dec) @ self._W_enc_t + self.b_enc
        idx, acts = largest_first(pre, self.k)
        return Codes(np.maximum(acts, 0.0, out=acts).astype(np.float32, copy=False), idx)

    def pursuit(self, x: np.ndarray) -> Codes:
        """Non-negative orthogonal matching pursuit: k times, add the latent whose decoder row best
        matches what is still unexplained, then refit all chosen activations by least squares
        (negative ones set to 0). The TopK encoder is one linear guess of the code; this searches
        for it, and keeps more of the model (README: at k=8 on ml-100k, held-out FVU 0.036 -> 0.026,
        NDCG@10 kept 97.3% -> 98.5%) for k small solves per row."""
        B, k = len(x), self.k
        W = self._W_dec64
        target = x.astype(np.float64) - self.b_dec
        resid = target.copy()
        idx = np.zeros((B, k), dtype=np.int64)
        acts = np.zeros((B, k))
        rows = np.arange(B)
        for t in range(k):
            corr = resid @ W.T
            if t:
                corr[rows[:, None], idx[:, :t]] = -np.inf  # each latent once
            idx[:, t] = corr.argmax(1)
            A = W[idx[:, : t + 1]]  # (B, t+1, d)
            gram = A @ A.transpose(0, 2, 1) + 1e-9 * np.eye(t + 1)
            sol = np.linalg.solve(gram, (A @ target[:, :, None]))[..., 0]
            acts[:, : t + 1] = np.maximum(sol, 0.0)
            resid = target - np.einsum("bt,btd->bd", acts[:, : t + 1], A)
        order = np.argsort(-acts, axis=1, kind="stable")
        return Codes(np.take_along_axis(acts, order, 1).astype(np.float32), np.take_along_axis(idx, order, 1))

    def decode(self, codes: Codes) -> np.ndarray:
        return np.einsum("bk,bkd->bd", codes.acts, self.W_dec[codes.idx]) + self.b_dec

    # -- steering -----------------------------------------------------------------------------
    def suppression_weights(self, codes: Codes, suppress: Mapping[int, float]) -> np.ndarray:
        """(B, k) strength in [0, 1] with which each active latent is suppressed."""
        w = np.zeros(codes.idx.shape, dtype=np.float32)
        for latent, strength in suppress.items():
            if not 0.0 <= strength <= 1.0:
                raise ConfigError(f"suppression strength for latent {latent} must be in [0, 1]")
            w[codes.idx == latent] = strength
        return w

    def steer(
        self,
        x: np.ndarray,
        codes: Codes,
        suppress: Mapping[int, float] | None = None,
        mode: SteerMode = "error",
        baseline: float = 0.0,
    ) -> np.ndarray:
        """The representation with the given latents (and the baseline) suppressed.

        ``error`` (default): x - sum_j s_j z_j W_dec[j] - baseline * b_dec; nothing suppressed ->
        x unchanged. ``reconstruction`` (the paper's): decode with z_j scaled by (1 - s_j) and
        b_dec by (1 - baseline); the SAE's reconstruction error is dropped even when nothing is
        suppressed. ``baseline`` in [0, 1] is the strength with which ``b_dec`` — what every user
        shares, in a recommender chiefly popularity — is removed.
        """
        return self.steer_weighted(x, codes, self.suppression_weights(codes, suppress or {}), mode, baseline)

    def steer_weighted(
        self, x: np.ndarray, codes: Codes, w: np.ndarray, mode: SteerMode = "error", baseline: float = 0.0
    ) -> np.ndarray:
        """``steer`` with the (B, k) weights of ``suppression_weights`` already computed (the
        service computes them once per request and hands them to the explanation too)."""
        check_baseline(baseline)
        x = _rows(x)
        if mode == "error":
            if w.any():
                x = x - np.einsum("bk,bkd->bd", codes.acts * w, self.W_dec[codes.idx])
            return x - np.float32(baseline) * self.b_dec if baseline else x
        if mode == "reconstruction":
            recon = self.decode(Codes(codes.acts * (1.0 - w), codes.idx))
            return recon - np.float32(baseline) * self.b_dec if baseline else recon
        raise ConfigError(f"unknown steering mode {mode!r}; use 'error' or 'reconstruction'")

    # -- explanation --------------------------------------------------------------------------
    def explain(self, x: np.ndarray, codes: Codes, item_vectors: np.ndarray,
                baseline: float | np.ndarray = 0.0) -> Explanation:
        """Split the scores of listed items into bias, per-latent contributions and error.

        ``item_vectors`` is (B, n, d): the embeddings of the items recommended to each row.
        ``baseline``: the strength with which ``x`` was steered away from ``b_dec`` (one for all
        rows, or (B,) one per row: the service explains a batch of requests in one call); the
        bias term is then (1 - baseline) b_dec . e_i, so the error term stays the SAE's own.
        Cost is O(B k n d) — independent of the catalogue size.
        """
        x = _rows(x)
        base = np.asarray(baseline, dtype=np.float64)
        baselines = base.ravel().tolist()
        for b in baselines:
            check_baseline(b)
        if not any(baselines):
            b_dec = self.b_dec
        elif base.ndim == 0:
            b_dec = self.b_dec * np.float32(1.0 - base)
        else:  # (B, d): each row's own steered bias
            b_dec = self.b_dec * (1.0 - base).astype(np.float32)[:, None]
        item_vectors = np.asarray(item_vectors, dtype=np.float32)
        dirs = self.W_dec[codes.idx]  # (B, k, d)
        # batched matmuls, not einsum: at serving sizes (B=1, k=8, n=10) einsum's set-up is
        # most of the cost (35 -> 19 us per call)
        contrib = codes.acts[:, :, None] * (dirs @ item_vectors.transpose(0, 2, 1))  # (B, k, n)
        recon = (codes.acts[:, None, :] @ dirs)[:, 0] + b_dec
        bias = item_vectors @ b_dec if b_dec.ndim == 1 else (item_vectors @ b_dec[:, :, None])[:, :, 0]
        error = (item_vectors @ (x - recon)[:, :, None])[:, :, 0]
        return Explanation(contrib.astype(np.float32, copy=False), bias, error)


def _rows(x: np.ndarray) -> np.ndarray:
    """``x`` as float32 rows, without the calls when it already is (each ~1-2 us: the
    service's batches of one pass through several of these)."""
    if isinstance(x, np.ndarray) and x.ndim == 2 and x.dtype == np.float32:
        return x
    return np.atleast_2d(np.asarray(x, dtype=np.float32))


def largest_first(pre: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` largest columns, largest first, ties to the lower column: (int64 indices,
    values), both ``(B, k)``.

    ``k`` passes of ``argmax``: for a TopK SAE's small k this beats ``argpartition`` + a sort of
    the k at every batch size measured (1,024 latents, k=8: 8 rows 24 vs 83 us, 4,096 rows 7 vs
    42 ms), and it breaks ties the same way in any batch. Up to 4 rows go row by row on scalars
    (1 row: 6 us), where the vectorised passes' fancy indexing costs more than it saves."""
    B = len(pre)
    p = np.array(pre, dtype=np.float32 if pre.dtype == np.float32 else np.float64)  # a copy, overwritten
    idx, vals = np.empty((B, k), dtype=np.int64), np.empty((B, k), dtype=p.dtype)
    if B <= 4:
        for r in range(B):
            row, ids, vs = p[r], idx[r], vals[r]
            for t in range(k):
                j = int(row.argmax())
                ids[t], vs[t], row[j] = j, row[j], -np.inf
        return idx, vals
    rows = np.arange(B)
    for t in range(k):
        j = p.argmax(axis=1)
        idx[:, t], vals[:, t] = j, p[rows, j]
        p[rows, j] = -np.inf
    return idx, vals


def check_baseline(strength: float) -> None:
    """Baseline suppression strengths live in [0, 1] (NaN is refused too)."""
    if not 0.0 <= strength <= 1.0:
        raise ConfigError(f"baseline suppression strength must be in [0, 1], not {strength}")


def top_items(
    scores: np.ndarray, k: int, exclude: list[np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k items per row with ``argpartition`` (O(n), not a full sort), best first.

    ``exclude[b]`` lists item ids that must not be recommended to row ``b`` (seen items). The
    scores array is not modified. Ties are broken by lower item id, deterministically.
    """
    scores = np.atleast_2d(scores)
    b, n = scores.shape
    if exclude is not None and any(len(e) for e in exclude):
        scores = scores.copy()
        for r, e in enumerate(exclude):
            if len(e):
                scores[r, e] = -np.inf
    k = min(k, n)
    if n >= _FAST_TOPK_MIN and k < n:
        fast = [_candidates(row, k) for row in scores]
        if all(c is not None for c in fast):
            return _top_of_candidates(scores, fast, k)
    if k < n:
        return _exact_top(scores, k)
    part = np.tile(np.arange(n), (b, 1))
    order = np.lexsort((part, -scores), axis=1)
    ids = np.take_along_axis(part, order, axis=1)
    return ids, np.take_along_axis(scores, ids, axis=1)


def _exact_top(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best k (< n) of each row: score descending, ties by lower id, NaN after everything
    (-inf included), NaNs by lower id. A partition finds each row's k-th best; every item at
    least that good is sorted, so ties straddling the k-th place are cut by id (one argpartition
    cut them arbitrarily)."""
    s = np.ascontiguousarray(scores)
    b = s.shape[0]
    kth = -np.partition(-s, k - 1, axis=1)[:, k - 1]  # NaN sorts last: NaN only if < k non-NaN
    short = np.isnan(kth)
    keep = s >= np.where(short, np.inf, kth)[:, None]
    if short.any():  # every non-NaN item, then the lowest-id NaNs up to k
        nan = np.isnan(s[short])
        need = k - (~nan).sum(axis=1)
        keep[short] = ~nan | (np.cumsum(nan, axis=1) <= need[:, None])
    rows, cols = np.nonzero(keep)
    vals = s[rows, cols]
    order = np.lexsort((cols, -vals, rows))  # by row, best first, ties by id; NaN last
    counts = np.bincount(rows, minlength=b)
    pick = order[(np.cumsum(counts) - counts)[:, None] + np.arange(k)]
    return cols[pick], vals[pick]


_FAST_TOPK_MIN = 16384
"""From this many items on, ``top_items`` prunes with block maxima instead of one argpartition
over the whole row (1M items: ~0.5 ms instead of ~10 ms)."""


def _candidates(row: np.ndarray, k: int) -> np.ndarray | None:
    """Ids of every item scoring >= a lower bound on the k-th best score: the k-th largest of
    the block maxima (k blocks each hold an item at least that good). Ties at the bound are all
    kept, so the exact top-k with its tie-break is among them. None: cannot prune (NaN, k too
    large for the blocks)."""
    n = row.shape[0]
    block = max(64, min(1024, n // (8 * k)))
    m = n // block
    if m < 2 * k:
        return None
    maxima = row[: m * block].reshape(m, block).max(axis=1)
    bound = np.partition(maxima, m - k)[m - k]
    if np.isnan(bound) or bound == np.inf:
        return None
    cand = np.flatnonzero(row >= bound)
    return cand if len(cand) >= k else None


def _top_of_candidates(scores: np.ndarray, cands: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.empty((scores.shape[0], k), dtype=np.int64)
    for r, c in enumerate(cands):
        sc = scores[r, c]
        order = np.lexsort((c, -sc))[:k]  # best first, ties by lower item id
        ids[r] = c[order]
    return ids, np.take_along_axis(scores, ids, axis=1)


SCORE_TILE = 1 << 17
"""Scores per block of ``score_top_k`` (512 KiB of float32), written by the product and
thresholded while in cache: blocks of 64k items for one user, 16k (``_MIN_BLOCK``) from 8 users
on. At 1M items and one user, 64k-item blocks beat 16k (more blocks, more per-block overhead)
and 256k (the tile falls out of cache) by ~1 ms; 8-32 users took the same time with 8k-64k."""
_MIN_BLOCK = 16384
_ROWS = 1024
"""Rows scored together at most (a tile of 16k items x 1024 rows is 64 MiB)."""
_SEED = 2048
"""Items whose exact top-k gives ``score_top_k`` its first per-row threshold."""


def score_top_k(
    X: np.ndarray, item_emb: np.ndarray, k: int, exclude: list[np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``top_items(X @ item_emb.T, k, exclude)`` without writing the (B, n_items) score matrix.

    The catalogue is scored one block of items at a time; a row's k-th best so far is its
    threshold, and of each later block only the items that beat it (one compare per block) are
    merged in. An item scoring exactly the threshold loses its tie to the k already kept (they
    have lower ids), so the answer is the exact one: same ids, same order, same scores.

    Layout: a row-major ``item_emb`` is scored as ``E_block @ X.T`` (at 1M items a batch of 8
    users costs ~2x one user; ``X @ E.T`` from column-major items ~4x), a column-major one as
    ``X @ E.T_block`` (for one user numpy's matrix-vector product). Row-major, one row is padded
    to two, so every row's scores are the BLAS matrix product's and do not depend on the batch;
    for one row they can differ in the last bit from numpy's ``x @ E.T`` (a matrix-vector
    product), which ``top_items(x @ E.T, ...)`` would rank. Other dtypes, small catalogues
    (< 16k items) and k > 1024 take ``top_items`` over the whole product.
    """
    X = np.atleast_2d(np.asarray(X))
    n, b = item_emb.shape[0], X.shape[0]
    if b > _ROWS:  # offline batches: in even parts of at most _ROWS rows (bounded tiles)
        parts = np.array_split(np.arange(b), -(-b // _ROWS))
        got = [score_top_k(X[p], item_emb, k, [exclude[i] for i in p] if exclude is not None else None) for p in parts]
        return np.concatenate([g[0] for g in got]), np.concatenate([g[1] for g in got])
    k = min(k, n)
    if n < _FAST_TOPK_MIN or not 0 < k <= _SEED // 2 or b == 0 or X.dtype != np.float32 or item_emb.dtype != np.float32:
        return top_items(_dense(X, item_emb), k, exclude)
    tiles = _Tiles(X, item_emb)
    excluded = _excluded(exclude, n, tiles.blocks)
    kept: _Kept | None = None
    for (s, e), (ex_rows, ex_cols) in zip(tiles.blocks, excluded):
        S = tiles.score(s, e)
        tiles.set(ex_rows, ex_cols, -np.inf)
        start = 0
        if kept is None:
            start = min(_SEED, e)
            kept = _Kept(*_exact_top(S[:, :start], k))
        rows, cols, vals = tiles.above(kept.thr, start)
        if len(rows):
            kept.add(rows, cols + s, vals)
    assert kept is not None
    kept.flush()
    if kept.late.any():  # NaN-scored rows: all rows scored whole (the same products, so the same values)
        rows = np.flatnonzero(kept.late)
        sub = [exclude[r] for r in rows] if exclude is not None else None
        kept.ids[rows], kept.sc[rows] = top_items(_dense(X, item_emb)[rows], k, sub)
    return kept.ids, kept.sc


class _Kept:
    """Each row's best k so far (best first), its threshold (the k-th best score) and the
    candidates that beat it, merged in once there are about k a row (merging after every block
    cost more than the stale threshold lets through)."""

    MERGE_AT = 1.0
    """Candidates per row (times k) that trigger a merge."""

    def __init__(self, ids: np.ndarray, sc: np.ndarray):
        self.ids, self.sc, self.k = ids, sc, ids.shape[1]
        # fewer than k non-NaN seed scores: no threshold, the row is scored whole at the end
        self.late = np.isnan(sc[:, -1])
        self.pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.n_pending = 0
        self._threshold()

    def _threshold(self) -> None:
        self.thr = self.sc[:, -1].copy()
        self.thr[self.late] = np.inf

    def add(self, rows: np.ndarray, ids: np.ndarray, vals: np.ndarray) -> None:
        self.pending.append((rows, ids, vals))
        self.n_pending += len(rows)
        if self.n_pending >= self.MERGE_AT * self.ids.size:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            rows, ids, vals = (np.concatenate(p) for p in zip(*self.pending))
            self.pending, self.n_pending = [], 0
            _merge(self.ids, self.sc, rows, ids, vals, self.k)
            self._threshold()


def _blocks(n: int, block: int) -> list[tuple[int, int]]:
    """[start, end) of each block; the last one absorbs a remainder shorter than a block (a small
    matrix product may take another BLAS code path, with other rounding)."""
    starts = list(range(0, max(n - block, 0) + 1, block)) if n >= 2 * block else [0]
    return [(s, starts[i + 1] if i + 1 < len(starts) else n) for i, s in enumerate(starts)]


class _Tiles:
    """Scores of a block of items for all rows, into one reused buffer (``score``), and the
    items of the last block that beat each row's threshold (``above``). Both work in the
    product's own layout: a row-major product's tile is (w, B'), compared as rows of ~512
    (short rows make numpy's compare ~3x slower), and the bool mask is scanned 512 bytes, then
    8 bytes at a time (``np.nonzero`` on the whole mask was most of a block's time)."""

    def __init__(self, X: np.ndarray, E: np.ndarray):
        self.b = len(X)
        self.rowmajor = not E.flags.f_contiguous
        self.E = np.ascontiguousarray(E) if self.rowmajor else E
        if self.rowmajor:  # (w, B') tiles; one row is padded to two: a matrix-matrix product
            self.width = max(self.b, 2)
            self.XT = np.ascontiguousarray(np.concatenate([X, X[:1]]).T if self.b == 1 else X.T)
        else:
            self.width = self.b
            self.X, self.ET = X, E.T
        block = max(_MIN_BLOCK, 1 << ((SCORE_TILE // self.width).bit_length() - 1))
        self.blocks = _blocks(E.shape[0], block)
        wmax = max(e - s for s, e in self.blocks)
        size = self.width * wmax
        self.buf = np.empty(size, np.float32)
        self.maskbuf = np.zeros(-(-size // 512) * 512, bool)  # whole 512-byte groups; the rest stays False
        self.w = 0

    def score(self, s: int, e: int) -> np.ndarray:
        """(B, e - s) scores of items s..e, a view (valid until the next call)."""
        self.w = w = e - s
        out = self.buf[: w * self.width]
        if self.rowmajor:
            np.matmul(self.E[s:e], self.XT, out=out.reshape(w, self.width))
            return out.reshape(w, self.width)[:, : self.b].T
        np.matmul(self.X, self.ET[:, s:e], out=out.reshape(self.b, w))
        return out.reshape(self.b, w)

    def _flat(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return cols * self.width + rows if self.rowmajor else rows * self.w + cols

    def set(self, rows: np.ndarray, cols: np.ndarray, value: float) -> None:
        """Scores (rows[i], cols[i]) of the last block := value (one flat assignment)."""
        if len(rows):
            self.buf[self._flat(rows, cols)] = value

    def above(self, thr: np.ndarray, start: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, columns, scores) of the last block's scores > ``thr`` (per row), from column
        ``start``."""
        w, size = self.w, self.w * self.width
        tile, mask = self.buf[:size], self.maskbuf[:size]
        if self.rowmajor and self.b == 1:  # both columns hold the row's scores: one scalar compare
            np.greater(tile, thr[0], out=mask)
            mask[: start * self.width] = False
        elif self.rowmajor:
            g = 1 << max(0, min((512 // self.width).bit_length() - 1, (w & -w).bit_length() - 1))
            np.greater(tile.reshape(w // g, g * self.width), np.tile(thr, g), out=mask.reshape(w // g, g * self.width))
            mask[: start * self.width] = False
        else:
            np.greater(tile.reshape(self.b, w), thr[:, None], out=mask.reshape(self.b, w))
            mask.reshape(self.b, w)[:, :start] = False
        words = self.maskbuf[: -(-size // 512) * 512].view(np.uint64)
        hot = np.flatnonzero(words.reshape(-1, 64).max(axis=1))
        if not len(hot):
            return hot, hot, self.buf[:0]
        words = (hot[:, None] * 64 + np.arange(64)).ravel()
        words = words[self.maskbuf.view(np.uint64)[words] != 0]
        flat = (words[:, None] * 8 + np.arange(8)).ravel()
        flat = flat[self.maskbuf[flat]]
        if not self.rowmajor:
            rows, cols = np.divmod(flat, w)
            return rows, cols, self.buf[flat]
        cols, rows = np.divmod(flat, self.width)
        if self.b == 1:  # its copy in the padding column (not excluded) is not a hit
            flat, cols = flat[rows == 0], cols[rows == 0]
            rows = np.zeros(len(cols), np.int64)
        return rows, cols, self.buf[flat]


def _excluded(exclude: list[np.ndarray] | None, n: int, blocks: list[tuple[int, int]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per block, the (rows, ids - block start) of its excluded items: all rows' (row, id) pairs
    sorted by id once, a block's are one slice."""
    lists = [np.asarray(e, dtype=np.int64).ravel() for e in exclude] if exclude is not None else []
    ids = np.concatenate(lists) if lists else np.zeros(0, np.int64)
    rows = np.repeat(np.arange(len(lists)), [len(e) for e in lists])
    if len(ids) and (ids.max() >= n or ids.min() < -n):
        raise IndexError(f"excluded item id out of range for {n} items")
    ids = np.where(ids < 0, ids + n, ids)  # as ``scores[row, ids]`` reads negative ids
    order = np.argsort(ids, kind="stable")
    ids, rows = ids[order], rows[order]
    cut = np.searchsorted(ids, [s for s, _ in blocks] + [n]).tolist()
    return [(rows[cut[i] : cut[i + 1]], ids[cut[i] : cut[i + 1]] - s) for i, (s, _) in enumerate(blocks)]


def _merge(top_id: np.ndarray, top_sc: np.ndarray, rows: np.ndarray, ids: np.ndarray, vals: np.ndarray, k: int) -> None:
    """Fold candidates (all with higher ids than the kept ones) into each row's kept best k."""
    per_row = np.bincount(rows, minlength=len(top_id))
    hit = np.flatnonzero(per_row)
    R = np.concatenate([np.repeat(hit, k), rows])
    I = np.concatenate([top_id[hit].ravel(), ids])  # noqa: E741
    V = np.concatenate([top_sc[hit].ravel(), vals])
    order = np.lexsort((I, -V, R))
    counts = per_row[hit] + k
    pick = order[(np.cumsum(counts) - counts)[:, None] + np.arange(k)]
    top_id[hit], top_sc[hit] = I[pick], V[pick]


def _dense(X: np.ndarray, E: np.ndarray) -> np.ndarray:
    """All (B, n) scores ``X @ E.T``; of row-major items as ``E @ X.T`` (one row padded to two),
    the product of ``score_top_k``'s blocks, so the same values (and the faster product)."""
    if E.flags.f_contiguous or not len(X) or X.dtype != np.float32 or E.dtype != np.float32:
        return X @ E.T
    XT = np.ascontiguousarray(np.concatenate([X, X]).T if len(X) == 1 else X.T)
    return np.ascontiguousarray((np.ascontiguousarray(E) @ XT)[:, : len(X)].T)


def recommend(
    sae: SAEKernel,
    x: np.ndarray,
    item_emb: np.ndarray,
    k: int,
    *,
    exclude: list[np.ndarray] | None = None,
    suppress: Mapping[int, float] | None = None,
    mode: SteerMode = "error",
    baseline: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, Codes, np.ndarray]:
    """Encode, steer, score all items and take the top-k. Returns (ids, scores, codes, x')."""
    codes = sae.encode(x)
    xs = sae.steer(x, codes, suppress, mode, baseline)
    ids, sc = score_top_k(xs, item_emb, k, exclude)
    return ids, sc, codes, xs


def history_windows(histories: list[np.ndarray], max_len: int, pad: int) -> np.ndarray:
    """Left-pad (or keep the last ``max_len`` of) each history: int64 ``(B, max_len)``.

    The most recent item is last; ``pad`` (= n_items) fills the front. This is the sequential
    encoder's input layout, shared by training, export and serving.
    """
    out = np.full((len(histories), max_len), pad, dtype=np.int64)
    for i, h in enumerate(histories):
        h = np.asarray(h)[-max_len:]
        if len(h):
            out[i, max_len - len(h) :] = h
    return out
