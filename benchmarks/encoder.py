"""The SASRec user encoder: PyTorch eager vs ONNX Runtime, one thread, batch 1 and 64.

ONNX Runtime runs the bundle's own ``encoder.onnx`` (what the service serves); PyTorch runs the
same architecture rebuilt from the manifest's model config (``models.from_config``) — latency
does not depend on the weight values. Inputs are real history windows of the bundle's users.

    .venv/bin/python benchmarks/encoder.py --bundle bundles/ml100k

Prints a markdown table: p50 / p99 per call, per-user time, and the eager / ORT ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def timed(fn, n: int) -> np.ndarray:
    for _ in range(max(10, n // 10)):
        fn()
    out = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter()
        fn()
        out[i] = time.perf_counter() - t0
    return out * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="bundles/ml100k")
    ap.add_argument("--n", type=int, default=500)
    args = ap.parse_args()

    import onnxruntime as ort
    import torch

    import models
    from recsae.bundle import UserTable
    from recsae.kernel import history_windows

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    b = Path(args.bundle)
    manifest = json.loads((b / "manifest.json").read_text())
    cfg = manifest["model"]["config"]
    if manifest["model"]["input_kind"] != "history":
        raise SystemExit("this benchmark is for sequential (history) encoders")
    model = models.from_config(cfg).eval()
    enc = model.encoder_module().eval()
    users = UserTable.load(b / "users.npz")
    n_items, max_len = int(cfg["n_items"]), int(cfg["max_len"])

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(b / "encoder.onnx"), sess_options=opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    rows = []
    for batch in (1, 64):
        wins = [history_windows([users.history((i * batch + j) % len(users.user_ids)) for j in range(batch)],
                                max_len, n_items) for i in range(8)]
        tw = [torch.from_numpy(w) for w in wins]
        it = {"t": 0, "o": 0}

        def run_torch():
            it["t"] += 1
            with torch.inference_mode():
                return enc(tw[it["t"] % 8])

        def run_ort():
            it["o"] += 1
            return sess.run(None, {name: wins[it["o"] % 8]})[0]

        assert run_torch().shape == run_ort().shape == (batch, int(cfg["dim"]))
        n = args.n if batch == 1 else max(100, args.n // 4)
        tt, to = timed(run_torch, n), timed(run_ort, n)
        rows.append((batch, np.median(tt), np.percentile(tt, 99), np.median(to), np.percentile(to, 99)))

    print(f"\nSASRec encoder ({cfg['n_layers']} layer(s), d={cfg['dim']}, max_len={max_len}, {n_items} items); "
          f"{platform.machine()}, torch {torch.__version__}, onnxruntime {ort.__version__}, 1 thread\n")
    print("| batch | PyTorch eager p50 ms | p99 | ONNX Runtime p50 ms | p99 | per user, ORT µs | eager / ORT (p50) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for batch, tp50, tp99, op50, op99 in rows:
        print(f"| {batch} | {tp50:.3f} | {tp99:.3f} | {op50:.3f} | {op99:.3f} | {1e3 * op50 / batch:.1f} | "
              f"{tp50 / op50:.1f}x |")


if __name__ == "__main__":
    main()
