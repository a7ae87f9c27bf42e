"""The hot path, as ratios measured side by side in one run (issue 17).

1. **Price of explanation** (the ml-100k bundle, ~1.7k items): the same bundle served by the same
   server three ways — the recommender alone (``RECSAE_PLAIN_SCORES=1``: no SAE encode, no
   steering, no explanation), ``explain=false`` and ``explain=true``. Paired at concurrency 1
   (each user asked the three ways back to back, order rotating), and throughput at 16
   concurrent clients (cells alternating, ``--rounds`` rounds); with ``--python-hotpath`` also
   ``explain=true`` without the compiled hot path (``RECSAE_COMPILED_HOTPATH=0``).
2. **The limit**: in process, exact scoring + top-k of 1, 8 and 32 users, the code before
   (``X @ E.T`` + exclusion + ``top_items``) and now (``recsae.kernel.score_top_k``), against
   the time to read the item matrix once at the machine's memory bandwidth (measured here, in
   the same run: a streaming sum over a 512 MiB array).
3. **Against the previous commit**: throughput at 32 concurrent clients, ``explain=true``, of
   ``--base`` (a git worktree of the previous commit, e.g. ``git worktree add /tmp/base 05dee8a``)
   and of this tree, at 1.7k and 1M items (a synthetic bundle, ``benchmarks/catalogue_scale.py``),
   servers alternating.

    .venv/bin/python benchmarks/hot_path.py --base /tmp/base
    .venv/bin/python benchmarks/hot_path.py --base /tmp/base --sizes 1682 --requests 300
    .venv/bin/python benchmarks/hot_path.py --parts floor --sizes 1000000   # part 2 alone
    .venv/bin/python benchmarks/hot_path.py --parts price --python-hotpath  # + the Python hot path

Every server: one worker, its own private redis-server, loopback HTTP, BentoML's access log on
(the service's default; ``--access-log off`` for part 1 without it). Prints markdown.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the service sets it (service/__init__.py)
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks import catalogue_scale  # noqa: E402
from benchmarks.serving import run_cell, user_ids  # noqa: E402
from tests.devserver import Client, RedisServer, ServeProcess  # noqa: E402


class TreeServer(ServeProcess):
    """``bentoml serve`` of the service in another source tree (its ``service/`` and ``recsae/``
    first on PYTHONPATH; the packages are this environment's, see ``_as_installed``)."""

    def __init__(self, tree: Path, env: dict[str, str]):
        super().__init__({**env, "PYTHONPATH": env.get("PYTHONPATH", str(tree))})
        self.tree = tree

    def launch(self) -> "TreeServer":
        bentoml = Path(sys.executable).with_name("bentoml")
        cmd = [str(bentoml), "serve", "service.service:RecSAEService", "--port", str(self.port), "--host", "127.0.0.1"]
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=self.tree, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        return self


def serve(tree: Path, bundle: Path, redis_url: str, **extra: str) -> TreeServer:
    env = {"RECSAE_BUNDLE": str(Path(bundle).resolve()), "REDIS_URL": redis_url, "RECSAE_REDIS_PREFIX": f"hot-{uuid.uuid4().hex[:8]}",
           "RECSAE_STATE_DIR": tempfile.mkdtemp(prefix="recsae-hot-"), "RECSAE_AUDIT_SAMPLE": "0", **extra}
    return TreeServer(tree, env).start(timeout=180)


def server_cpu(srv: TreeServer) -> float:
    """CPU seconds (user + system) used so far by a server's process tree."""
    import psutil

    procs = [psutil.Process(srv.proc.pid)]
    procs += procs[0].children(recursive=True)
    return sum(sum(p.cpu_times()[:2]) for p in procs)


def ms(xs: list[float]) -> float:
    return 1000 * statistics.median(xs)


# -- 1. price of explanation ------------------------------------------------------------------------
def price(bundle: Path, redis_url: str, n: int, rounds: int, python_cell: bool = False) -> list[str]:
    """Paired latency at concurrency 1, then throughput at 16 clients. Each throughput round starts
    a fresh pair of servers: one process's speed varies by +-15% on this VM from one start to the
    next (its event loop thread, same code and load: 1,307-1,773 us CPU a request over four
    starts), so the rounds' medians compare processes, not one lucky or unlucky start."""
    users = user_ids(str(bundle))
    out: list[str] = []
    plain, sae = _pair(bundle, redis_url, users)
    try:
        # paired, concurrency 1: the three ways back to back per user, order rotating
        ways = [("plain", plain.port, False), ("explain=false", sae.port, False), ("explain=true", sae.port, True)]
        lat: dict[str, list[float]] = {w[0]: [] for w in ways}
        cp, cs = Client(plain.port, timeout=30), Client(sae.port, timeout=30)
        for i in range(n):
            u = users[(11 + i) % len(users)]
            for name, port, explain in ways[i % 3:] + ways[: i % 3]:
                c = cp if port == plain.port else cs
                t0 = time.perf_counter()
                st, _ = c.request("GET", "/recommend", {"user_id": u, "k": 10, "explain": str(explain).lower()},
                                  parse=False)
                lat[name].append(time.perf_counter() - t0)
                assert st == 200, st
        cp.close()
        cs.close()
    finally:
        plain.stop()
        sae.stop()
    base = ms(lat["plain"])
    out += ["### Price of explanation (1.7k items), paired, concurrency 1", "",
            "| served as | requests | p50 ms | p99 ms | p50 vs plain | p50 vs explain=false |", "|---|---:|---:|---:|---:|---:|"]
    for name in lat:
        xs = sorted(lat[name])
        out.append(f"| {name} | {len(xs)} | {ms(xs):.2f} | {1000 * xs[int(0.99 * (len(xs) - 1))]:.2f} | "
                   f"{ms(xs) / base:.2f}x | {ms(xs) / ms(lat['explain=false']):.3f}x |")
    # throughput at 16 clients: per round a fresh server pair, cells in rotating order; also each
    # server's own CPU time per request (its process tree), which the load generator beside it
    # on this machine moves less than it moves the wall clock
    names = ["plain", "explain=false", "explain=true"] + (["explain=true, Python hot path"] if python_cell else [])
    thr: dict[str, list[float]] = {w: [] for w in names}
    cpu: dict[str, list[float]] = {w: [] for w in names}
    for r in range(rounds):
        plain, sae = _pair(bundle, redis_url, users)
        py = None
        try:
            ways = [("plain", plain, False), ("explain=false", sae, False), ("explain=true", sae, True)]
            if python_cell:  # the same server without the compiled hot path (service/_hotpath.c)
                py = serve(ROOT, bundle, redis_url, RECSAE_COMPILED_HOTPATH="0")
                run_cell(py.port, users, 200, 4, (True,), 0)
                ways.append((names[-1], py, True))
            for name, srv, explain in ways[r % len(ways):] + ways[: r % len(ways)]:
                c0 = server_cpu(srv)
                cell = run_cell(srv.port, users, n, 16, (explain,), offset=r * n)
                cpu[name].append((server_cpu(srv) - c0) / n)
                assert cell["errors"] == 0
                thr[name].append(n / cell["wall"])
        finally:
            for srv in (plain, sae, py):
                if srv is not None:
                    srv.stop()
        print(f"price round {r + 1}/{rounds}: " + ", ".join(f"{w} {thr[w][-1]:.0f}" for w in names), file=sys.stderr)
    p, pc = statistics.median(thr["plain"]), statistics.median(cpu["plain"])
    out += ["", f"Throughput at 16 concurrent clients ({n} requests a cell; median of {rounds} rounds, each with a "
            "fresh pair of servers):", "",
            "| served as | req/s | vs plain | per round | server CPU us/request | vs plain |", "|---|---:|---:|---|---:|---:|"]
    for name in names:
        t, c = statistics.median(thr[name]), statistics.median(cpu[name])
        rounds_ = " ".join(f"{x:.0f}" for x in thr[name])
        out.append(f"| {name} | {t:.0f} | {t / p:.2f}x | {rounds_} | {1e6 * c:.0f} | {c / pc:.2f}x |")
    for name in names[2:]:
        ratios = sorted(e / q for e, q in zip(thr[name], thr["plain"]))
        out += ["", f"{name} / plain within each round: {' '.join(f'{x:.2f}' for x in ratios)} "
                f"(median {statistics.median(ratios):.2f})"]
    return out


def _pair(bundle: Path, redis_url: str, users: list[str]) -> tuple[TreeServer, TreeServer]:
    """A server of the recommender alone and one with the SAE, warmed up."""
    plain = serve(ROOT, bundle, redis_url, RECSAE_PLAIN_SCORES="1")
    try:
        sae = serve(ROOT, bundle, redis_url)
    except BaseException:
        plain.stop()
        raise
    for srv in (plain, sae):
        run_cell(srv.port, users, 200, 4, (False, True), 0)
    return plain, sae


# -- 2. the memory-bandwidth floor ------------------------------------------------------------------
def floor(n_items: int, d: int = 64, reps: int = 7, batches: tuple[int, ...] = (1, 8, 32), k: int = 10,
          n_seen: int = 100) -> list[str]:
    """Exact scoring + top-k of a batch, in process, against one read of the item matrix at the
    bandwidth measured here. Old: column-major items, ``X @ E.T``, seen items set to -inf,
    ``top_items`` (Core.run_batch before ``score_top_k``); new: ``score_top_k`` on row-major
    items (the engine's layout now) and, for the record, on column-major ones. The cells of a
    batch size run in turn, best of ``reps`` each, so drift of a shared machine hits all alike."""
    from recsae.kernel import score_top_k, top_items

    rng = np.random.default_rng(0)
    big = np.ones(128 * 2**20, dtype=np.float32)  # 512 MiB
    big.sum()
    t = min(_time(big.sum) for _ in range(reps))
    bw = big.nbytes / t
    del big
    E = rng.standard_normal((n_items, d), dtype=np.float32)  # row-major: the engine's layout
    EF = np.asfortranarray(E)  # column-major: the layout before
    fl = E.nbytes / bw
    out = [f"### Exact scoring + top-{k} against the memory-bandwidth floor ({n_items:,} items x {d}, float32 = "
           f"{E.nbytes / 2**20:.0f} MiB; {n_seen} seen items excluded per user)", "",
           f"Read bandwidth measured in this run: {bw / 1e9:.1f} GB/s (sum over 512 MiB, best of {reps}); "
           f"floor = one read of the item matrix = {1000 * fl:.2f} ms. OPENBLAS_NUM_THREADS="
           f"{os.environ.get('OPENBLAS_NUM_THREADS')}. ms, best of {reps}.", "",
           "| users | old: `X @ E.T` alone | old: + exclusion + `top_items` | new: `score_top_k` | speed-up | "
           "new per user | new vs floor | `score_top_k`, column-major items | same answer |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|:---:|"]
    for b in batches:
        X = rng.standard_normal((b, d), dtype=np.float32)
        seen = [rng.choice(n_items, n_seen, replace=False) for _ in range(b)]

        def old() -> tuple[np.ndarray, np.ndarray]:
            scores = X @ EF.T
            for r, s in enumerate(seen):
                scores[r, s] = -np.inf
            return top_items(scores, k)

        cells = {"matmul": lambda: X @ EF.T, "old": old, "new": lambda: score_top_k(X, E, k, seen),
                 "newF": lambda: score_top_k(X, EF, k, seen)}
        best = dict.fromkeys(cells, np.inf)
        for _ in range(reps):
            for name, fn in cells.items():
                best[name] = min(best[name], _time(fn))
        (oi, osc), (ni, nsc) = old(), score_top_k(X, E, k, seen)
        # one user: numpy's x @ E.T is a matrix-vector product, score_top_k a matrix product
        # (batch-invariant); their last bits differ, so compare ids and scores to float32 rounding
        same = np.array_equal(oi, ni) and np.allclose(osc, nsc, rtol=1e-5, atol=1e-5)
        out.append(f"| {b} | {1000 * best['matmul']:.1f} | {1000 * best['old']:.1f} | {1000 * best['new']:.1f} | "
                   f"{best['old'] / best['new']:.2f}x | {1000 * best['new'] / b:.2f} | {best['new'] / fl:.2f}x | "
                   f"{1000 * best['newF']:.1f} | {'yes' if same else 'NO'} |")
    return out


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# -- 3. against the previous commit -----------------------------------------------------------------
_STRIP = """
import json, sys
from pathlib import Path
from pydantic import ValidationError
from recsae.concepts import Concept
path = Path(sys.argv[1])
concepts = json.loads(path.read_text())
def fit(c):
    while True:
        try:
            Concept.model_validate(c)
            return c
        except ValidationError as e:
            extra = [err["loc"] for err in e.errors() if err["type"] == "extra_forbidden"]
            if not extra:
                raise
            for loc in extra:
                d = c
                for key in loc[:-1]:
                    d = d[key]
                d.pop(loc[-1], None)
rows = concepts["concepts"] if isinstance(concepts, dict) else concepts
rows[:] = [fit(c) for c in rows]
path.write_text(json.dumps(concepts))
"""


def _as_installed(tree: Path) -> dict[str, str]:
    """Environment for serving an older tree with the packages it declared: uvicorn picks uvloop
    up whenever it is importable, so for a tree whose pyproject does not list it, a stub on its
    path makes ``import uvloop`` fail (the asyncio loop it was served with)."""
    if "uvloop" in (tree / "pyproject.toml").read_text():
        return {}
    stub = Path(tempfile.mkdtemp(prefix="recsae-no-uvloop-"))
    (stub / "uvloop.py").write_text("raise ImportError('not a dependency of this tree')\n")
    return {"PYTHONPATH": f"{stub}:{tree}"}


def compat_bundle(bundle: Path, tree: Path, work: Path) -> Path:
    """``bundle`` as an older tree's service reads it: a copy whose concepts.json keeps only the
    fields that tree's ``Concept`` schema knows (later commits added some; its schema forbids
    unknown ones), with the manifest's hashes redone. Everything served is unchanged."""
    import json
    import shutil

    from recsae.bundle import MANIFEST, _hash_tree, files_hash

    out = work.resolve() / f"compat-{tree.name}-{bundle.name}"
    if (out / MANIFEST).is_file():
        return out
    tmp = work.resolve() / f".compat-{uuid.uuid4().hex[:8]}"
    shutil.copytree(bundle, tmp, ignore=shutil.ignore_patterns("*.html"))
    subprocess.run([sys.executable, "-c", _STRIP, str(tmp / "concepts.json")], cwd=tree,
                   env={**os.environ, "PYTHONPATH": str(tree)}, check=True)
    manifest = json.loads((tmp / MANIFEST).read_text())
    manifest["files"] = _hash_tree(tmp)
    manifest["bundle_hash"] = files_hash(manifest["files"])
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, out)
    return out


