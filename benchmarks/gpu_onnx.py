"""The GPU serving path (onnxruntime-gpu's CUDA provider) against the CPU one, on a real bundle.

The service's `Engine` puts `CUDAExecutionProvider` first when onnxruntime-gpu sees a GPU (the
Dockerfile's `VARIANT=gpu`). This checks that path on a machine that has one:
- numerically: encoder outputs of every user (CUDA vs CPU provider), and the served answer built
  from each (top-k lists through the same NumPy kernel, concept codes, per-item contributions);
- speed: encoder latency at batch 1 and batch 256 on each provider, and one whole request
  (encode + SAE + score + top-k) at batch 1.

  python benchmarks/gpu_onnx.py --bundle PATH [--json OUT]

It needs no torch: numpy, safetensors and onnxruntime(-gpu) only. On a machine without a GPU it
says so and exits 2.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recsae.bundle import load_bundle  # noqa: E402
from recsae.engine import CUDA_PROVIDER  # noqa: E402
from recsae.kernel import SAEKernel, history_windows, recommend  # noqa: E402


def session(path: str, providers: list[str]):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, sess_options=opts, providers=providers)


def p50_ms(fn, repeats: int) -> float:
    fn()  # warm-up (CUDA graph capture, allocations)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--tf32", action="store_true", help="leave TF32 on (ONNX Runtime's default) to see what it changes")
    ap.add_argument("--dry-run-on-cpu", action="store_true",
                    help="run both sides on the CPU provider (checks this script on a machine without a GPU)")
    args = ap.parse_args()

    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):  # CUDA/cuDNN from the nvidia-* wheels, when present
        try:
            ort.preload_dlls()
        except Exception as e:  # noqa: BLE001 - report and go on: the provider check below decides
            print(f"preload_dlls: {e}")
    cuda = ("CUDAExecutionProvider", {"use_tf32": "1"}) if args.tf32 else CUDA_PROVIDER
    want = ["CPUExecutionProvider"] if args.dry_run_on_cpu else [cuda, "CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers() and not args.dry_run_on_cpu:
        print(f"no CUDAExecutionProvider (providers: {ort.get_available_providers()})")
        return 2

    bundle = load_bundle(args.bundle)
    model = bundle.model
    sae = SAEKernel.load(bundle.sae_path)
    item_emb = np.ascontiguousarray(bundle.item_emb, dtype=np.float32)  # the engine's layout
    enc = str(bundle.encoder_path)
    cpu = session(enc, ["CPUExecutionProvider"])
    gpu = session(enc, want)  # the service's provider list (engine.make_session)
    if not args.dry_run_on_cpu and gpu.get_providers()[0] != "CUDAExecutionProvider":
        print(f"CUDA provider did not load: session providers {gpu.get_providers()}")
        return 2
    name = cpu.get_inputs()[0].name

    users = np.arange(len(bundle.users.user_ids))
    if model["input_kind"] == "user":
        inputs = users.astype(np.int64)
    else:
        inputs = history_windows([bundle.users.history(int(u)) for u in users], int(model["max_len"]),
                                 int(model["n_items"]))

    def batch(rows: slice) -> np.ndarray:
        return inputs[rows]

    x_cpu = np.concatenate([cpu.run(None, {name: batch(slice(i, i + 256))})[0] for i in range(0, len(users), 256)])
    x_gpu = np.concatenate([gpu.run(None, {name: batch(slice(i, i + 256))})[0] for i in range(0, len(users), 256)])
    enc_diff = float(np.abs(x_cpu - x_gpu).max())
    enc_scale = float(np.abs(x_cpu).max())

    exclude = [bundle.users.history(int(u)) for u in users]
    top_c, score_c, codes_c, _ = recommend(sae, x_cpu, item_emb, args.k, exclude=exclude)
    top_g, score_g, codes_g, _ = recommend(sae, x_gpu, item_emb, args.k, exclude=exclude)
    same_lists = float(np.mean([np.array_equal(a, b) for a, b in zip(top_c, top_g)]))
    same_sets = float(np.mean([set(a) == set(b) for a, b in zip(top_c, top_g)]))
    same_codes = float(np.mean([set(a[v > 0]) == set(b[w > 0]) for a, v, b, w in
                                zip(codes_c.idx, codes_c.acts, codes_g.idx, codes_g.acts)]))
    # contributions to the same items (the CPU list), so the two explanations are comparable
    rows = slice(0, 64)
    vecs = item_emb[top_c[rows]]  # (64, k, d)
    ex_c = sae.explain(x_cpu[rows], codes_c._replace(idx=codes_c.idx[rows], acts=codes_c.acts[rows]), vecs)
    ex_g = sae.explain(x_gpu[rows], codes_g._replace(idx=codes_g.idx[rows], acts=codes_g.acts[rows]), vecs)
    same = np.array([np.array_equal(a, b) for a, b in zip(codes_c.idx[rows], codes_g.idx[rows])])
    contrib_diff = float(np.abs(ex_c.contributions[same] - ex_g.contributions[same]).max()) if same.any() else None
    score_part_diff = float(np.abs((ex_c.bias + ex_c.contributions.sum(1) + ex_c.error)
                                   - (ex_g.bias + ex_g.contributions.sum(1) + ex_g.error)).max())

    one = batch(slice(0, 1))
    b256 = batch(slice(0, 256))
    timing = {}
    for label, s in (("cpu", cpu), ("cuda", gpu)):
        timing[f"{label}_encode_b1_ms"] = p50_ms(lambda: s.run(None, {name: one}), args.repeats)
        timing[f"{label}_encode_b256_ms"] = p50_ms(lambda: s.run(None, {name: b256}), max(20, args.repeats // 10))
        timing[f"{label}_request_b1_ms"] = p50_ms(
            lambda: recommend(sae, s.run(None, {name: one})[0], item_emb, args.k, exclude=exclude[:1]), args.repeats)

    out = {
        "bundle": str(args.bundle),
        "bundle_hash": bundle.bundle_hash,
        "model": model.get("name") or model.get("kind"),
        "input_kind": model["input_kind"],
        "users": int(len(users)),
        "n_items": int(model["n_items"]),
        "onnxruntime": ort.__version__,
        "providers": gpu.get_providers(),
        "tf32": bool(args.tf32),
        "python": platform.python_version(),
        "encoder_max_abs_diff": enc_diff,
        "encoder_max_abs_value": enc_scale,
        "same_top_k_lists": same_lists,
        "same_top_k_sets": same_sets,
        "same_active_concepts": same_codes,
        "contribution_max_abs_diff_64_users": contrib_diff,
        "explained_score_max_abs_diff_64_users": score_part_diff,
        **{k: round(v, 4) for k, v in timing.items()},
    }
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
