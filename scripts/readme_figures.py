"""Regenerate the README's figures of the default bundles from one fresh build of each.

    .venv/bin/python scripts/readme_figures.py            # ~5-10 min on 2 idle cores

Runs the README's own commands in a fresh work folder (nothing reused from older code):
``recsae train --dataset ml-100k --out bundles/ml100k``, the same with ``--sae-encoder pursuit``
(it reuses that run's recommender and SAE: only the encoder differs) and ``recsae train
--dataset synthetic`` (the default `make serve` builds without ml-100k). It writes
``docs/figures.json``: the date, the commands, each bundle's version and, per figure, its value
and the exact README text that states it. ``tests/unit/test_readme_figures.py`` checks that
README.md contains every such text, so a README figure either comes from the latest run of
this script or the test fails. Paste the printed lines into the README after a run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "figures.json"

BUILDS = {
    "ml100k": ["--dataset", "ml-100k", "--out", "bundles/ml100k"],
    "ml100k-pursuit": ["--dataset", "ml-100k", "--sae-encoder", "pursuit", "--out", "bundles/ml100k-pursuit"],
    "synthetic": ["--dataset", "synthetic", "--out", "bundles/synthetic"],
}


def build(name: str, args: list[str], work: Path, threads: int | None) -> dict:
    """Run one README command (plus a private work folder) and return its summary."""
    summary = work / f"{name}.json"
    cmd = [sys.executable, "-m", "recsae.cli", "train", *args, "-q", "--work-dir", str(work), "--json", str(summary)]
    if threads:
        cmd += ["--threads", str(threads)]
    print("$", " ".join(["recsae", "train", *args]), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True)
    s = json.loads(summary.read_text())
    s["wall_s"] = round(time.perf_counter() - t0, 1)
    return s


def figures(s: dict[str, dict]) -> list[dict]:
    """Each figure: a name, its value, and the README text that states it (whitespace-normalised);
    only those of the builds in ``s``. Quality figures only: durations depend on what else the
    machine runs (they are in ``builds``; speed claims come from ``benchmarks/``)."""
    out = []
    d = s.get("ml100k")
    if d:
        c, q, held = d["concepts"], d["quality"], d["sae"]["heldout"]
        warn = "no warnings" if not q["warnings"] else f"{len(q['warnings'])} warning(s)"
        out += [
            ("ml100k_ndcg10_ratio", q["ndcg10_ratio"],
             f"On ml-100k the default bundle keeps {q['ndcg10_ratio']:.1%} of NDCG@10 over {q['measured_on']} "
             f"(held-out FVU {held['fvu']:.4f}, {held['dead_ratio']:.1%} dead latents; {warn})"),
            ("ml100k_mean_confidence", c["mean_confidence"],
             f"| mean confidence, paper protocol, SASRec/ml-100k, `stats` | {c['mean_confidence']:.3f} | ≥ 0.80 |"),
            ("ml100k_share_confidence_ge_0.8", c["share_confidence_ge_0.8"],
             f"| alive latents with confidence ≥ 0.8 | {c['share_confidence_ge_0.8']:.1%} | ≥ 60% |"),
            ("ml100k_detection", [c["mean_balanced_accuracy"], c["mean_auc"]],
             f"| strict detection: balanced accuracy / AUC | {c['mean_balanced_accuracy']:.3f} / {c['mean_auc']:.3f} |"),
        ]
    p = s.get("ml100k-pursuit")
    if d and p:
        c, pc = d["concepts"], p["concepts"]
        out += [
            ("pursuit_confidence", [c["mean_confidence"], pc["mean_confidence"],
                                    c["share_confidence_ge_0.8"], pc["share_confidence_ge_0.8"]],
             f"mean confidence falls from {c['mean_confidence']:.3f} to {pc['mean_confidence']:.3f} and the share of "
             f"concepts at ≥ 0.8 from {c['share_confidence_ge_0.8']:.0%} to {pc['share_confidence_ge_0.8']:.0%}"),
        ]
    y = s.get("synthetic")
    if y:
        out.append(("synthetic_sae", [y["concepts"]["n_latents"], y["sae"]["heldout"]["dead_ratio"], y["sae"]["heldout"]["fvu"]],
                    f"on the synthetic default that is {y['concepts']['n_latents']:,} latents, "
                    f"{y['sae']['heldout']['dead_ratio']:.1%} dead, held-out FVU {y['sae']['heldout']['fvu']:.4f}"))
    return [{"name": n, "value": v, "readme": t} for n, v, t in out]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work-dir", default="bundles/.readme-figures-work", help="emptied first: a fresh build")
    ap.add_argument("--threads", type=int, default=None, help="passed to recsae train")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--only", default=",".join(BUILDS), help="builds to run, comma separated")
    ap.add_argument("--render", action="store_true",
                    help="build nothing: write the figures of the summaries the last run left in --work-dir")
    a = ap.parse_args(argv)
    work = REPO / a.work_dir
    names = [n for n in a.only.split(",") if n]
    load_before = os.getloadavg()[0]
    if a.render:
        summaries = {n: json.loads((work / f"{n}.json").read_text()) for n in names if (work / f"{n}.json").exists()}
        for n in summaries:
            summaries[n].setdefault("wall_s", None)
    else:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        summaries = {name: build(name, BUILDS[name], work, a.threads) for name in names}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    doc = {
        "generated": time.strftime("%Y-%m-%d"),
        "command": "python scripts/readme_figures.py" + (f" --threads {a.threads}" if a.threads else ""),
        "commit": commit,
        # timings depend on what else ran: the 1-minute load average before and after, on os.cpu_count() cores
        "load_avg_1min": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        "cpu_count": os.cpu_count(),
        "builds": {n: {"command": "recsae train " + " ".join(BUILDS[n]), "version": s["version"],
                       "wall_s": s["wall_s"], "timings_s": s["timings_s"]} for n, s in summaries.items()},
        "figures": figures(summaries),
    }
    Path(a.out).write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    print(f"\nwrote {a.out}; the README must state each of these verbatim:")
    for f in doc["figures"]:
        print(" ", f["readme"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
