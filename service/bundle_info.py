"""``GET /bundle``: what the served bundle is, its headline quality figures and how this process
serves it (read from the manifest at request time; nothing here is on the hot path)."""

from __future__ import annotations

from typing import Any

from recsae.bundle import Bundle
from recsae.engine import Engine
from recsae.kernel import SAEKernel
from service.schemas import BundleInfo, ModelInfo, SAEInfo


def bundle_info(bundle: Bundle, engine: Engine, sae: SAEKernel, provider: str, hot_path: str = "python") -> BundleInfo:
    m = bundle.manifest
    model = m["model"]
    metrics = m.get("metrics", {})
    headline: dict[str, Any] = {}
    rec_test = metrics.get("recommender", {}).get("test", {})
    if "NDCG@10" in rec_test:
        headline["recommender_test_ndcg10"] = rec_test["NDCG@10"]
    heldout = metrics.get("sae", {}).get("heldout", {})
    for key in ("fvu", "dead_ratio"):
        if key in heldout:
            headline[f"sae_heldout_{key}"] = heldout[key]
    # how much of the model the concepts capture: NDCG@10 with the SAE's reconstruction in
    # place of the activation / the original's (all held-out rows; the test users alone)
    fid = metrics.get("fidelity", {})
    for key, name in (("heldout_ndcg10_ratio_reconstruction", "sae_heldout_ndcg10_ratio"),
                      ("ndcg10_ratio_reconstruction", "sae_test_ndcg10_ratio"),
                      ("ndcg10_ratio_reconstruction_sampled99", "sae_sampled99_ndcg10_ratio"),
                      ("overlap10_reconstruction", "sae_top10_overlap")):
        if isinstance(fid.get(key), (int, float)):
            headline[name] = round(float(fid[key]), 4)
    worst = (metrics.get("quality") or {}).get("worst")
    if isinstance(worst, dict) and isinstance(worst.get("value"), (int, float)):
        # the fidelity measure the gate reads: the lowest of the four above
        headline["sae_fidelity_worst"] = {"name": str(worst.get("name")), "value": round(float(worst["value"]), 4)}
    if "onnx_max_abs_diff" in metrics:
        headline["onnx_max_abs_diff"] = metrics["onnx_max_abs_diff"]
    if m.get("ann"):  # approximate retrieval: the bundle's index, and whether this process uses it
        a = m["ann"]
        headline["ann"] = {"kind": a.get("kind"), "depth": a.get("nprobe") or a.get("ef_search"), "used": engine.ann is not None,
                           "calibration_recall_at_10": (a.get("calibration") or {}).get("recall_at_10")}
    describer = m.get("settings", {}).get("describer") or "unknown"
    return BundleInfo(
        version=m["version"],
        bundle_hash=m["bundle_hash"],
        created=m.get("created", ""),
        recsae_version=m.get("recsae_version", ""),
        dataset=m.get("dataset", {}).get("dataset"),
        model=ModelInfo(
            name=model["name"], kind=model.get("kind", ""), input_kind=model["input_kind"],
            d=int(model.get("d", sae.d_in)), n_items=int(model["n_items"]),
            n_users=int(model.get("n_users", len(bundle.users.user_ids))),
            max_len=model.get("max_len"),
        ),
        sae=SAEInfo(k=sae.k, n_latents=sae.n_latents, expansion=m.get("sae", {}).get("expansion"),
                    encoder=sae.encoder),
        describer=describer,
        accepts_history=engine.accepts_history,
        execution_provider=provider,
        hot_path=hot_path,
        metrics=headline,
        quality_warnings=[str(w) for w in (metrics.get("quality") or {}).get("warnings", [])],
    )