def versus(base: Path, sizes: list[int], work: Path, redis_url: str, n: int, rounds: int, conc: int) -> list[str]:
    out = [f"### Throughput at {conc} concurrent clients, explain=true: previous commit vs this tree", "",
           "| items | previous req/s | this tree req/s | ratio | per round (previous / this) | previous p50 ms | "
           "this p50 ms | errors |",
           "|---:|---:|---:|---:|---|---:|---:|---:|"]
    base_env = _as_installed(base)
    for size in sizes:
        bundle = catalogue_scale.BASE if size <= 1682 else catalogue_scale.synthetic_bundle(size, work / f"items-{size}")
        users = user_ids(str(bundle))
        served = {base: (compat_bundle(bundle, base, work), base_env), ROOT: (bundle, {})}
        res: dict[str, dict] = {"base": {"thr": [], "lat": [], "err": 0}, "this": {"thr": [], "lat": [], "err": 0}}
        for r in range(rounds):
            for name, tree in (("base", base), ("this", ROOT)) if r % 2 == 0 else (("this", ROOT), ("base", base)):
                srv = serve(tree, served[tree][0], redis_url, **served[tree][1])
                try:
                    run_cell(srv.port, users, 64, conc, (True,), 0)  # warm-up
                    cell = run_cell(srv.port, users, n, conc, (True,), offset=r * n)
                finally:
                    srv.stop()
                res[name]["thr"].append(n / cell["wall"])
                res[name]["lat"] += cell["lat"][True]
                res[name]["err"] += cell["errors"]
        b, t = statistics.median(res["base"]["thr"]), statistics.median(res["this"]["thr"])
        rounds_ = " ".join(f"{x:.0f}/{y:.0f}" for x, y in zip(res["base"]["thr"], res["this"]["thr"]))
        out.append(f"| {size:,} | {b:.0f} | {t:.0f} | {t / b:.2f}x | {rounds_} | {ms(res['base']['lat']):.1f} | "
                   f"{ms(res['this']['lat']):.1f} | {res['base']['err'] + res['this']['err']} |")
        print(f"done {size}", file=sys.stderr, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default=str(catalogue_scale.BASE), help="the ml-100k bundle (1.7k items)")
    ap.add_argument("--base", type=Path, help="source tree of the previous commit (part 3 skipped without)")
    ap.add_argument("--sizes", default="1682,1000000")
    ap.add_argument("--requests", type=int, default=1500,
                    help="requests per cell (and paired per way); cells of a few hundred vary by 10-20%% here")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--work", default=".pytest-bundles/synthetic", help="where synthetic bundles are kept")
    ap.add_argument("--parts", default="price,floor,versus")
    ap.add_argument("--access-log", choices=("on", "off"), default="on",
                    help="BentoML's access log of the servers (RECSAE_ACCESS_LOG; the service's default: on)")
    ap.add_argument("--python-hotpath", action="store_true",
                    help="part 1 also serves explain=true without the compiled hot path (RECSAE_COMPILED_HOTPATH=0)")
    args = ap.parse_args()
    if args.access_log == "off" and "versus" in args.parts.split(",") and args.base:
        ap.error("--access-log off: the previous commit of part 3 cannot turn it off; use --parts price")
    os.environ["RECSAE_ACCESS_LOG"] = "1" if args.access_log == "on" else "0"
    catalogue_scale.BASE = Path(args.bundle)
    parts = args.parts.split(",")
    load = os.getloadavg()
    lines = Printer([f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average at start "
                     f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}; bundle {args.bundle}; access log "
                     f"{args.access_log}", ""])
    with RedisServer() if {"price", "versus"} & set(parts) else contextlib.nullcontext() as rs:
        if "price" in parts:
            lines += price(Path(args.bundle), rs.url, args.requests, args.rounds, args.python_hotpath) + [""]
            print("done price", file=sys.stderr, flush=True)
        if "floor" in parts:
            for size in [int(s) for s in args.sizes.split(",")]:
                lines += floor(size) + [""]
        if "versus" in parts and args.base:
            lines += versus(args.base.resolve(), [int(s) for s in args.sizes.split(",")], Path(args.work), rs.url,
                            args.requests, args.rounds, 32) + [""]
    load = os.getloadavg()
    lines += [f"load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}"]


class Printer(list):
    """A list of output lines that prints what is added as it comes (a long run shows its parts)."""

    def __init__(self, first: list[str]):
        super().__init__()
        self += first

    def __iadd__(self, more):  # type: ignore[override]
        more = list(more)
        print("\n".join(more), flush=True)
        self.extend(more)
        return self


if __name__ == "__main__":
    main()
