"""Approximate retrieval for large catalogues: a faiss index over the item embeddings.

Built by the offline job (``recsae train --ann auto|off|ivf|hnsw``; auto = IVF from
``AUTO_MIN_ITEMS`` items on), written into the bundle as ``ann.faiss`` (hashed and verified at
load like every bundle file) and described in the manifest's ``ann`` section. The service asks
the index for candidates with the (suppressed / steered) user vector as the query and re-scores
them exactly against the item matrix, so the scores, contributions and error term of the items
it returns are exact; only which items make the top-k is approximate (recall measured at build
time and in ``benchmarks/ann.py``).

Max inner product search is reduced to nearest neighbours in L2: each item gets one extra
coordinate sqrt(M^2 - |e|^2) (M: the largest item norm), a query gets 0 there, so
|q' - e'|^2 = |q|^2 + M^2 - 2 q.e and the nearest items are those of the highest score whatever
their norms (inner-product lists and graphs miss the high-norm items: benchmarks/RESULTS.md).

faiss is optional (the ``ann`` extra): asking for an index without it fails before the job
trains anything; a bundle with an index served without faiss is served exactly, with a warning.
NumPy only at import: the service imports this module.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from recsae import BundleError, ConfigError

log = logging.getLogger(__name__)

ANN_FILE = "ann.faiss"
KINDS = ("auto", "off", "ivf", "hnsw")
AUTO_MIN_ITEMS = 100_000
"""``--ann auto`` builds an index from this many items on: below, one exact pass over the
catalogue costs well under a millisecond (benchmarks/RESULTS.md) and exact is exact."""
MIN_CANDIDATES = 100
CANDIDATES_PER_K = 10
"""Candidates re-scored exactly per request: max(100, 10 k) + the items excluded as seen."""
TARGET_RECALL = 0.99
"""The build picks the smallest nprobe (IVF) / efSearch (HNSW) whose recall@10 against exact
scoring reaches this on the calibration queries (the users' representations)."""


def faiss_or_none():
    try:
        import faiss  # noqa: PLC0415 - optional dependency
    except ImportError:
        return None
    return faiss


def resolve(kind: str, n_items: int) -> str | None:
    """The index to build for ``--ann kind`` over ``n_items`` items (None: exact only)."""
    if kind not in KINDS:
        raise ConfigError(f"unknown --ann {kind!r}; choose one of {list(KINDS)}")
    if kind == "off" or (kind == "auto" and n_items < AUTO_MIN_ITEMS):
        return None
    return "ivf" if kind == "auto" else kind


def check_option(kind: str) -> None:
    """Fail before any training when an index is asked for explicitly and faiss is missing."""
    resolve(kind, 0)
    if kind in ("ivf", "hnsw") and faiss_or_none() is None:
        raise ConfigError(
            f"--ann {kind} needs faiss-cpu, which is not installed: `pip install -e '.[ann]'` "
            "(`make install` installs it), or train with --ann off"
        )


def index_dim(d: int) -> int:
    """d + 1 (the extra coordinate), padded with zeros to a multiple of 8: faiss's SIMD scanners
    need it (8-bit codes of 65 dims scanned ~6x slower than float32 ones; of 72, as fast)."""
    return -(-(d + 1) // 8) * 8


def augment(x: np.ndarray, max_norm: float | None = None) -> np.ndarray:
    """Items: append sqrt(M^2 - |e|^2) (``max_norm`` M); queries (``max_norm`` None): append 0;
    then zeros up to ``index_dim``."""
    x = np.asarray(x, dtype=np.float32)
    out = np.zeros((len(x), index_dim(x.shape[1])), np.float32)
    out[:, : x.shape[1]] = x
    if max_norm is not None:
        sq = np.einsum("ij,ij->i", x, x, dtype=np.float64)
        out[:, x.shape[1]] = np.sqrt(np.maximum(max_norm**2 - sq, 0.0))
    return out


def default_nlist(n: int) -> int:
    """About 4 sqrt(n) lists (a power of two), at least 39 training items each, at most 8,192:
    assigning 10M items to 16k lists costs ~4x the build time of 8k for little search time."""
    want = 2 ** int(round(np.log2(max(4.0 * np.sqrt(n), 1.0))))
    return int(max(1, min(want, n // 39, 8192)))


def candidates(k: int, n_excluded: int = 0) -> int:
    return max(MIN_CANDIDATES, CANDIDATES_PER_K * k) + n_excluded


def build(
    emb: np.ndarray,
    kind: str,
    queries: np.ndarray | None = None,
    seen: list[np.ndarray] | None = None,
    seed: int = 0,
    threads: int = 1,
    nlist: int | None = None,
    hnsw_m: int = 32,
) -> tuple[Any, dict[str, Any]]:
    """Build an index over ``emb`` (n, d); calibrate its search depth on ``queries`` (with
    ``seen[i]`` excluded from query i's answer, as served).

    IVF: k-means lists over the augmented vectors, each vector stored as 8-bit scalars (1/4 of
    float32: the stored codes only choose candidates, the re-scoring reads the float32 matrix).
    HNSW: a flat graph (M ``hnsw_m``), slower to build (minutes per million items).
    """
    faiss = faiss_or_none()
    if faiss is None:
        check_option(kind)
    faiss.omp_set_num_threads(max(1, int(threads or 1)))
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    n, d = emb.shape
    max_norm = float(np.sqrt(np.einsum("ij,ij->i", emb, emb, dtype=np.float64).max()))
    t0 = time.perf_counter()
    meta: dict[str, Any] = {"kind": kind, "file": ANN_FILE, "n_items": n, "dim": d, "max_norm": max_norm,
                            "transform": "mips-to-l2 (extra coordinate sqrt(M^2 - |e|^2))"}
    if kind == "ivf":
        nlist = int(nlist or default_nlist(n))
        D = index_dim(d)
        quant = faiss.IndexFlatL2(D)
        index = faiss.IndexIVFScalarQuantizer(quant, D, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_L2)
        rng = np.random.default_rng(seed)
        sample = rng.choice(n, min(n, nlist * 64), replace=False) if n > nlist * 64 else np.arange(n)
        # 10 k-means rounds, not faiss's 25: build time (the depth is calibrated on the result anyway)
        index.cp.seed, index.cp.niter = seed, 10
        index.train(augment(emb[np.sort(sample)], max_norm))
        for s in range(0, n, 1 << 20):  # the augmented copy one chunk at a time, not all at once
            index.add(augment(emb[s : s + (1 << 20)], max_norm))
        meta.update(nlist=nlist, storage="8-bit scalar codes", trained_on=int(len(sample)))
        ladder, param = [p for p in (1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 192, 256, 384, 512) if p < nlist] + [nlist], "nprobe"
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(index_dim(d), hnsw_m, faiss.METRIC_L2)
        index.hnsw.efConstruction = 80
        for s in range(0, n, 1 << 20):
            index.add(augment(emb[s : s + (1 << 20)], max_norm))
        meta.update(M=hnsw_m, ef_construction=80, storage="float32")
        ladder, param = [16, 32, 64, 128, 256, 512, 1024], "ef_search"
    else:
        raise ConfigError(f"no index kind {kind!r}; choose ivf or hnsw")
    meta["build_s"] = round(time.perf_counter() - t0, 2)
    meta[param] = ladder[-1]
    if queries is not None and len(queries):
        meta.update(calibrate(index, emb, meta, np.asarray(queries, np.float32), seen, ladder, param))
    return index, meta


def calibrate(index, emb: np.ndarray, meta: dict, q: np.ndarray, seen: list[np.ndarray] | None,
              ladder: list[int], param: str) -> dict:
    """The smallest search depth whose recall@10 (candidates re-scored exactly, no exact
    fallback) reaches ``TARGET_RECALL`` against exact scoring on ``q``; the deepest tried otherwise."""
    from recsae.kernel import score_top_k

    seen = list(seen[: len(q)]) if seen is not None else [np.zeros(0, np.int64)] * len(q)
    exact = score_top_k(q, np.asarray(emb, np.float32), 10, seen)[0]  # block by block: no (256, n_items) scores
    ann = ANNIndex(index, meta, emb)
    recall, curve = 0.0, {}
    for p in ladder:
        ann.set_depth(p)
        ids, _ = ann.top_items(q, 10, seen, fallback=False)
        recall = float(np.mean([len(set(a.tolist()) & set(b.tolist())) / exact.shape[1] for a, b in zip(ids, exact)]))
        curve[str(p)] = round(recall, 4)
        if recall >= TARGET_RECALL:
            break
    return {param: p, "calibration": {"queries": int(len(q)), "recall_at_10": round(recall, 4), "target": TARGET_RECALL,
                                      "tried": curve}}


def write(index, out: Path) -> None:
    faiss = faiss_or_none()
    faiss.write_index(index, str(out))


def write_for_bundle(tmp: Path, emb: np.ndarray, kind: str, queries: np.ndarray | None,
                     seen: list[np.ndarray] | None = None, seed: int = 0, threads: int = 1) -> dict[str, Any] | None:
    """The offline job's step: build (per ``--ann kind``) and write ``ann.faiss`` into the bundle
    being written, calibrated on ``queries`` (the users' representations) with ``seen`` (their
    histories) excluded; return the manifest's ``ann`` section (None: no index)."""
    use = resolve(kind, len(emb))
    if use is None:
        return None
    if faiss_or_none() is None:  # only "auto" gets here without faiss (check_option refused the rest)
        log.warning("--ann auto: %d items, but faiss-cpu is not installed: the bundle is served exactly "
                    "(pip install -e '.[ann]' and retrain for an index)", len(emb))
        return None
    index, meta = build(emb, use, queries[:256] if queries is not None else None, seen, seed, threads)
    if use == "ivf" and meta["nprobe"] > meta["nlist"] // 8:
        log.warning("ANN index: recall@10 %.2f needs %d of %d lists scanned; these item embeddings have little "
                    "cluster structure and exact scoring may be as fast (--ann off)",
                    TARGET_RECALL, meta["nprobe"], meta["nlist"])
    write(index, tmp / ANN_FILE)
    log.info("ANN index: %s", meta)
    return meta


class ANNIndex:
    """A loaded index plus the exact item matrix its candidates are re-scored against."""

    def __init__(self, index, meta: dict[str, Any], item_emb: np.ndarray):
        self.index, self.meta, self.item_emb = index, meta, item_emb
        self.kind = meta["kind"]
        self.rows = self.fallbacks = 0  # rows answered; of them, scored exactly (too few candidates)
        self._faiss, self.threads = faiss_or_none(), 1
        self.n_items = int(meta["n_items"])
        self.set_depth(int(os.environ.get("RECSAE_ANN_DEPTH") or meta.get("nprobe") or meta.get("ef_search") or 64))

    def set_depth(self, p: int) -> None:
        """nprobe (IVF lists scanned) or efSearch (HNSW), raised to the candidates asked."""
        self.depth = int(p)
        if self.kind == "ivf":
            self.index.nprobe = self.depth

    def top_items(self, xs: np.ndarray, k: int, exclude: list[np.ndarray] | None,
                  fallback: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Like ``recsae.kernel.score_top_k(xs, item_emb, k, exclude)``: the best k per row,
        ties by lower id, seen items excluded, exact scores; but over the index's candidates.
        A row left with fewer than k candidates after exclusion is scored exactly."""
        from recsae.kernel import score_top_k

        xs = np.atleast_2d(np.asarray(xs, dtype=np.float32))
        b = len(xs)
        exclude = exclude if exclude is not None else [np.zeros(0, np.int64)] * b
        n_cand = min(self.n_items, candidates(k, max((len(e) for e in exclude), default=0)))
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = max(self.depth, n_cand)
        # OpenMP's thread count is per calling thread: the batcher's thread would otherwise get
        # one per core, which spin against the event loop (2x slower under 8 clients here)
        self._faiss.omp_set_num_threads(self.threads)
        _, cand = self.index.search(augment(xs), n_cand)
        ids = np.full((b, k), -1, np.int64)
        sc = np.full((b, k), -np.inf, np.float32)
        for r in range(b):
            c = cand[r][cand[r] >= 0]
            if len(exclude[r]):
                c = c[~np.isin(c, exclude[r])]
            self.rows += 1
            if len(c) < k and fallback:
                self.fallbacks += 1
                ids_r, sc_r = score_top_k(xs[r : r + 1], self.item_emb, k, [exclude[r]])
                m = ids_r.shape[1]
                ids[r, :m], sc[r, :m] = ids_r[0], sc_r[0]
                continue
            s = self.item_emb[c] @ xs[r]  # the exact scores of the candidates
            top = np.lexsort((c, -s))[:k]
            ids[r, : len(top)], sc[r, : len(top)] = c[top], s[top]
        return ids, sc


def load(bundle_path: Path, manifest: dict[str, Any], item_emb: np.ndarray) -> ANNIndex | None:
    """The bundle's index (its hash was verified with the bundle), or None: no index, the
    operator's ``RECSAE_ANN=off``, or faiss missing (then exact, with a warning)."""
    meta = manifest.get("ann")
    if not meta:
        return None
    if os.environ.get("RECSAE_ANN", "").lower() in ("off", "0", "exact"):
        log.info("RECSAE_ANN=off: the bundle's %s index is not used; scoring every item exactly", meta.get("kind"))
        return None
    faiss = faiss_or_none()
    if faiss is None:
        log.warning("bundle %s has an approximate-retrieval index (%s) but faiss-cpu is not installed: scoring "
                    "every item exactly (correct, slower); pip install -e '.[ann]' to use the index",
                    bundle_path, meta.get("kind"))
        return None
    path = Path(bundle_path) / meta.get("file", ANN_FILE)
    try:
        index = faiss.read_index(str(path))
    except Exception as e:  # noqa: BLE001 - faiss raises RuntimeError with its own message
        raise BundleError(f"cannot read the ANN index {path} ({e}); rebuild the bundle") from e
    n, d = item_emb.shape
    if index.ntotal != n or index.d != index_dim(d) or int(meta.get("n_items", -1)) != n:
        raise BundleError(f"ANN index {path} holds {index.ntotal} vectors of {index.d} dims; the bundle has "
                          f"{n} items of {d} ({index_dim(d)} indexed): rebuild the bundle")
    return ANNIndex(index, meta, item_emb)  # one faiss thread per search: a request is one small search
