"""Serving latency: explain=false vs explain=true against a running `bentoml serve`.

Bounded load from this (second) process over loopback: ``--requests`` requests per cell, at
each ``--concurrency`` (threads, one keep-alive connection each), user ids cycling through the
bundle's users. Cells alternate explain=false / true in ``--rounds`` rounds so that drift in the
machine's load hits both alike. Prints a markdown table (p50, p99, throughput) and the median
overhead of explanations (target: <= 25 %).

    # start a server here (one worker, Redis concept cache on the shared Redis, private prefix)
    .venv/bin/python benchmarks/serving.py --bundle bundles/ml100k
    # or measure one that is already running
    .venv/bin/python benchmarks/serving.py --url http://127.0.0.1:3000 --bundle bundles/ml100k
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.devserver import Client, RedisServer, ServeProcess  # noqa: E402


def user_ids(bundle: str) -> list[str]:
    import numpy as np

    z = np.load(Path(bundle) / "users.npz", allow_pickle=False)
    return [str(u) for u in z["user_ids"]]


def run_cell(port: int, users: list[str], n: int, concurrency: int, flags: tuple[bool, ...], offset: int) -> dict:
    """``n`` users over ``concurrency`` connections; each user is asked once per explain flag in
    ``flags``. With both flags the two requests go back to back (order alternating per user), so
    drift of a shared machine hits both alike. Latencies are kept per flag."""
    lat: dict[bool, list[float]] = {f: [] for f in flags}
    errors = [0]
    lock = threading.Lock()
    counter = iter(range(n))

    def worker() -> None:
        c = Client(port, timeout=30)
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            user = users[(offset + i) % len(users)]
            for explain in (flags if i % 2 == 0 else flags[::-1]):
                params = {"user_id": user, "k": 10, "explain": "true" if explain else "false"}
                t0 = time.perf_counter()
                status, _ = c.request("GET", "/recommend", params, parse=False)
                dt = time.perf_counter() - t0
                with lock:
                    lat[explain].append(dt)
                    errors[0] += status != 200
        c.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"lat": lat, "wall": time.perf_counter() - t0, "errors": errors[0]}


def handler_seconds(port: int, explain: bool) -> tuple[float, float]:
    """(sum, count) of the server's own handler-time histogram for GET /recommend."""
    _, text = Client(port).request("GET", "/metrics", parse=False)
    out = [0.0, 0.0]
    flag = "true" if explain else "false"
    for line in text.decode().splitlines():
        for i, suffix in enumerate(("_sum", "_count")):
            if line.startswith(f"recsae_request_latency_seconds{suffix}{{") and f'explain="{flag}"' in line \
                    and 'route="GET /recommend"' in line:
                out[i] += float(line.rsplit(" ", 1)[1])
    return out[0], out[1]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="bundles/ml100k", help="bundle served (for user ids; and to start a server)")
    ap.add_argument("--url", help="a running server; default: start `bentoml serve` here")
    ap.add_argument("--redis-url", default="private",
                    help="REDIS_URL for a started server: 'private' (default) starts a redis-server on a free "
                         "port for the run, 'none' = no Redis, or a URL")
    ap.add_argument("--requests", type=int, default=500, help="measured requests per cell")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--rounds", type=int, default=2, help="alternations of explain=false/true per concurrency")
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--json", help="also write the raw numbers here")
    args = ap.parse_args(argv)

    users = user_ids(args.bundle)
    server = None
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    private = None
    if args.redis_url == "private" and not args.url:
        private = RedisServer().start()
        args.redis_url = private.url
    if args.url:
        port = urlparse(args.url).port or 80
    else:
        env = {"RECSAE_BUNDLE": args.bundle, "RECSAE_REDIS_PREFIX": prefix,
               "RECSAE_STATE_DIR": str(Path("/tmp") / f"recsae-bench-{prefix}")}
        if args.redis_url != "none":
            env["REDIS_URL"] = args.redis_url
        server = ServeProcess(env)
        t0 = time.perf_counter()
        server.start()
        print(f"started bentoml serve on port {server.port} in {time.perf_counter() - t0:.1f} s (ready)", file=sys.stderr)
        port = server.port
    try:
        for explain in (False, True):
            run_cell(port, users, args.warmup, 2, (explain,), 0)
        results: dict[tuple[int, bool], dict] = {}
        per_round = max(1, args.requests // args.rounds)
        for conc in args.concurrency:
            for r in range(args.rounds):
                for explain in (False, True):
                    s0, n0 = handler_seconds(port, explain)
                    cell = run_cell(port, users, per_round, conc, (explain,), offset=r * per_round)
                    s1, n1 = handler_seconds(port, explain)
                    acc = results.setdefault((conc, explain), {"lat": [], "wall": 0.0, "errors": 0, "hs": 0.0, "hn": 0.0})
                    acc["lat"] += cell["lat"][explain]
                    acc["wall"] += cell["wall"]
                    acc["errors"] += cell["errors"]
                    acc["hs"] += s1 - s0
                    acc["hn"] += n1 - n0
        paired = {conc: run_cell(port, users, args.requests, conc, (False, True), offset=7) for conc in args.concurrency}
    finally:
        if server is not None:
            server.stop()
        if private is not None:
            private.stop()
        elif server is not None and args.redis_url != "none":  # a shared Redis: remove our keys
            import redis

            r = redis.Redis.from_url(args.redis_url)
            keys = list(r.scan_iter(match=f"{prefix}:*", count=1000))
            if keys:
                r.delete(*keys)

    print(f"\nServing latency, `GET /recommend?k=10`, bundle `{args.bundle}`, "
          f"{'Redis concept cache (' + args.redis_url + ')' if args.redis_url != 'none' else 'no Redis'}, "
          f"1 worker, loopback; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs\n")
    print("| concurrency | explain | requests | p50 ms | p99 ms | throughput req/s | server handler mean ms | errors |")
    print("|---:|:---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for (conc, explain), acc in sorted(results.items()):
        lat = acc["lat"]
        row = {
            "concurrency": conc, "explain": explain, "requests": len(lat),
            "p50_ms": 1000 * statistics.median(lat), "p99_ms": 1000 * pct(lat, 0.99),
            "throughput": len(lat) / acc["wall"], "errors": acc["errors"],
            "handler_ms": 1000 * acc["hs"] / acc["hn"] if acc["hn"] else float("nan"),
        }
        rows.append(row)
        print(f"| {conc} | {str(explain).lower()} | {row['requests']} | {row['p50_ms']:.2f} | "
              f"{row['p99_ms']:.2f} | {row['throughput']:.0f} | {row['handler_ms']:.2f} | {row['errors']} |")
    print()
    ok = True
    for conc in args.concurrency:
        f = next(r for r in rows if r["concurrency"] == conc and not r["explain"])
        t = next(r for r in rows if r["concurrency"] == conc and r["explain"])
        overhead = t["p50_ms"] / f["p50_ms"] - 1
        print(f"- concurrency {conc}, separate cells: explain adds {100 * overhead:+.1f}% to the median")
    print()
    print("Paired (each user asked with explain off and on back to back, order alternating):\n")
    print("| concurrency | pairs | p50 ms explain=false | p50 ms explain=true | explain overhead (p50) | target <= 25% | errors |")
    print("|---:|---:|---:|---:|---:|:---:|---:|")
    for conc, cell in paired.items():
        lat = cell["lat"]
        off, on = 1000 * statistics.median(lat[False]), 1000 * statistics.median(lat[True])
        overhead = on / off - 1
        ok &= overhead <= 0.25 and cell["errors"] == 0
        rows.append({"concurrency": conc, "paired": True, "p50_off_ms": off, "p50_on_ms": on, "overhead": overhead,
                     "errors": cell["errors"]})
        print(f"| {conc} | {len(lat[True])} | {off:.2f} | {on:.2f} | {100 * overhead:+.1f}% | "
              f"{'met' if overhead <= 0.25 else 'missed'} | {cell['errors']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
