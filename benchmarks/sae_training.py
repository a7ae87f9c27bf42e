"""SAE training throughput and quality on SASRec/ml-100k activations, against the arithmetic floor.

    .venv/bin/python benchmarks/sae_training.py [--work-dir runs/bench] [--settings 8x16:60,32x32:120]

Captures (or reuses) the ~98k training-prefix activations of the default SASRec, then trains
the two reference settings (k=8 x 1,024 latents for 60 epochs, k=32 x 2,048 for 120) and
prints seconds per epoch, samples per second, held-out FVU and dead ratio, and NDCG@10 with
the reconstruction in the path relative to the original model: on the 943 test users, and on
all ~11.8k held-out rows (each held-out prefix's next item, plus the dev and test inputs).
The floor is the arithmetic a TopK step must do (dense encoder matmul forward + sparse
backward + k-row decoder) divided by this machine's measured fp32 matmul rate.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from recsae.data import leave_one_out
from recsae.pipeline import JobConfig, capture_activations, fidelity, kernel_of, load_data, train_recommender, work_dir_for
from recsae.quality import heldout_rows
from recsae.sae import SAEConfig
from recsae.train import SAETrainConfig, measure, train_sae


def matmul_gflops(n: int = 2048, d: int = 64, m: int = 2048, reps: int = 50) -> float:
    """fp32 rate on the SAE's own encoder shape (batch x d) @ (d x latents)."""
    a, b = torch.randn(n, d), torch.randn(d, m)
    for _ in range(5):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n * d * m * reps / (time.perf_counter() - t) / 1e9


def flops_per_sample(d: int, m: int, k: int) -> float:
    enc_fwd = 2 * d * m  # dense pre-activations: unavoidable to find the top-k
    enc_bwd = 2 * k * d * 2  # sparse grads of W_enc rows and b_dec
    dec = 2 * k * d * 3  # decoder forward + two backward products on k rows
    return enc_fwd + enc_bwd + dec


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work-dir", default="runs/bench")
    ap.add_argument("--epochs", type=int, default=SAETrainConfig.epochs, help="for settings without ':epochs'")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=SAETrainConfig.batch_size)
    ap.add_argument("--resample-until", type=float, default=SAETrainConfig.resample_until,
                    help="share of epochs with dead-latent resampling (0: AuxK only)")
    ap.add_argument("--resample", default=SAETrainConfig.resample, choices=["split", "residual"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--auxk-alpha", type=float, default=None, help="AuxK loss weight (default: SAEConfig's)")
    ap.add_argument("--aux-k", type=int, default=None, help="dead latents AuxK uses per sample")
    ap.add_argument("--settings", default="8x16:60,32x32:120", help="k x expansion[:epochs], comma separated")
    ap.add_argument("--pursuit", action="store_true",
                    help="also measure each SAE with the matching-pursuit inference encoder (--sae-encoder pursuit)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from recsae.cli import default_data_dir

    cfg = JobConfig(dataset="ml-100k", data_dir=default_data_dir(), progress=False)
    work = work_dir_for(cfg, Path(a.work_dir))
    split = leave_one_out(load_data(cfg))
    model, _ = train_recommender(cfg, split, work)
    acts = capture_activations(model, split, cfg, work)
    wide = heldout_rows(split, cfg, model, acts)
    train, held = np.asarray(acts.train), np.asarray(acts.heldout)
    rate = matmul_gflops()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {a.threads}")
    print(f"measured fp32 matmul rate (2048x64 @ 64x2048): {rate:.1f} GFLOP/s")
    print(f"activations: train {train.shape}, held-out {held.shape}")
    print(
        f"batch {a.batch_size}, '{a.resample}' resampling for the first {a.resample_until:.0%} of epochs, seed {a.seed}\n"
    )
    print(
        "| setting | epochs | s/epoch | samples/s | floor s/epoch | x floor | held-out FVU | held-out dead "
        "| train dead | NDCG@10 recon/orig, test users (95% CI) | the same, all held-out rows (95% CI) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for setting in a.settings.split(","):
        shape, _, epochs = setting.partition(":")
        k, exp = map(int, shape.split("x"))
        aux = {"auxk_alpha": a.auxk_alpha} if a.auxk_alpha is not None else {}
        sc = SAEConfig(d_in=train.shape[1], expansion=exp, k=k, aux_k=a.aux_k, **aux)
        tc = SAETrainConfig(
            epochs=int(epochs or a.epochs), batch_size=a.batch_size, resample_until=a.resample_until,
            resample=a.resample, seed=a.seed, progress=False,
        )
        res = train_sae(train, sc, tc, held)
        floor = flops_per_sample(sc.d_in, sc.n_latents, k) * len(train) / (rate * 1e9)
        for encoder in ("topk", "pursuit") if a.pursuit else ("topk",):
            kernel = replace(kernel_of(res.sae), encoder=encoder)
            fid = fidelity(model, split, kernel, wide)
            lo, hi = fid["ndcg10_ratio_reconstruction_ci95"]
            wlo, whi = fid["heldout_ndcg10_ratio_reconstruction_ci95"]
            h = res.heldout if encoder == "topk" else measure(kernel, held)
            print(
                f"| k={k} x {sc.n_latents}{'' if encoder == 'topk' else ', pursuit encoder'} | {tc.epochs} | "
                f"{res.seconds_per_epoch:.3f} | {res.samples_per_second:,.0f} | "
                f"{floor:.3f} | {res.seconds_per_epoch / floor:.1f} | {h.fvu:.4f} | {h.dead_ratio:.2%} | "
                f"{res.train.dead_ratio:.2%} | {fid['ndcg10_ratio_reconstruction']:.3f} ({lo:.3f}-{hi:.3f}) | "
                f"{fid['heldout_ndcg10_ratio_reconstruction']:.3f} ({wlo:.3f}-{whi:.3f}) |",
                flush=True,
            )


if __name__ == "__main__":
    main()
