"""Training speed by torch thread count, on a quiet machine and under load, side by side.

    .venv/bin/python benchmarks/threads.py [--rows 30000] [--epochs 2] [--busy 0]

Trains the default SAE shape (k=8 x 1,024 latents, d=64) on random activations for a few epochs,
each setting in a fresh interpreter, with 1 thread (the default of `recsae train`), one per CPU
this process may use, torch's own default, and `--threads auto` (CPUs less the load average,
measured at start). First with no load added, then with ``--busy`` (default: 2 per CPU) spinning
processes started by this script: each spins for at most ``--busy-max-s`` (30 min) and all are
killed when the measurement ends. Prints seconds per epoch and whether the weights equal the 1-thread run's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def spin(stop_at: float) -> None:
    """A busy process with a bounded life."""
    x = 0
    while time.monotonic() < stop_at:
        x += 1


def worker(settings: list[str], rows: int, epochs: int, repeats: int) -> list[dict]:
    """All settings in one interpreter, interleaved ``repeats`` times (drifting background load
    hits every setting alike); a setting is a thread count, "auto" or "torch" (torch's default)."""
    import numpy as np
    import torch

    from recsae import cpu_share
    from recsae.sae import SAEConfig
    from recsae.train import SAETrainConfig, train_sae

    torch_default = torch.get_num_threads()
    x = np.random.default_rng(0).standard_normal((rows, 64)).astype(np.float32)
    x[:, :8] *= 4  # some structure: a few strong directions
    out = {s: {"setting": s, "s_per_epoch": []} for s in settings}
    for _ in range(repeats):
        for s in settings:
            n = cpu_share() if s == "auto" else torch_default if s == "torch" else int(s)
            torch.set_num_threads(n)
            res = train_sae(x, SAEConfig(d_in=64, expansion=16, k=8), SAETrainConfig(epochs=epochs, progress=False, seed=0))
            h = hashlib.sha256()
            for v in res.sae.state_dict().values():
                h.update(v.detach().numpy().tobytes())
            out[s].update(threads=n, weights=h.hexdigest()[:12])
            out[s]["s_per_epoch"].append(res.seconds_per_epoch)
    return list(out.values())


def run_all(label: str, settings: list[str], a: argparse.Namespace) -> list[tuple]:
    """One fresh interpreter per load level (torch's default thread count is read at its start)."""
    cmd = [sys.executable, __file__, "--worker", ",".join(settings), "--rows", str(a.rows),
           "--epochs", str(a.epochs), "--repeats", str(a.repeats)]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    rows = []
    for r in json.loads(res.stdout.strip().splitlines()[-1]):
        med = statistics.median(r["s_per_epoch"])
        rows.append((label, r["setting"], r["threads"], med, r["weights"]))
        print(f"  {label:<28} {r['setting']:>6} -> {r['threads']} thread(s): {med:.2f} s/epoch", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=30000, help="activation rows (SASRec on ml-100k: ~98k)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="runs per setting; the median is reported")
    ap.add_argument("--busy", type=int, default=None, help="busy processes for the loaded run (default 2 per CPU)")
    ap.add_argument("--busy-max-s", type=float, default=1800, help="life of a busy process at most")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker.split(","), a.rows, a.epochs, a.repeats)))
        return

    cpus = len(os.sched_getaffinity(0))
    busy = a.busy if a.busy is not None else 2 * cpus
    settings = ["1", str(cpus), "torch", "auto"] if cpus > 1 else ["1", "torch", "auto"]
    print(f"{platform.processor() or platform.machine()}, {cpus} CPUs usable, SAE k=8 x 1,024, d=64, "
          f"{a.rows:,} rows, {a.epochs} epochs, median of {a.repeats}")
    load0 = os.getloadavg()[0]
    rows = run_all(f"no added load (load {load0:.1f})", settings, a)
    stop_at = time.monotonic() + a.busy_max_s
    procs = [mp.Process(target=spin, args=(stop_at,), daemon=True) for _ in range(busy)]
    for p in procs:
        p.start()
    try:
        time.sleep(5)  # let the load average see them (it is a 1-minute mean: it lags)
        rows += run_all(f"+{busy} busy processes", settings, a)
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.join(5)
    ref = {r[0]: r[4] for r in rows if r[1] == "1"}
    print("\n| load | --threads | torch threads | s / SAE epoch | vs 1 thread | weights = 1-thread run's |")
    print("|---|---|---|---|---|---|")
    base = {r[0]: r[3] for r in rows if r[1] == "1"}
    for label, s, n, sec, w in rows:
        name = {"torch": "none (torch default)", "auto": "auto"}.get(s, s)
        print(f"| {label} | {name} | {n} | {sec:.2f} | {sec / base[label]:.2f}x | {'yes' if w == ref[label] else 'no'} |")


if __name__ == "__main__":
    main()
