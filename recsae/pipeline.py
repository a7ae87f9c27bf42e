"""The offline job: dataset -> recommender -> activations -> SAE -> concepts -> bundle.

Every stage caches its output in a work directory keyed by the settings that made it, so a
re-run with the same settings skips finished stages (resume after an interruption) and a
changed setting recomputes only what depends on it. The stages are in ``recsae.stages``, the
fidelity measures and the quality search in ``recsae.quality``, the settings in ``recsae.config``;
this module runs them in order and writes the bundle (``run_job``'s ``fill``).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from recsae import ConfigError, ann
from recsae.bundle import Catalog, UserTable, write_bundle
from recsae.concepts import ConceptDictionary, placeholder_dictionary
from recsae.config import MODEL_KEYS, RESERVE_CHOICES, JobConfig
from recsae.data import Dataset, leave_one_out
from recsae.data.logfile import log_name
from recsae.kernel import ENCODERS
from recsae.quality import (
    WARN_DEAD,
    QualityError,
    concept_warnings,
    fidelity,
    fit_sae_to_target,
    kernel_of,
    quality_report,
    search_warning,
)
from recsae.stages import (
    capture_activations,
    choose_model,
    fit_sae,
    item_embeddings,
    load_data,
    popularity_baseline,
    popularity_direction,
    refit_expansion,
    represent,
    train_recommender,
)
from recsae.train import measure

log = logging.getLogger(__name__)


# -- the job -------------------------------------------------------------------------------------
@dataclass
class JobResult:
    bundle: Path
    summary: dict


def work_dir_for(cfg: JobConfig, root: Path) -> Path:
    """The cache folder of one (dataset, recommender) pair; SAE runs live inside it."""
    # a log file names the folder (the CLI passes its stem as ``dataset``; the Python API may not)
    name = log_name(cfg.data["path"]) if cfg.data and cfg.data.get("path") else cfg.dataset
    work = Path(root) / f"{name.replace('/', '_')}-{cfg.model}-{cfg.key(*MODEL_KEYS)}"
    work.mkdir(parents=True, exist_ok=True)
    return work


def retain_freed_memory(limit: int = 1 << 30) -> bool:
    """Let glibc keep freed blocks up to ``limit`` bytes instead of returning them to the OS.

    SASRec's full-softmax logits (batch x positions x items: 180 MB a step on Grocery) are above
    glibc's largest mmap threshold (32 MB), so every step mapped, page-faulted and unmapped them:
    82 s of kernel time in a 110 s recommender stage on Grocery. With this, 3 s and 67 s, the
    same weights; peak RSS +0.25 GB. Process-wide, so only the offline job calls it (the service
    never does); a no-op where glibc's ``mallopt`` is unavailable.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        return bool(libc.mallopt(M_MMAP_THRESHOLD, limit)) and bool(libc.mallopt(M_TRIM_THRESHOLD, limit))
    except (OSError, AttributeError):
        return False


STAGES = ("data", "recommender", "capture", "sae", "fidelity", "interpret", "bundle")


