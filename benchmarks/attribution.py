"""Does the audit page's attribution find the items that drive a concept, and what does it cost?

For each user and each active concept, the history items are ranked by leave-one-out attribution
(``service.attribution``: the activation with the item minus without it, through the bundle's
ONNX encoder and SAE). Removing the top-m items must lower the concept's activation more than
removing m random items the model reads (the same window); a ranking no better than chance
would not. Cost: one attribution next to one explained ``/recommend`` answer (``Core``, in
process, one thread), medians over the users.

    .venv/bin/python benchmarks/attribution.py                      # the synthetic test bundle
    .venv/bin/python benchmarks/attribution.py --dataset ml-100k    # SASRec on ml-100k (../shared/data)
    .venv/bin/python benchmarks/attribution.py --bundle bundles/ml100k

Prints a markdown table: mean relative drop in activation, top-m vs random-m, and the share of
(user, concept) pairs where removing the top-m lowers it more than the mean random draw.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="recsae-prom-"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def activation(engine, histories: list[np.ndarray], latent: int) -> np.ndarray:
    codes = engine.sae.encode(engine.encode_histories(histories))
    return np.where(codes.idx == latent, codes.acts, 0.0).sum(axis=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", help="a sequential bundle (default: the test bundle of --dataset)")
    ap.add_argument("--dataset", default="synthetic", choices=["synthetic", "ml-100k"])
    ap.add_argument("--users", type=int, default=200, help="users evaluated (evenly spaced)")
    ap.add_argument("--draws", type=int, default=10, help="random removals per (user, concept, m)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    if args.bundle:
        bundle = Path(args.bundle)
    else:
        from tests.conftest import build_small_bundle, serving_bundle, shared_data_dir

        bundle = serving_bundle() if args.dataset == "synthetic" else build_small_bundle(shared_data_dir())
    os.environ["RECSAE_BUNDLE"] = str(bundle)
    os.environ.pop("REDIS_URL", None)
    os.environ["RECSAE_AUDIT_SAMPLE"] = "0"
    from service.attribution import attribute, top_positions
    from service.config import Settings
    from service.core import Core

    core = Core(Settings.from_env())
    core.start()
    engine = core.engine
    if engine.input_kind != "history":
        raise SystemExit("leave-one-out needs a sequential bundle (SASRec): this one encodes user ids")
    rng = np.random.default_rng(args.seed)
    n_users = len(engine.bundle.users.user_ids)
    users = np.unique(np.linspace(0, n_users - 1, min(args.users, n_users)).astype(int))
    ms = (1, 3)
    drops: dict[tuple[str, int], list[float]] = {(kind, m): [] for kind in ("top", "random") for m in ms}
    wins: dict[int, list[bool]] = {m: [] for m in ms}
    t_attr, t_rec = [], []
    for u in users.tolist():
        hist = engine.bundle.users.history(u)
        uid = str(engine.bundle.users.user_ids[u])
        t0 = time.perf_counter()
        res = attribute(engine, hist, u)
        t_attr.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        core.recommend_user(uid, k=10, explain=True, suppress={}, policy=None, exclude_seen=True, mode=None)
        t_rec.append(time.perf_counter() - t0)
        window = np.flatnonzero(res["in_window"])
        for c, j in enumerate(res["latents"].tolist()):
            a = res["activations"][c]
            for m in ms:
                top = top_positions(res["attr"][:, c], m, a)
                if len(top) < m or len(window) <= m:
                    continue  # fewer than m items drive it: nothing to compare
                rand = [rng.choice(window, m, replace=False) for _ in range(args.draws)]
                after = activation(engine, [np.delete(hist, top)] + [np.delete(hist, r) for r in rand], j)
                d_top, d_rand = (a - after[0]) / a, (a - after[1:]) / a
                drops[("top", m)].append(d_top)
                drops[("random", m)].append(float(d_rand.mean()))
                wins[m].append(d_top > d_rand.mean())
    print(f"bundle {bundle.name}: {len(users)} users, window {engine.max_len}, k={engine.sae.k}, {args.draws} random draws\n")
    print("| items removed | pairs | mean drop, top-attributed | mean drop, random | ratio | top lowers it more |")
    print("|---|---|---|---|---|---|")
    for m in ms:
        top, rnd = np.mean(drops[("top", m)]), np.mean(drops[("random", m)])
        print(f"| {m} | {len(wins[m])} | {100 * top:.1f}% | {100 * rnd:.1f}% | {top / max(rnd, 1e-12):.1f}x | "
              f"{100 * np.mean(wins[m]):.1f}% |")
    a, r = 1e3 * np.median(t_attr), 1e3 * np.median(t_rec)
    print(f"\ncost per user (median, one thread): attribution {a:.2f} ms vs one explained /recommend {r:.2f} ms "
          f"({a / r:.1f}x); p90 attribution {1e3 * np.percentile(t_attr, 90):.2f} ms")
    core.close()


if __name__ == "__main__":
    main()
