"""Serving latency against catalogue size: 1.7k (the ml-100k bundle), 100k and 1M items.

The large catalogues are synthetic bundles written with ``recsae.bundle.write_bundle``: the
ml-100k encoder, SAE, users and concepts, and random item embeddings of the same dimension and
scale (per-dimension mean/std of the real ones), with a matching catalogue. The encoder's
padding index is tied to its own item table, so ids >= its table size are mapped to its padding
id by a two-node prefix on the ONNX graph (the users' histories only hold real items).

Per size and explain off/on, single request at a time:

* in-process stages (``perf_counter`` over ``--n`` calls, through ``service.core.Core``):
  encoder (ONNX), SAE encode, scoring + top-k (``recsae.kernel.score_top_k``), explanation + body
  building, the concept lookup (process memory kept coherent by Redis, on the shared Redis,
  private prefix), and the whole ``Core.recommend_user``;
* end to end: ``GET /recommend`` over loopback HTTP to ``bentoml serve`` (one worker), paired:
  each user asked with explain off and on back to back.

    .venv/bin/python benchmarks/catalogue_scale.py                 # 1.7k, 100k, 1M
    .venv/bin/python benchmarks/catalogue_scale.py --sizes 1682,100000 --n 300

Prints markdown tables. Targets: at 1M items explained p50 <= 25 ms; explain adds <= 25 %.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="recsae-prom-"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import orjson  # noqa: E402

from recsae.bundle import UserTable, load_bundle, write_bundle  # noqa: E402
from tests.devserver import Client, ServeProcess  # noqa: E402

BASE = Path(__file__).resolve().parents[1] / "bundles" / "ml100k"
SHARED_REDIS = "redis://127.0.0.1:6379/0"


def clamp_onnx(src: Path, dst: Path, n_real: int) -> None:
    """encoder.onnx whose int64 input ids >= n_real become n_real (its padding id)."""
    import onnx
    from onnx import TensorProto, helper

    m = onnx.load(str(src))
    g = m.graph
    inp = g.input[0].name
    new_in = inp + "_raw"
    g.input[0].name = new_in
    g.initializer.extend([helper.make_tensor("pad_id_c", TensorProto.INT64, [], [n_real])])
    less = helper.make_node("Less", [new_in, "pad_id_c"], ["is_real_c"])
    where = helper.make_node("Where", ["is_real_c", new_in, "pad_id_c"], [inp])
    nodes = [less, where, *g.node]
    del g.node[:]
    g.node.extend(nodes)
    onnx.checker.check_model(m)
    onnx.save(m, str(dst))


def synthetic_bundle(n_items: int, out: Path, seed: int = 0) -> Path:
    if (out / "manifest.json").exists():
        return out
    base = load_bundle(BASE)
    manifest = base.manifest
    n_real = int(manifest["model"]["n_items"])
    emb = base.item_emb
    rng = np.random.default_rng(seed)
    synth = (rng.standard_normal((n_items, emb.shape[1]), dtype=np.float32) * emb.std(0) + emb.mean(0)).astype(np.float32)
    cat = base.catalog

    def fill(tmp: Path) -> dict:
        np.save(tmp / "item_embeddings.npy", synth)
        ids = [str(i) for i in range(1, n_items + 1)]
        titles = [cat.titles[i] if i < n_real else f"Synthetic item {i + 1}" for i in range(n_items)]
        pop = np.zeros(n_items, np.int64)
        pop[:n_real] = cat.popularity
        (tmp / "catalog.json").write_text(json.dumps({
            "item_ids": ids, "titles": titles, "feature_names": cat.feature_names,
            "item_features": [cat.item_features[i] if i < n_real else [] for i in range(n_items)],
            "popularity": pop.tolist(),
        }))
        return base_parts(tmp, base, n_items)

    return write_bundle(out, fill)


def base_parts(tmp: Path, base, n_items: int, **dataset: object) -> dict:
    """What a scaled bundle keeps of the base one: users, SAE, concepts, reference statistics and
    the encoder (clamped to the real items); returns the manifest body with ``n_items``."""
    manifest, n_real = base.manifest, int(base.manifest["model"]["n_items"])
    UserTable(base.users.user_ids, base.users.offsets, base.users.items).save(tmp / "users.npz")
    shutil.copytree(BASE / "sae", tmp / "sae")
    for f in ("concepts.json", "reference_stats.npz"):
        shutil.copy(BASE / f, tmp / f)
    clamp_onnx(BASE / "encoder.onnx", tmp / "encoder.onnx", n_real)
    body = {k: v for k, v in manifest.items()
            if k not in ("files", "bundle_hash", "version", "created", "format_version", "recsae_version")}
    body["model"] = {**manifest["model"], "n_items": n_items}
    body["dataset"] = {**manifest.get("dataset", {}), "synthetic_items": n_items, **dataset}
    return body


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1e3, q))


def stage_times(bundle: Path, n: int, prefix: str) -> dict[bool, dict[str, list[float]]]:
    """perf_counter per stage, in process, the way Core runs a request."""
    from recsae.kernel import score_top_k
    from service.config import Settings
    from service.core import Core, Job, _Scored
    from service.options import RecommendOptions

    core = Core(Settings(bundle=str(bundle), redis_url=SHARED_REDIS, redis_prefix=prefix,
                         state_dir=tempfile.mkdtemp(prefix="recsae-bench-"), policy_sync_s=0, warmup=True))
    core.start()
    users = [str(u) for u in core.bundle.users.user_ids]
    eng, sae = core.engine, core.sae
    out: dict[bool, dict[str, list[float]]] = {}
    try:
        for explain in (False, True):
            t: dict[str, list[float]] = {s: [] for s in
                                         ("encoder", "sae_encode", "topk", "explain", "redis", "core_total")}
            for i in range(n):
                uid = users[i % len(users)]
                u = core.bundle.users.index_of(uid)
                t0 = time.perf_counter()
                x = eng.encode_users(np.array([u]))
                t1 = time.perf_counter()
                codes = sae.encode(x)
                t2 = time.perf_counter()
                ids, sc = score_top_k(x, eng.item_emb, 10, [core.bundle.users.history(u)])
                t3 = time.perf_counter()
                t["encoder"].append(t1 - t0)
                t["sae_encode"].append(t2 - t1)
                t["topk"].append(t3 - t2)
                if explain:
                    active = [int(j) for j in codes.idx[0][codes.acts[0] > 0]]
                    t5 = time.perf_counter()
                    core.store.described(active)  # process memory, kept coherent by Redis
                    t6 = time.perf_counter()
                    job = Job("user", uid, None, RecommendOptions(k=10, explain=True))
                    core._prepare(job)
                    plan = core._plan(job, x, codes, active)
                    ex = core._explain_batch([job], [(0, plan)], plan.xs, ids)[0]
                    # the body as served: its items and explanations written (service.hotpath)
                    orjson.dumps(core.finish(_Scored(job, plan, ids[0].tolist(), np.round(sc[0], 6).tolist(), ex),
                                             wire=True))
                    t7 = time.perf_counter()
                    t["redis"].append(t6 - t5)
                    t["explain"].append(t7 - t6)
                t8 = time.perf_counter()
                core.recommend_user(uid, RecommendOptions(k=10, explain=explain))
                t["core_total"].append(time.perf_counter() - t8)
            out[explain] = t
    finally:
        core.close()
    return out


def http_times(bundle: Path, n: int, prefix: str) -> dict[bool, list[float]]:
    users = [str(u) for u in np.load(bundle / "users.npz")["user_ids"]]
    env = {"RECSAE_BUNDLE": str(bundle), "REDIS_URL": SHARED_REDIS, "RECSAE_REDIS_PREFIX": prefix,
           "RECSAE_STATE_DIR": tempfile.mkdtemp(prefix="recsae-bench-")}
    res: dict[bool, list[float]] = {False: [], True: []}
    with ServeProcess(env) as srv:
        c = Client(srv.port, timeout=30)
        for i in range(40):
            c.request("GET", "/recommend", {"user_id": users[i % len(users)], "explain": "true"})
        # paired: each user asked with explain off and on back to back (order alternating), so
        # drift of this shared machine hits both flags alike
        for i in range(n):
            for explain in ((False, True) if i % 2 == 0 else (True, False)):
                q = {"user_id": users[i % len(users)], "k": 10, "explain": str(explain).lower()}
                t0 = time.perf_counter()
                st, _ = c.request("GET", "/recommend", q, parse=False)
                res[explain].append(time.perf_counter() - t0)
                assert st == 200, st
        c.close()
    return res


def cleanup(prefix: str) -> None:
    import redis

    r = redis.Redis.from_url(SHARED_REDIS)
    keys = list(r.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        r.delete(*keys)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1682,100000,1000000")
    ap.add_argument("--n", type=int, default=400, help="calls per cell")
    ap.add_argument("--work", default=".pytest-bundles/synthetic", help="where synthetic bundles are kept")
    ap.add_argument("--no-http", action="store_true")
    args = ap.parse_args()
    stages_rows, e2e_rows = [], []
    for size in [int(s) for s in args.sizes.split(",")]:
        bundle = BASE if size == 1682 else synthetic_bundle(size, Path(args.work) / f"items-{size}")
        prefix = f"bench-scale-{uuid.uuid4().hex[:8]}"
        try:
            st = stage_times(bundle, args.n, prefix)
            for explain in (False, True):
                t = st[explain]
                stages_rows.append((size, explain, *[
                    f"{pct(t[s], 50):.3f}" if t[s] else "–" for s in
                    ("encoder", "sae_encode", "topk", "explain", "redis")],
                    f"{pct(t['core_total'], 50):.2f}", f"{pct(t['core_total'], 99):.2f}"))
            if not args.no_http:
                h = http_times(bundle, args.n, prefix)
                p50 = {e: pct(h[e], 50) for e in h}
                e2e_rows.append((size, p50[False], pct(h[False], 99), p50[True], pct(h[True], 99),
                                 100 * (p50[True] / p50[False] - 1)))
        finally:
            cleanup(prefix)
        print(f"done {size}", file=sys.stderr, flush=True)
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, numpy {np.__version__}, "
          f"{args.n} calls per cell, single request at a time\n")
    print("In-process stages, p50 ms (`Core.recommend_user`: the whole request minus HTTP)\n")
    print("| items | explain | encoder | SAE encode | scoring + top-k | explanation+body | concept lookup | core p50 | core p99 |")
    print("|---:|:---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in stages_rows:
        print("| " + " | ".join(str(v) for v in r) + " |")
    if e2e_rows:
        print("\nEnd to end, `GET /recommend` over loopback HTTP to `bentoml serve` (1 worker), ms\n")
        print("| items | p50 explain=false | p99 | p50 explain=true | p99 | explain overhead (p50) |")
        print("|---:|---:|---:|---:|---:|---:|")
        for s, a, b, c, d, o in e2e_rows:
            print(f"| {s} | {a:.2f} | {b:.2f} | {c:.2f} | {d:.2f} | {o:+.0f} % |")


if __name__ == "__main__":
    main()
