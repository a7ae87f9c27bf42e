"""Two-process DistributedDataParallel SAE training (torchrun, gloo on CPU) on sharded files."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recsae.sae import SAEConfig
from recsae.train import SAETrainConfig, measure, train_sae
from recsae.sae import TopKSAE

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_sae import sparse_data  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_processes_match_single_process_quality(tmp_path):
    x = sparse_data(12000, 16, 48, 3, seed=7)
    train, held = x[:10000], x[10000:]
    np.save(tmp_path / "shard-0.npy", train[:5000])
    np.save(tmp_path / "shard-1.npy", train[5000:])
    np.save(tmp_path / "heldout.npy", held)
    epochs, k, exp = 12, 4, 4
    torchrun = Path(sys.executable).with_name("torchrun")
    env = dict(os.environ, RECSAE_DIST_BACKEND="gloo", OMP_NUM_THREADS="1")
    r = subprocess.run(
        [str(torchrun), "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={free_port()}",
         "-m", "recsae.dist_sae", "--shards", str(tmp_path / "shard-*.npy"), "--heldout", str(tmp_path / "heldout.npy"),
         "--out", str(tmp_path / "sae"), "--k", str(k), "--expansion", str(exp), "--epochs", str(epochs),
         "--batch-size", "256"],
        capture_output=True, text=True, timeout=300, env=env, cwd=Path(__file__).resolve().parents[2],
    )
    assert r.returncode == 0, r.stderr[-3000:]
    dist_metrics = json.loads((tmp_path / "sae" / "metrics.json").read_text())
    assert dist_metrics["world_size"] == 2
    assert dist_metrics["replica_max_abs_gap"] == 0.0  # the replicas stayed identical
    # same quality as one process seeing all the data with the same global batch (2 x 256)
    single = train_sae(train, SAEConfig(d_in=16, expansion=exp, k=k), SAETrainConfig(epochs=epochs, batch_size=512, progress=False), held)
    dist_fvu = measure(TopKSAE.load(tmp_path / "sae"), held).fvu
    assert abs(dist_fvu - dist_metrics["heldout"]["fvu"]) < 1e-6
    assert dist_fvu <= single.heldout.fvu * 1.25 + 0.01, (dist_fvu, single.heldout.fvu)
    assert dist_metrics["heldout"]["dead_ratio"] <= single.heldout.dead_ratio + 0.05