def run_job(cfg: JobConfig, out: str | Path, work_dir: str | Path | None = None) -> JobResult:
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    if cfg.sae_reserve not in (None, *RESERVE_CHOICES):
        raise ConfigError(f"unknown --sae-reserve {cfg.sae_reserve!r}; choose one of {list(RESERVE_CHOICES)}")
    if cfg.sae_encoder not in ENCODERS:
        raise ConfigError(f"unknown --sae-encoder {cfg.sae_encoder!r}; choose one of {list(ENCODERS)}")
    if cfg.min_fidelity is not None and not 0 < cfg.min_fidelity <= 1:
        raise ConfigError(f"--min-fidelity {cfg.min_fidelity:g} must be in (0, 1]: the share of NDCG@10 the SAE must keep")
    if cfg.threads is not None and cfg.threads < 1:
        raise ConfigError(f"threads {cfg.threads}: give a whole number >= 1")
    ann.check_option(cfg.ann)  # --ann ivf|hnsw without faiss fails here, before any training
    from models import MODELS

    if cfg.model != "auto" and cfg.model not in MODELS:
        raise ConfigError(f"unknown model {cfg.model!r}; choose auto or one of {sorted(MODELS)}")
    if not (cfg.quality_budget or 0) >= 0:
        raise ConfigError(f"--quality-budget {cfg.quality_budget:g} must be >= 0 seconds (0 = no search)")
    if not 0 < cfg.target_ndcg <= 1 or not cfg.target_fvu > 0:
        raise ConfigError(f"quality target NDCG@10 kept {cfg.target_ndcg:g} must be in (0, 1] and FVU "
                          f"{cfg.target_fvu:g} > 0")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    retain_freed_memory()
    out = Path(out)

    def lap(name: str, t: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - t, 2)
        return now

    def stage(name: str, what: str) -> None:
        """A header per stage on stderr (with progress on): where a long job is, and what is next."""
        if cfg.progress:
            print(f"[{STAGES.index(name) + 1}/{len(STAGES)}] {name}: {what}", file=sys.stderr, flush=True)

    t = time.perf_counter()
    stage("data", f"loading {cfg.data['path'] if cfg.data else cfg.dataset}")
    ds = load_data(cfg)  # before anything is written: a bad file leaves no trace
    split = leave_one_out(ds)
    model_name, model_why = choose_model(cfg, ds)
    if model_name != cfg.model:
        cfg = replace(cfg, model=model_name)
    log.info("model %s: %s", model_name, model_why)
    work = work_dir_for(cfg, Path(work_dir) if work_dir else out.parent / ".recsae-work")
    t = lap("data", t)
    stage("recommender", f"{model_name} on {ds.n_users:,} users x {ds.n_items:,} items (read from {work} if trained before)")
    model, rec_metrics = train_recommender(cfg, split, work)
    rec_metrics = {**rec_metrics, "popularity_baseline_test": popularity_baseline(split)}
    t = lap("recommender", t)
    stage("capture", "the user representation the SAE reads, one row per training position")
    acts = capture_activations(model, split, cfg, work)
    t = lap("capture", t)
    stage("sae", f"TopK SAE k={cfg.k} x {cfg.expansion * model.dim:,} latents, {cfg.sae_epochs} epochs"
          + (f" (quality search up to {cfg.quality_budget:.0f} s)" if cfg.quality_budget else ""))
    reserved = popularity_direction(item_embeddings(model), split) if cfg.sae_reserve == "popularity" else None
    sae, sae_metrics = fit_sae(cfg, acts, work, reserved)
    while cfg.fit_latents and cfg.expansion > 1 and (dead := (sae_metrics.get("heldout") or {}).get("dead_ratio", 0.0)) > WARN_DEAD:
        fitted = refit_expansion(cfg.expansion, model.dim, dead)
        log.warning("%.0f%% of %d latents are dead on this data: retraining the SAE with expansion %d -> %d "
                    "(--expansion fixes it)", 100 * dead, sae.cfg.n_latents, cfg.expansion, fitted)
        cfg = replace(cfg, expansion=fitted)
        sae, sae_metrics = fit_sae(cfg, acts, work, reserved)
    # the quality search starts from the SAE sized to the data (its first setting is the one just
    # trained, read back from the cache) and raises k / latents / epochs while the target is missed
    asked = (cfg.k, cfg.expansion, cfg.sae_epochs)
    found, probe = fit_sae_to_target(cfg, model, split, acts, work, reserved)
    cfg, sae, sae_metrics = found.cfg, found.sae, found.metrics
    if (cfg.k, cfg.expansion, cfg.sae_epochs) != asked:
        log.info("quality search: %s", found.record["why"])
    if cfg.sae_encoder != sae.cfg.encoder:  # the bundle's inference encoder; its held-out figures
        sae.cfg.encoder = cfg.sae_encoder
        sae_metrics = {**sae_metrics, "heldout_trained_encoder": sae_metrics.get("heldout"),
                       "heldout": measure(kernel_of(sae), acts.heldout).as_dict(), "encoder": cfg.sae_encoder}
    kernel = kernel_of(sae)
    t = lap("sae", t)
    stage("fidelity", "how much of the recommender's ranking the SAE keeps (four measures)")
    fid = fidelity(model, split, kernel, probe=probe)
    setting = {"k": cfg.k, "expansion": cfg.expansion, "epochs": cfg.sae_epochs, "encoder": cfg.sae_encoder,
               "d_in": int(sae.cfg.d_in)}
    tried = [(r["k"], r["expansion"], r["epochs"]) for r in found.record["trials"]]
    quality = quality_report(sae_metrics, fid, sae.cfg.n_latents, setting, tried)
    quality["warnings"] += search_warning(found.record)
    for w in quality["warnings"]:  # the CLI prints them under its summary; library callers read summary["quality"]
        log.info("quality warning: %s", w)
    worst = quality["worst"]
    if cfg.min_fidelity is not None and worst is not None and worst["value"] < cfg.min_fidelity:
        raise QualityError(
            f"the SAE keeps {worst['value']:.1%} {worst['what']}, the worst of its fidelity measures (each "
            f"must reach the bar), below --min-fidelity {cfg.min_fidelity:g}; no bundle written. Re-run: "
            f"{quality['advice']}; the recommender, activations and SAEs are cached in {work}"
        )
    t = lap("fidelity", t)
    stage("interpret", f"describing {sae.cfg.n_latents:,} latents ({cfg.describer} describer)")

    serve_users = np.arange(split.n_users)
    serve_x = represent(model, split, serve_users, "serve")
    ref = measure(kernel, serve_x)
    concepts = interpret_concepts(cfg, ds, split, model, kernel, acts, work)
    quality["warnings"] += concept_warnings(concepts.summary)
    t = lap("interpret", t)
    stage("bundle", f"writing {out}: ONNX export checked against PyTorch, weights, concepts, hashes"
          + (", atlas" if cfg.describer != "none" else ""))

    def fill(tmp: Path) -> dict:
        from models.base import check_onnx, export_onnx

        export_onnx(model, tmp / "encoder.onnx")
        onnx_diff = check_onnx(model, tmp / "encoder.onnx")
        if onnx_diff > 1e-4:
            raise RuntimeError(f"ONNX encoder differs from PyTorch by {onnx_diff:.2e} (> 1e-4)")
        emb = item_embeddings(model)
        np.save(tmp / "item_embeddings.npy", emb)
        calib = range(min(256, split.n_users))  # the index's depth is tuned on these users, histories excluded
        ann_meta = ann.write_for_bundle(tmp, emb, cfg.ann, serve_x[: len(calib)], [split.full_history(u) for u in calib],
                                        seed=cfg.seed, threads=cfg.threads or 1)
        sae.save(tmp / "sae")
        np.savez(
            tmp / "reference_stats.npz",
            firing_frequency=ref.firing_frequency,
            mean_activation=ref.mean_activation,
            n_samples=np.int64(ref.n_samples),
        )
        (tmp / "concepts.json").write_text(concepts.model_dump_json(indent=1))
        catalog = Catalog(
            item_ids=[str(i) for i in ds.item_ids],
            titles=list(ds.item_titles),
            feature_names=list(ds.item_features.names),
            item_features=[np.flatnonzero(r).tolist() for r in ds.item_features.matrix],
            popularity=np.bincount(np.concatenate(split.train), minlength=ds.n_items),
        )
        (tmp / "catalog.json").write_text(json.dumps(catalog.to_json()))
        users = UserTable.from_histories(ds.user_ids, [split.full_history(u) for u in range(split.n_users)])
        if ds.user_features is not None:  # the audit page's segments by user attribute (gender, age, ...)
            users = users.with_features(list(ds.user_features.names), ds.user_features.matrix)
        users.save(tmp / "users.npz")
        return {
            "model": {
                "name": cfg.model,
                "kind": model.kind,
                "input_kind": model.input_kind,
                "d": int(model.dim),
                "max_len": int(model.max_len) if model.input_kind == "history" else None,
                "n_items": int(ds.n_items),
                "n_users": int(ds.n_users),
                "config": model.config(),
                "chosen_because": model_why,
            },
            "dataset": {**ds.summary(), "meta": ds.meta},
            "sae": {"k": cfg.k, "expansion": cfg.expansion, "n_latents": sae.cfg.n_latents},
            "settings": asdict(cfg),
            "reference_stats": {"source": "serve-stage representation of every user", **ref.as_dict()},
            "metrics": {
                "recommender": rec_metrics,
                "sae": sae_metrics,
                "fidelity": fid,
                "quality": quality,
                "sae_search": found.record,
                "onnx_max_abs_diff": onnx_diff,
                "concepts": concepts.summary,
            },
            **({"ann": ann_meta} if ann_meta else {}),
        }

    bundle = write_bundle(out, fill)
    if cfg.describer != "none":
        from recsae.interpret.atlas import write_atlas

        write_atlas(bundle)
    lap("bundle", t)
    timings["total"] = round(time.perf_counter() - t0, 2)
    manifest = json.loads((bundle / "manifest.json").read_text())
    summary = {"bundle": str(bundle), "version": manifest["version"], "timings_s": timings, "sae_shape": manifest["sae"],
               "data": data_summary(ds, model_name, model_why), **manifest["metrics"]}
    return JobResult(bundle, summary)


