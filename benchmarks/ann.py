"""Approximate retrieval as served (``recsae.ann``: the bundle's faiss index, candidates re-scored
exactly in ``service.core.Core.run_batch``) against exact scoring, at 1.7k / 100k / 1M / 10M items.

Catalogues: the ml-100k bundle (``bundles/ml100k``: SASRec, its encoder, SAE, concepts and 943
users) with its 1,682 real item embeddings first, then synthetic items that cluster the way
trained embeddings do: each is a real item's embedding (its "parent", drawn uniformly) plus
Gaussian noise in the real embeddings' top-16 principal directions (0.5x their spread along
each) plus 0.1x isotropic noise, times a log-normal(0, 0.2) norm factor (popular items have
larger norms). ``--data iid`` gives the older i.i.d. Gaussian items instead (no structure at
all). Each catalogue is written as a bundle with ``recsae.ann.build``'s index (the offline job's
function; its nprobe calibrated on 256 of the users, histories excluded) and served in-process
through ``Core`` once with the index and once exactly (``RECSAE_ANN=off``-equivalent: the engine's
index detached), each size in its own process so its memory is its own.

Per size: recall@10 of the served answers (explained, seen items excluded) against exact, for
the users' own queries and with each user's two strongest active concepts suppressed; in-process
p50/p99 of the whole ``Core.recommend_user`` and of retrieval alone; throughput with 1, 8 and 32
concurrent in-process clients (the batcher); memory (RSS after load, peak, index and matrix).

    .venv/bin/python benchmarks/ann.py                                  # 1682,100000,1000000
    .venv/bin/python benchmarks/ann.py --sizes 10000000 --users 100     # ~3 GB of item matrix

Needs the ``ann`` extra (faiss-cpu; ``make install`` installs it). Prints markdown.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="recsae-prom-"))
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402

BASE = ROOT / "bundles" / "ml100k"


def clustered_items(base: np.ndarray, n: int, seed: int, chunk: int = 1 << 20) -> np.ndarray:
    """The real items, then ``n - len(base)`` noisy low-rank variations of them (module doc)."""
    n_real, d = base.shape
    out = np.empty((n, d), np.float32)
    out[:n_real] = base
    centred = base - base.mean(0)
    _, sv, vt = np.linalg.svd(centred, full_matrices=False)
    r = min(16, d)
    spread = (sv[:r] / np.sqrt(n_real)).astype(np.float32)  # std along each principal direction
    iso = float(base.std())
    rng = np.random.default_rng(seed)
    for s in range(n_real, n, chunk):
        m = min(chunk, n - s)
        parent = rng.integers(0, n_real, m)
        noise = (rng.standard_normal((m, r), dtype=np.float32) * (0.5 * spread)) @ vt[:r].astype(np.float32)
        noise += rng.standard_normal((m, d), dtype=np.float32) * (0.1 * iso)
        scale = rng.lognormal(0.0, 0.2, (m, 1)).astype(np.float32)
        out[s : s + m] = (base[parent] + noise) * scale
    return out


def iid_items(base: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = (rng.standard_normal((n, base.shape[1]), dtype=np.float32) * base.std(0) + base.mean(0)).astype(np.float32)
    out[: len(base)] = base
    return out


def build(n: int, out: Path, data: str, kind: str, threads: int) -> dict:
    """Write the catalogue's bundle with its index; return the build figures."""
    from catalogue_scale import base_parts

    from recsae import ann
    from recsae.bundle import load_bundle, write_bundle
    from recsae.engine import Engine

    if (out / "manifest.json").exists():
        return json.loads((out / "manifest.json").read_text())["ann"] | {"cached": True}
    base = load_bundle(BASE)
    n_real = len(base.item_emb)
    emb = (clustered_items if data == "clustered" else iid_items)(base.item_emb, n, seed=0)
    eng = Engine(base)
    users = np.arange(min(256, len(base.users.user_ids)))
    queries = eng.encode_users(users)
    seen = [base.users.history(int(u)) for u in users]
    t0 = time.perf_counter()
    index, meta = ann.build(emb, kind, queries, seen, seed=0, threads=threads)
    meta["build_s"] = round(time.perf_counter() - t0, 1)
    cat = base.catalog

    def fill(tmp: Path) -> dict:
        np.save(tmp / "item_embeddings.npy", emb)
        ann.write(index, tmp / ann.ANN_FILE)
        pop = np.zeros(n, np.int64)
        pop[:n_real] = cat.popularity
        with open(tmp / "catalog.json", "w") as f:  # streamed: 10M ids and titles as one JSON string is GBs
            f.write('{"item_ids": [')
            f.write(",".join(f'"{i}"' for i in range(1, n + 1)))
            f.write('], "titles": ')
            f.write(json.dumps(cat.titles)[:-1] + "".join(f', "Synthetic item {i + 1}"' for i in range(n_real, n)) + "]")
            f.write(f', "feature_names": {json.dumps(cat.feature_names)}, "item_features": ')
            f.write(json.dumps(cat.item_features)[:-1] + ", []" * (n - n_real) + "]")
            f.write(', "popularity": [' + ",".join(map(str, pop.tolist())) + "]}")
        body = base_parts(tmp, base, n, synthetic_data=data)
        body["ann"] = meta
        return body

    write_bundle(out, fill)
    return meta


