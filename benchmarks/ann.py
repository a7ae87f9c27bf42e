"""Approximate retrieval at 1M items (faiss IVF, candidates re-scored exactly) against exact
scoring, with and without suppression — the measurement behind issue 17's item 4 (the index is
not wired into serving yet).

Queries are the served users' representations from the 1M-item synthetic bundle of
``benchmarks/catalogue_scale.py`` (the ml-100k encoder): unsuppressed, and with each user's two
strongest active latents suppressed (error-preserving steering: the suppressed vector is still one
inner-product query). Seen items are excluded in both the exact and the approximate answer (the
ANN asks for ``--candidates`` + the history's length, then re-scores exactly and drops seen ones).

    .venv/bin/python benchmarks/ann.py --bundle .pytest-bundles/synthetic/items-1000000

Needs the ``ann`` extra (faiss-cpu). Prints markdown: build time, index memory, recall@10 and
in-process p50/p99 per nprobe.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from recsae.engine import Engine  # noqa: E402
from recsae.kernel import top_items  # noqa: E402


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default=".pytest-bundles/synthetic/items-1000000")
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--kind", choices=["ivf", "hnsw"], default="ivf")
    ap.add_argument("--nlist", type=int, default=1024, help="IVF lists")
    ap.add_argument("--nprobe", default="8,32,128", help="IVF: lists probed; HNSW: efSearch values")
    ap.add_argument("--M", type=int, default=16, help="HNSW graph degree")
    ap.add_argument("--ef-construction", type=int, default=40)
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--train", type=int, default=65536, help="k-means training sample")
    args = ap.parse_args()
    import faiss

    faiss.omp_set_num_threads(1)
    eng = Engine.from_path(args.bundle)
    E = np.ascontiguousarray(eng.item_emb)
    n, d = E.shape
    users = np.arange(min(args.users, len(eng.bundle.users.user_ids)))
    x = eng.encode_users(users)
    codes = eng.sae.encode(x)
    queries = {"no suppression": x}
    sup = np.stack([eng.sae.steer(x[i : i + 1], type(codes)(codes.acts[i : i + 1], codes.idx[i : i + 1]),
                                  {int(j): 1.0 for j in codes.idx[i][:2]})[0] for i in range(len(users))])
    queries["2 strongest latents suppressed"] = sup
    seen = [eng.bundle.users.history(int(u)) for u in users]

    rss0 = rss_mib()
    t0 = time.perf_counter()
    if args.kind == "ivf":
        quant = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quant, d, args.nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        index.train(E[rng.choice(n, min(args.train, n), replace=False)])
        what = f"IVF-Flat (inner product), nlist {args.nlist}, trained on {min(args.train, n):,}"
        index_mib = (n * d * 4 + n * 8 + args.nlist * d * 4) / 2**20
    else:
        index = faiss.IndexHNSWFlat(d, args.M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = args.ef_construction
        what = f"HNSW-Flat (inner product), M {args.M}, efConstruction {args.ef_construction}"
        index_mib = (n * d * 4 + n * args.M * 2 * 4) / 2**20
    index.add(E)
    build = time.perf_counter() - t0
    print(f"{n:,} items x {d}; {what}; built in {build:.1f} s; index ~{index_mib:.0f} MiB (the item matrix itself "
          f"{E.nbytes / 2**20:.0f} MiB); peak RSS {rss_mib():.0f} MiB (before the index {rss0:.0f}); load average "
          f"{os.getloadavg()[0]:.1f}\n")
    print(f"| queries | {'nprobe' if args.kind == 'ivf' else 'efSearch (at least the candidates asked)'} | recall@10 vs exact | p50 ms | p99 ms | exact p50 ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, q in queries.items():
        exact, t_exact = [], []
        for i in range(len(users)):
            t = time.perf_counter()
            ids, _ = top_items(q[i : i + 1] @ E.T, 10, [seen[i]])
            t_exact.append(time.perf_counter() - t)
            exact.append(set(ids[0].tolist()))
        for nprobe in [int(v) for v in args.nprobe.split(",")]:
            if args.kind == "ivf":
                index.nprobe = nprobe
            else:
                index.hnsw.efSearch = max(nprobe, args.candidates + len(max(seen, key=len)))
            hits, lat = 0, []
            for i in range(len(users)):
                t = time.perf_counter()
                _, cand = index.search(q[i : i + 1], args.candidates + len(seen[i]))
                cand = cand[0][cand[0] >= 0]
                cand = cand[~np.isin(cand, seen[i])]
                sc = E[cand] @ q[i]  # exact re-scoring of the candidates
                top = cand[np.lexsort((cand, -sc))[:10]]
                lat.append(time.perf_counter() - t)
                hits += len(exact[i] & set(top.tolist()))
            lat_ms = np.asarray(lat) * 1e3
            print(f"| {name} | {nprobe} | {hits / (10 * len(users)):.3f} | {np.percentile(lat_ms, 50):.2f} | "
                  f"{np.percentile(lat_ms, 99):.2f} | {np.percentile(np.asarray(t_exact) * 1e3, 50):.1f} |", flush=True)


if __name__ == "__main__":
    main()
