"""Train BPR-MF, LightGCN and SASRec (plus popularity) on ml-100k and print test metrics.

Protocol: every rating is an implicit interaction; chronological leave-one-out (last item ->
test, second-to-last -> dev); full ranking over all items excluding the user's seen items;
early stopping on dev NDCG@10. The sampled protocol (99 negatives the user never rated) is
printed for comparison with older papers. Targets (checked at the end): SASRec test NDCG@10 >=
0.10, and every model >= 1.5x the popularity baseline's NDCG@10.

    .venv/bin/python benchmarks/recommenders.py [--data PATH] [--models sasrec ...]
                                                [--check-onnx] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models  # noqa: E402
from models.training import TrainConfig, fit  # noqa: E402
from recsae.data.core import Dataset, FeatureTable, leave_one_out  # noqa: E402
from recsae.evaluate import (  # noqa: E402
    eval_users,
    evaluate_reps,
    evaluate_scores,
    popularity_scores,
    sample_negatives,
)

SASREC_TARGET = 0.10
POP_FACTOR = 1.5


def default_data() -> Path:
    env = os.environ.get("RECSAE_DATA_DIR")
    return Path(env) / "ml-100k" if env else Path("/work/shared/data/ml-100k")


def load_ml100k(path: Path) -> Dataset:
    """The project loader if present; otherwise a minimal reader of ``u.data``."""
    try:
        from recsae.data.loaders import load_ml100k as project_loader
    except ImportError:
        project_loader = None
    if project_loader is not None:
        return project_loader(path)
    raw = np.loadtxt(path / "u.data", dtype=np.int64)
    uids, users = np.unique(raw[:, 0], return_inverse=True)
    iids, items = np.unique(raw[:, 1], return_inverse=True)
    return Dataset(
        name="ml-100k",
        user_ids=uids.astype(str),
        item_ids=iids.astype(str),
        users=users,
        items=items,
        times=raw[:, 3],
        item_titles=[f"item {i}" for i in iids],
        item_features=FeatureTable.empty(len(iids)),
    )


def onnx_diff(model: models.Recommender, split, users: np.ndarray) -> float:
    """Export the encoder and compare ONNX Runtime with PyTorch on the serving inputs."""
    import tempfile

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        path = models.export_onnx(model, Path(tmp) / f"{model.name}.onnx")
        random_diff = models.check_onnx(model, path)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        x = model.encoder_inputs(split, users, "serve")
        with torch.no_grad():
            ref = model.encoder_module()(x).numpy()
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    return max(random_diff, float(np.abs(got - ref).max()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", type=Path, default=default_data(), help="ml-100k folder (u.data)")
    ap.add_argument("--models", nargs="+", default=list(models.MODELS), choices=list(models.MODELS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--threads", type=int, default=min(2, os.cpu_count() or 1),
        help="torch intra-op threads (default 2, the reference machine's cores; "
        "use 1 when other jobs share the CPU: tiny ops then run faster single-threaded)",
    )
    ap.add_argument("--progress", action="store_true", help="show tqdm bars")
    ap.add_argument(
        "--check-onnx", action="store_true",
        help="export each trained encoder to ONNX and report max |ORT - torch| on real inputs",
    )
    ap.add_argument("--json", type=Path, help="also write all numbers here")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    ds = load_ml100k(args.data)
    split = leave_one_out(ds)
    users = eval_users(split, "test")
    negatives = sample_negatives(split, users, n=99, seed=args.seed)
    took = time.perf_counter() - t0
    print(f"{ds.name}: {ds.summary()}  eval users {len(users)}  (load+split {took:.1f}s)")
    print(f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} CPUs")

    rows: dict[str, dict] = {}
    pop_scores = popularity_scores(split, "test")
    rows["popularity"] = evaluate_scores(pop_scores, split, users, "test", negatives=negatives)
    for name in args.models:
        model = models.build(name, split, seed=args.seed)
        cfg = TrainConfig.for_model(name, seed=args.seed, progress=args.progress)
        cpu0 = time.process_time()
        result = fit(model, split, cfg)
        cpu = time.process_time() - cpu0
        with torch.no_grad():
            reps = model.represent(model.encoder_inputs(split, users, "test")).numpy()
            items = model.item_embeddings().numpy()
        row = evaluate_reps(reps, items, split, users, "test", negatives=negatives)
        row.update(
            best_epoch=result.best_epoch,
            epochs=result.epochs_run,
            train_s=round(result.seconds, 1),
            cpu_s=round(cpu, 1),
            dev_NDCG10=round(result.best_dev["NDCG@10"], 4),
            hparams=model.config(),
            train=cfg.__dict__,
        )
        rows[name] = row
        print(
            f"  trained {name}: best epoch {result.best_epoch}/{result.epochs_run}, "
            f"{result.seconds:.1f}s wall ({cpu:.1f}s CPU), "
            f"dev NDCG@10 {result.best_dev['NDCG@10']:.4f}",
            flush=True,
        )
        if args.check_onnx:
            row["onnx_max_abs_diff"] = onnx_diff(model, split, users)
            print(f"  {name} ONNX Runtime vs PyTorch: max abs diff {row['onnx_max_abs_diff']:.2e}")

    pop = rows["popularity"]["NDCG@10"]
    cols = ["HR@5", "NDCG@5", "HR@10", "NDCG@10", "HR@20", "NDCG@20"]
    print("\nTest, full ranking over all items (seen items excluded):")
    head = f"{'model':<11}" + "".join(f"{c:>9}" for c in cols)
    print(head + f"{'xPop':>7}{'epochs':>9}{'train s':>9}{'cpu s':>7}")
    for name, r in rows.items():
        ep = f"{r['best_epoch']}/{r['epochs']}" if "epochs" in r else "-"
        ts = f"{r['train_s']:.1f}" if "train_s" in r else "-"
        cs = f"{r['cpu_s']:.1f}" if "cpu_s" in r else "-"
        print(
            f"{name:<11}" + "".join(f"{r[c]:>9.4f}" for c in cols)
            + f"{r['NDCG@10'] / pop:>7.2f}{ep:>9}{ts:>9}{cs:>7}"
        )
    print("\nTest, sampled protocol (target vs 99 unseen negatives):")
    print(head)
    for name, r in rows.items():
        print(f"{name:<11}" + "".join(f"{r['sampled_' + c]:>9.4f}" for c in cols))

    ok = True
    print()
    for name in args.models:
        r = rows[name]
        need = POP_FACTOR * pop
        checks = [(f"NDCG@10 >= {POP_FACTOR}x popularity ({need:.4f})", r["NDCG@10"] >= need)]
        if name == "sasrec":
            checks.append((f"NDCG@10 >= {SASREC_TARGET}", r["NDCG@10"] >= SASREC_TARGET))
            checks.append(("training < 120 s", r["train_s"] < 120))
        for what, passed in checks:
            ok &= passed
            got = f"NDCG@10 {r['NDCG@10']:.4f}, {r['train_s']}s"
            print(f"{'PASS' if passed else 'FAIL'}  {name}: {what} (got {got})")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