def vm(key: str) -> float:
    """VmRSS / VmHWM of this process, MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(xs: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(xs) * 1e3, q)), 3)


def serve(bundle: Path, n_users: int) -> dict:
    """Measure one bundle in this process (see the module doc)."""
    from recsae.kernel import score_top_k
    from service.config import Settings
    from service.core import Core

    t0 = time.perf_counter()
    core = Core(Settings(bundle=str(bundle), redis_url=None, redis_prefix=f"ann-{uuid.uuid4().hex[:8]}",
                         state_dir=tempfile.mkdtemp(prefix="recsae-bench-"), warmup=True))
    core.start()
    load_s = time.perf_counter() - t0
    eng = core.engine
    idx = eng.ann
    res: dict = {"n_items": int(eng.item_emb.shape[0]), "load_s": round(load_s, 1), "rss_after_load_mib": round(vm("VmRSS")),
                 "matrix_mib": round(eng.item_emb.nbytes / 2**20), "bundle_mib": round(sum(
                     f.stat().st_size for f in bundle.rglob("*") if f.is_file()) / 2**20),
                 "index_file_mib": round((bundle / "ann.faiss").stat().st_size / 2**20) if idx else 0,
                 "ann": {k: v for k, v in eng.bundle.manifest.get("ann", {}).items() if k != "transform"}}
    users = [str(u) for u in core.bundle.users.user_ids[:n_users]]
    from service.options import RecommendOptions

    base = dict(k=10, explain=True, policy=None, exclude_seen=True, mode=None, suppress_baseline=0.0)
    # each user's two strongest active concepts (from the exact-or-not answer: the codes are the same)
    sup = {}
    for uid in users:
        act = core.recommend_user(uid, RecommendOptions(suppress={}, **base))["active_latents"]
        sup[uid] = {a["latent"]: 1.0 for a in sorted(act, key=lambda a: -a["activation"])[:2]}
    variants = {"plain": lambda u: {}, "suppressed": lambda u: sup[u]}

    def run(label: str) -> dict:
        out = {}
        for name, s in variants.items():
            lat, items = [], []
            for uid in users:
                t = time.perf_counter()
                body = core.recommend_user(uid, RecommendOptions(suppress=s(uid), **base))
                lat.append(time.perf_counter() - t)
                items.append([i["item_id"] for i in body["items"]])
            out[name] = {"lat": lat, "items": items}
        # retrieval alone (the user's own query): index + exact re-scoring, or one exact pass
        x = eng.encode_users(np.array([core.bundle.users.index_of(u) for u in users]))
        seen = [core.bundle.users.history(core.bundle.users.index_of(u)) for u in users]
        rl = []
        for r in range(len(users)):
            t = time.perf_counter()
            if eng.ann is not None:
                eng.ann.top_items(x[r : r + 1], 10, [seen[r]])
            else:
                score_top_k(x[r : r + 1], eng.item_emb, 10, [seen[r]])
            rl.append(time.perf_counter() - t)
        out["retrieval"] = rl
        out["throughput"] = {c: throughput(core, users, c, sup) for c in (1, 8, 32)}
        return out

    ann_run = run("ann") if idx is not None else None
    fallbacks = (idx.fallbacks, idx.rows) if idx is not None else (0, 0)
    eng.ann = None  # the exact path of Core.run_batch, same process and bundle
    exact_run = run("exact")
    res["peak_rss_mib"] = round(vm("VmHWM"))
    for name in variants:
        e = exact_run[name]
        row = {"exact_p50": pct(e["lat"], 50), "exact_p99": pct(e["lat"], 99)}
        if ann_run:
            a = ann_run[name]
            row.update(recall=round(float(np.mean([len(set(p) & set(q)) / 10 for p, q in zip(a["items"], e["items"])])), 4),
                       same_list=round(float(np.mean([p == q for p, q in zip(a["items"], e["items"])])), 4),
                       ann_p50=pct(a["lat"], 50), ann_p99=pct(a["lat"], 99))
        res[name] = row
    res["retrieval"] = {"exact_p50": pct(exact_run["retrieval"], 50), "exact_p99": pct(exact_run["retrieval"], 99)}
    res["throughput"] = {"exact": exact_run["throughput"]}
    if ann_run:
        res["retrieval"].update(ann_p50=pct(ann_run["retrieval"], 50), ann_p99=pct(ann_run["retrieval"], 99))
        res["throughput"]["ann"] = ann_run["throughput"]
        res["fallback_rows"] = f"{fallbacks[0]} of {fallbacks[1]}"
    res["load_average"] = round(os.getloadavg()[0], 1)
    core.close()
    return res


def throughput(core, users: list[str], clients: int, sup: dict) -> float:
    """Explained requests per second with ``clients`` concurrent in-process callers (batcher)."""
    n = max(60, 8 * clients)
    from service.options import RecommendOptions

    opts = dict(k=10, explain=True, policy=None, exclude_seen=True, mode=None, suppress_baseline=0.0)

    async def go() -> float:
        nxt = iter(range(n))

        async def client() -> None:
            for i in nxt:
                uid = users[i % len(users)]
                await core.recommend_user_async(uid, RecommendOptions(suppress=sup[uid] if i % 2 else {}, **opts))

        t = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return n / (time.perf_counter() - t)

    return round(asyncio.run(go()), 1)


def table(results: list[dict]) -> None:
    print("| items | data | index | recall@10 plain | recall@10 suppressed | same top-10 list (plain) | p50 / p99 ms ANN | p50 / p99 ms exact | retrieval p50 ANN / exact ms |")
    print("|---:|---|---|---:|---:|---:|---|---|---|")
    for r in results:
        a, p, s, rt = r["ann"], r["plain"], r["suppressed"], r["retrieval"]
        index = (f"IVF {a['nlist']} lists, nprobe {a.get('nprobe')}" if a.get("kind") == "ivf" else
                 f"HNSW M {a.get('M')}, efSearch {a.get('ef_search')}") if a else "none"
        print(f"| {r['n_items']:,} | {r['data']} | {index} | {p.get('recall', '-')} | {s.get('recall', '-')} | "
              f"{p.get('same_list', '-')} | {p.get('ann_p50', '-')} / {p.get('ann_p99', '-')} | {p['exact_p50']} / "
              f"{p['exact_p99']} | {rt.get('ann_p50', '-')} / {rt['exact_p50']} |")
    print("\n| items | explained req/s at 1 / 8 / 32 clients, ANN | exact | RSS after load MiB | peak RSS MiB | item matrix MiB | index file MiB | bundle MiB | index build s | exact fallback rows | load avg |")
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|---|---:|")
    for r in results:
        t = r["throughput"]
        fmt = lambda d: " / ".join(str(d[c]) for c in sorted(d, key=int)) if d else "-"  # noqa: E731
        print(f"| {r['n_items']:,} | {fmt(t.get('ann'))} | {fmt(t['exact'])} | {r['rss_after_load_mib']:,} | "
              f"{r['peak_rss_mib']:,} | {r['matrix_mib']:,} | {r['index_file_mib']:,} | {r['bundle_mib']:,} | "
              f"{r['ann'].get('build_s', '-')} | {r.get('fallback_rows', '-')} | {r['load_average']} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1682,100000,1000000")
    ap.add_argument("--users", type=int, default=300, help="users asked (each plain and suppressed)")
    ap.add_argument("--data", choices=["clustered", "iid"], default="clustered")
    ap.add_argument("--kind", choices=["ivf", "hnsw"], default="ivf")
    ap.add_argument("--threads", type=int, default=1, help="faiss threads while building")
    ap.add_argument("--work", default=".pytest-bundles/ann-bench", help="where the catalogue bundles are kept")
    ap.add_argument("--keep", action="store_true", help="keep the bundles (default: removed after measuring)")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: build:N or serve:N
    args = ap.parse_args()
    if args.one:
        what, n = args.one.split(":")
        out = Path(args.work) / f"{args.data}-{args.kind}-{n}"
        if what == "build":
            meta = build(int(n), out, args.data, args.kind, args.threads)
            print(json.dumps({"build": meta, "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))
        else:
            print(json.dumps(serve(out, args.users)))
        return
    results = []
    for n in [int(v) for v in args.sizes.split(",")]:
        out = Path(args.work) / f"{args.data}-{args.kind}-{n}"
        cmd = [sys.executable, __file__, "--data", args.data, "--kind", args.kind, "--work", args.work,
               "--users", str(args.users), "--threads", str(args.threads)]
        b = json.loads(subprocess.run([*cmd, "--one", f"build:{n}"], check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        print(f"{n:,} items: built ({b['build'].get('build_s')} s index, build process peak RSS {b['peak_rss_mib']:,} MiB)",
              file=sys.stderr, flush=True)
        r = json.loads(subprocess.run([*cmd, "--one", f"serve:{n}"], check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        r["data"], r["build_peak_rss_mib"] = args.data, b["peak_rss_mib"]
        print(json.dumps(r), file=sys.stderr, flush=True)
        results.append(r)
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    table(results)


if __name__ == "__main__":
    main()
