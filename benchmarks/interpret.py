"""Interpretation benchmark: describe + score every latent of a real run, and print the targets.

Runs the offline job's stages through ``recsae.pipeline`` with a work directory, so finished
stages (recommender, activations, SAE) are reused from the cache; only interpretation is timed.

    .venv/bin/python benchmarks/interpret.py --work-dir /tmp/w1            # SASRec / ml-100k
    .venv/bin/python benchmarks/interpret.py --dataset synthetic --train-epochs 5 \
        --sae-epochs 8 --sae 1x4 --sae 2x4 --sae 4x8 --sae 16x8 --work-dir /tmp/wsyn

Targets (issue 3): on ml-100k (defaults: k=8, expansion 16) mean paper-protocol confidence
>= 0.80, >= 60% of alive latents >= 0.8, describing + scoring all latents < 60 s; on the
synthetic data recovery of the planted concepts >= 90% and description precision >= 0.8.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--data-dir", default=os.environ.get("RECSAE_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data")))
    p.add_argument("--work-dir", default=".recsae-work", help="cache of finished stages (reused)")
    p.add_argument("--sae", action="append", default=None, metavar="EXPANSIONxK",
                   help="SAE size(s) to measure, e.g. 16x8 (default: 16x8); repeatable")
    p.add_argument("--sae-epochs", type=int, default=40)
    p.add_argument("--train-epochs", type=int, default=None, help="recommender epochs (default: model default)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--atlas", default=None, help="also write the atlas HTML here")
    a = p.parse_args(argv)

    import numpy as np
    import torch

    from recsae.data import leave_one_out, make_synthetic
    from recsae.interpret import interpret_activations
    from recsae.interpret.atlas import render_atlas
    from recsae.interpret.scorers import planted_recovery
    from recsae.pipeline import (
        MODEL_KEYS, JobConfig, capture_activations, fit_sae, item_embeddings, kernel_of, load_data,
        train_recommender,
    )  # fmt: skip

    torch.set_num_threads(a.threads)
    base = JobConfig(
        dataset=a.dataset, data_dir=a.data_dir, seed=a.seed, threads=a.threads, progress=False,
        sae_epochs=a.sae_epochs, train_params={"epochs": a.train_epochs} if a.train_epochs else {},
    )  # fmt: skip
    work = Path(a.work_dir) / f"{base.dataset.replace('/', '_')}-{base.model}-{base.key(*MODEL_KEYS)}"
    work.mkdir(parents=True, exist_ok=True)
    ds = load_data(base)
    split = leave_one_out(ds)
    model, rec = train_recommender(base, split, work)
    acts = capture_activations(model, split, base, work)
    truth = make_synthetic()[1] if a.dataset == "synthetic" else None
    results, ok = [], True
    for spec in a.sae or ["16x8"]:
        exp, k = (int(v) for v in spec.lower().split("x"))
        cfg = replace(base, expansion=exp, k=k)
        sae, _ = fit_sae(cfg, acts, work)
        kernel = kernel_of(sae)
        t = time.perf_counter()
        d = interpret_activations(ds, kernel, item_embeddings(model), acts, describer="stats", seed=cfg.seed)
        seconds = time.perf_counter() - t
        s = d.summary
        conf = np.array([c.confidence for c in d.concepts if c.confidence is not None])
        rows = [
            ("dataset / model", f"{cfg.dataset} / {cfg.model} (test NDCG@10 {rec['test']['NDCG@10']:.4f})"),
            ("SAE", f"{kernel.n_latents} latents, k={kernel.k}; train {len(acts.train)} / held-out {len(acts.heldout)} samples"),
            ("latents alive / dead / undescribed", f"{s['n_alive']} / {s['n_dead']} / {s['n_undescribed']}"),
            ("paper confidence: mean (scored)", f"{s['mean_confidence']:.4f}   target >= 0.80"),
            ("paper confidence: share >= 0.8 (alive)", f"{s['share_confidence_ge_0.8']:.4f}   target >= 0.60"),
            ("paper confidence: quartiles", " / ".join(f"{q:.2f}" for q in np.quantile(conf, [0.25, 0.5, 0.75]))),
            ("strict detection: balanced accuracy", f"{s['mean_balanced_accuracy']:.4f}"),
            ("strict detection: AUC", f"{s['mean_auc']:.4f}"),
            ("describe + score seconds", f"{seconds:.1f}   target < 60"),
        ]
        met = s["mean_confidence"] >= 0.8 and s["share_confidence_ge_0.8"] >= 0.6 and seconds < 60
        gt = None
        if truth is not None:
            gt = planted_recovery(d.concepts, truth)
            rows += [
                ("planted concepts recovered", f"{gt['recovery']:.2f}   target >= 0.90"),
                ("description precision", f"{gt['precision']:.2f}   target >= 0.80 ({gt['n_well_scored']} well-scored latents)"),
            ]
            met = met and gt["recovery"] >= 0.9 and gt["precision"] >= 0.8
        w = max(len(r[0]) for r in rows)
        print(f"\n== SAE {spec} ==")
        print("\n".join(f"{k:<{w}}  {v}" for k, v in rows))
        print("examples (most frequent latents):")
        for c in sorted((c for c in d.concepts if c.confidence is not None), key=lambda c: -c.firing_frequency)[:5]:
            print(f"  latent {c.latent:4d} conf {c.confidence:.2f} BA {c.detection.balanced_accuracy:.2f}  {c.description[:150]}")
        print("targets met" if met else "targets NOT met")
        ok = ok and met
        results.append({"sae": spec, "summary": s, "seconds": seconds, "ground_truth": gt, "targets_met": met})
        if a.atlas:
            Path(a.atlas).write_text(render_atlas(d, f"Concept atlas — {cfg.dataset} SAE {spec}"))
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    return 0 if ok else 1

if __name__ == "__main__":
    sys.exit(main())