def data_summary(ds: Dataset, model: str, why: str) -> dict:
    """What the job made of the data, for the summary: split, weights, model choice."""
    meta = ds.meta
    out = {**ds.summary(), "split": meta.get("split"), "model": model, "model_because": why}
    if meta.get("weights"):
        w = meta["weights"]
        out["weights"] = {k: w[k] for k in ("column", "kind", "rule", "effect", "rows", "kept", "dropped") if k in w}
    if meta.get("item_file"):
        out["item_file"] = {k: meta["item_file"][k] for k in ("source", "items_described", "log_items_missing")}
    return out


def interpret_concepts(cfg, ds, split, model, kernel, acts, work) -> ConceptDictionary:
    """Describe every latent (``recsae.interpret``); a placeholder dictionary when disabled."""
    from recsae.interpret import describe_bundle_latents, describe_reserved_popularity, measure_freq

    if cfg.describer == "none":
        concepts = placeholder_dictionary(measure_freq(kernel, acts.heldout), reason="describer disabled")
    else:
        concepts = describe_bundle_latents(cfg, ds, split, model, kernel, acts, work)
    if cfg.sae_reserve == "popularity":
        describe_reserved_popularity(concepts, kernel, np.asarray(acts.heldout), item_embeddings(model), split)
    return concepts
