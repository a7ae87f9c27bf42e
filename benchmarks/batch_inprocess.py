"""In-process throughput of ``Core.run_batch`` on a large catalogue: requests answered per second
one at a time and in batches of 8 and 32 (what the batcher forms under 8 and 32 concurrent
clients), explained, without HTTP. ``--tree`` runs another source tree's ``service/`` and
``recsae/`` (e.g. the commit before, unpacked with ``git archive``) in this environment, so two
versions can be compared on the same bundle and machine; run them alternately.

    .venv/bin/python benchmarks/batch_inprocess.py --size 1000000
    git archive df7e66b recsae service | tar -x -C /tmp/base
    .venv/bin/python benchmarks/batch_inprocess.py --size 1000000 --tree /tmp/base

``--price``: the price of explanation without HTTP, per batch size: CPU microseconds per
request of ``run_batch`` + ``finish`` + orjson, the recommender alone (``plain``) vs
``explain=false`` vs ``explain=true`` (best of ``--rounds``), on ``--bundle`` (e.g. the ml-100k
bundle) or the synthetic one of ``--size``. Per-batch costs show at batch 1 (concurrency 1, the
paired-latency target of issue 17); per-request ones at 8 (what 16 clients form):

    .venv/bin/python benchmarks/batch_inprocess.py --price --bundle bundles/ml100k --batches 1,8

The 1M-item bundle is the synthetic one of ``benchmarks/catalogue_scale.py`` (built from
``bundles/ml100k`` on first use). Uses the shared Redis under a private prefix, removed after.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the service sets it (service/__init__.py)
ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1_000_000, help="items of the synthetic bundle")
    ap.add_argument("--tree", type=Path, default=None, help="source tree to measure (default: this one)")
    ap.add_argument("--requests", type=int, default=192, help="requests per cell")
    ap.add_argument("--rounds", type=int, default=3, help="best of this many rounds per cell")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--work", default=".pytest-bundles/synthetic", help="where synthetic bundles are kept")
    ap.add_argument("--bundle", type=Path, default=None, help="serve this bundle instead of the synthetic one")
    ap.add_argument("--price", action="store_true", help="plain vs explain=false vs explain=true per batch size")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from benchmarks import catalogue_scale  # this tree's, to build (or find) the bundle

    bundle = args.bundle or catalogue_scale.synthetic_bundle(args.size, ROOT / args.work / f"items-{args.size}")
    if args.tree is not None:  # the measured code: service/ and recsae/ of that tree
        sys.path.insert(0, str(args.tree.resolve()))
        for name in [m for m in sys.modules if m.split(".")[0] in ("recsae", "service")]:
            del sys.modules[name]
    import numpy as np
    import recsae
    from service.core import Core, Job
    from service.options import RecommendOptions

    prefix = f"bench-batch-{uuid.uuid4().hex[:8]}"

    def make(plain: bool = False) -> Core:
        return started_core(bundle, catalogue_scale.SHARED_REDIS, prefix, plain)

    if args.price:
        try:
            price([make(True), make()], args, Job, RecommendOptions)
        finally:
            catalogue_scale.cleanup(prefix)
        return
    core = make()
    try:
        users = [str(u) for u in core.bundle.users.user_ids]
        opts = RecommendOptions(k=10, explain=True)
        layout = "column-major" if core.engine.item_emb.flags.f_contiguous else "row-major"
        print(f"code: {Path(recsae.__file__).parents[1]}; {args.size:,} items ({layout}); "
              f"{args.requests} explained requests per cell, best of {args.rounds}")
        print("| batch | req/s | ms per request | ms per batch |\n|---:|---:|---:|---:|")
        for b in [int(v) for v in args.batches.split(",")]:
            core.run_batch([Job("user", users[i], None, opts) for i in range(b)])  # warm-up
            best = np.inf
            for r in range(args.rounds):
                t0 = time.perf_counter()
                for s in range(0, args.requests, b):
                    out = core.run_batch([Job("user", users[(r * args.requests + s + i) % len(users)], None, opts)
                                          for i in range(b)])
                    assert not any(isinstance(o, Exception) for o in out), out
                best = min(best, time.perf_counter() - t0)
            n = -(-args.requests // b) * b
            print(f"| {b} | {n / best:.0f} | {1000 * best / n:.2f} | {1000 * best * b / n:.1f} |", flush=True)
    finally:
        core.close()
        catalogue_scale.cleanup(prefix)


def started_core(bundle: Path, redis_url: str, prefix: str, plain: bool = False):
    """A started ``Core`` of ``bundle`` (the code under measurement: whichever ``service`` is
    imported), warmed up, under its own Redis prefix and state directory."""
    from service.config import Settings
    from service.core import Core

    core = Core(Settings(bundle=str(bundle), redis_url=redis_url, redis_prefix=prefix,
                         state_dir=tempfile.mkdtemp(prefix="recsae-bench-"), policy_sync_s=0, warmup=True,
                         plain_scores=plain))
    core.start()
    return core


def price(cores: list, args: argparse.Namespace, Job: type, RecommendOptions: type) -> None:
    import numpy as np
    import orjson

    plain, sae = cores
    users = [str(u) for u in sae.bundle.users.user_ids]
    ways = [("plain", plain, False), ("explain=false", sae, False), ("explain=true", sae, True)]
    print(f"code: {Path(sys.modules['service'].__file__).parents[1]}; bundle {args.bundle or args.size}; "
          f"{args.requests} requests per cell, best of {args.rounds}; CPU us per request")
    print("| batch | plain | explain=false | explain=true | true - plain | true - false |\n|---:|---:|---:|---:|---:|---:|")
    try:
        for b in [int(v) for v in args.batches.split(",")]:
            best = {name: np.inf for name, _, _ in ways}
            for r in range(args.rounds):
                for name, core, explain in ways:  # alternating: the machine's drift hits all three
                    opts = RecommendOptions(k=10, explain=explain)
                    t0 = time.process_time()
                    for s in range(0, args.requests, b):
                        jobs = [Job("user", users[(r * args.requests + s + i) % len(users)], None, opts)
                                for i in range(b)]
                        for scored in core.run_batch(jobs):
                            orjson.dumps(core.finish(scored, wire=True))
                    best[name] = min(best[name], (time.process_time() - t0) / (-(-args.requests // b) * b))
            p, f, t = (1e6 * best[name] for name, _, _ in ways)
            print(f"| {b} | {p:.0f} | {f:.0f} | {t:.0f} | {t - p:.0f} | {t - f:.0f} |", flush=True)
    finally:
        for c in cores:
            c.close()


if __name__ == "__main__":
    main()
