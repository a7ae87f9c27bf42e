"""The default job on data it was not tuned on: does the quality search reach its target in time?

    .venv/bin/python benchmarks/quality_search.py --dataset grocery            # ../shared/data
    .venv/bin/python benchmarks/quality_search.py --dataset synthetic-10k      # generated here
    .venv/bin/python benchmarks/quality_search.py --dataset ml-100k

Runs ``recsae train --dataset D`` with no other flags (the defaults: SASRec, SAE k=8 x 1,024,
the quality search on with its 10-minute budget) and prints, from the summary, each SAE
setting the search tried (NDCG@10 kept over the held-out rows, held-out FVU, every fidelity
measure, seconds), the outcome, and the job's wall time per stage. ``synthetic-10k`` is
``make_synthetic`` with a ~10k-item catalogue written as a MovieLens-latest folder (ratings.csv,
movies.csv), so the job reads it like any dataset folder. Work folders are kept in ``--root``
so a re-run reuses the trained stages.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def write_synthetic(folder: Path, n_items: int, n_users: int, seed: int = 0) -> Path:
    """``make_synthetic`` as a MovieLens-latest folder (genres and styles as genres)."""
    from recsae.data.synthetic import make_synthetic

    if (folder / "ratings.csv").is_file():
        return folder
    ds, _ = make_synthetic(n_users=n_users, n_items=n_items, seed=seed, min_len=30, max_len=90)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "movies.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["movieId", "title", "genres"])
        for i in range(ds.n_items):
            feats = [n.split(":", 1)[1] for n in ds.item_features.of(i) if n.startswith(("genre:", "style:"))]
            w.writerow([ds.item_ids[i], ds.item_titles[i], "|".join(feats) or "(no genres listed)"])
    with open(folder / "ratings.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["userId", "movieId", "rating", "timestamp"])
        for u, i, t in zip(ds.users, ds.items, ds.times):
            w.writerow([ds.user_ids[u], ds.item_ids[i], "4.0", int(t)])
    return folder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="synthetic-10k", help="grocery, ml-100k, ... or synthetic-10k")
    ap.add_argument("--root", default="bundles/quality-search", help="bundles, work folders, generated data")
    ap.add_argument("--n-items", type=int, default=10_000)
    ap.add_argument("--n-users", type=int, default=1_000)
    ap.add_argument("extra", nargs="*", help="further `recsae train` flags (none: the defaults)")
    a = ap.parse_args()
    root = Path(a.root).resolve()
    name = a.dataset
    dataset = name
    if name == "synthetic-10k":
        dataset = str(write_synthetic(root / f"synthetic-{a.n_items}x{a.n_users}", a.n_items, a.n_users))
    out = root / name
    summary = root / f"{name}.json"
    cmd = [sys.executable, "-m", "recsae.cli", "train", "--dataset", dataset, "--out", str(out),
           "--work-dir", str(root / "work"), "--json", str(summary), *a.extra]
    print("$", " ".join(cmd), flush=True)
    t = time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(r.returncode)
    s = json.loads(summary.read_text())
    search, q = s["sae_search"], s["quality"]
    print(f"\n### {name}: `recsae train --dataset {name}` (no other flags), wall {wall:.0f} s\n")
    print(f"target: {search['target']['text']}; budget {search['budget_s']:.0f} s, spent {search['spent_s']:.0f} s\n")
    names = ["heldout_rows", "test_users", "sampled99", "top10_overlap"]
    print("| k x latents, epochs | NDCG@10 kept, held-out rows | FVU | test users | 99 sampled | top-10 overlap | s | |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for i, tr in enumerate(search["trials"]):
        ms = tr.get("measures", {})
        cells = [f"{ms[n]:.3f}" if n in ms else "–" for n in names[1:]]
        head = (f"{tr['ndcg10_kept']:.3f} | {tr['fvu']:.3f}" if "fvu" in tr else f"{tr.get('stopped', '')} | –")
        mark = "bundle" if i == search["chosen"] else ""
        print(f"| {tr['k']} x {tr['n_latents']:,}, {tr['epochs']}{' (cached)' if tr['cached'] else ''} | {head} | "
              f"{' | '.join(cells)} | {tr['seconds']:.0f} | {mark} |")
    print(f"\noutcome: {search['why']}\n")
    print("bundle's fidelity measures, worst first: "
          + "; ".join(f"{m['value']:.3f} {m['what']}" for m in q["measures"]))
    print("timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in s["timings_s"].items()))
    for w in q["warnings"]:
        print(f"warning: {w}")


if __name__ == "__main__":
    main()
