"""Data-parallel SAE training over sharded activation files, launched with ``torchrun``.

    torchrun --nproc_per_node=2 -m recsae.dist_sae --shards 'acts/shard-*.npy' --out sae_dir \\
        --k 8 --expansion 16 --epochs 30 [--heldout acts/heldout.npy]

Process ``r`` trains on the ``r``-th shard (sorted by name); gradients are averaged across
processes after every step (gloo on CPU, nccl on GPUs). Rank 0 writes the SAE and metrics.json.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from recsae.sae import SAEConfig
from recsae.train import SAETrainConfig, measure, train_sae


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shards", required=True, help="glob of .npy activation shards, one per process")
    ap.add_argument("--heldout", default=None)
    ap.add_argument("--out", required=True)
    ap.add_argument("--k", type=int, default=SAEConfig.k)
    ap.add_argument("--expansion", type=int, default=SAEConfig.expansion)
    ap.add_argument("--epochs", type=int, default=SAETrainConfig.epochs)
    ap.add_argument("--batch-size", type=int, default=2048, help="per process")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dead-after", type=int, default=SAEConfig.dead_after, help="samples without firing before a latent counts as dead")
    a = ap.parse_args(argv)
    backend = "nccl" if torch.cuda.is_available() and os.environ.get("RECSAE_DIST_BACKEND") != "gloo" else "gloo"
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    shards = sorted(glob.glob(a.shards))
    if len(shards) != world:
        raise SystemExit(f"{len(shards)} shards match {a.shards!r} but {world} processes run: give one shard per process")
    x = np.load(shards[rank], mmap_mode="r")
    cfg = SAEConfig(d_in=x.shape[1], expansion=a.expansion, k=a.k, dead_after=a.dead_after)
    tcfg = SAETrainConfig(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, seed=a.seed, progress=rank == 0)
    res = train_sae(np.asarray(x), cfg, tcfg)
    # Replicas must have stayed identical (resampling included): largest gap to rank 0's weights.
    gap = torch.zeros(1)
    for p in res.sae.parameters():
        ref = p.detach().clone()
        dist.broadcast(ref, src=0)
        gap = torch.maximum(gap, (p.detach() - ref).abs().max().reshape(1))
    dist.all_reduce(gap, op=dist.ReduceOp.MAX)
    if rank == 0:
        out = Path(a.out)
        res.sae.save(out)
        metrics = {"world_size": world, "replica_max_abs_gap": float(gap), "train_shard0": res.train.as_dict(), "seconds_per_epoch": res.seconds_per_epoch}
        if a.heldout:
            metrics["heldout"] = measure(res.sae, np.load(a.heldout)).as_dict()
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    # Leave without running C++ static destructors: at interpreter teardown gloo's transport
    # threads can still be joinable, and destroying them aborts the process ("terminate called
    # without an active exception", SIGABRT) after all work is done and written — seen on a
    # loaded 2-core machine. Everything is flushed and the group destroyed by now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
