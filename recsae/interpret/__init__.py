"""Interpretation of SAE latents: evidence -> description -> held-out scores -> concept dictionary.

The describer sees only evidence from the SAE *training* activations; the scorers see only the
*held-out* activations. Every latent gets an entry: ``dead`` if it never fires, ``undescribed``
with the reason if describing it failed, ``described`` otherwise.

Public API::

    describe_bundle_latents(cfg, ds, split, model, kernel, acts, work)  # the offline job's stage
    interpret_activations(ds, kernel, item_emb, acts, describer="stats", llm=None, ...)
    reinterpret_bundle(bundle_path, describer="stats", data_dir=None)  # `recsae interpret`
    write_atlas(bundle_path)                                            # atlas.html in the bundle
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Callable

import numpy as np

from recsae import BundleError, ConfigError
from recsae.concepts import Concept, ConceptDictionary, DetectionScore, ScoredSample
from recsae.data.core import Split
from recsae.evaluate import auc, head_of
from recsae.interpret.atlas import render_atlas, write_atlas
from recsae.interpret.describers import (
    Describer,
    Description,
    LLMDescriber,
    StatsDescriber,
    names_nothing,
    parse_describe,
)
from recsae.interpret.evidence import (
    EvidenceContext,
    FeatureSpace,
    LatentEvidence,
    SampleSet,
    build_context,
    calibrate,
    latent_evidence,
)
from recsae.interpret.llm import LLMClient, LLMSettings
from recsae.interpret.scorers import LLMScorer, RequestCollector, Scorer, StatsScorer, score_latent
from recsae.kernel import SAEKernel

__all__ = [
    "Describer", "Description", "EvidenceContext", "FeatureSpace", "LLMSettings", "LatentEvidence",
    "SampleSet", "Scorer", "StatsDescriber", "StatsScorer", "LLMDescriber", "LLMScorer",
    "build_dictionary", "connect_llm", "describe_bundle_latents", "describe_reserved_popularity", "measure_freq", "interpret_activations", "reinterpret_bundle",
    "render_atlas", "summarize", "write_atlas",
]  # fmt: skip

log = logging.getLogger(__name__)
PAPER_REPEATS = 5  # stats: cheap, so more repeats; llm: LLMSettings.repeats
# a description naming nothing beyond popularity tells a person nothing: chance level of the protocol
NAMES_NOTHING_CAP = 0.5


def build_dictionary(
    ctx: EvidenceContext,
    heldout: SampleSet,
    describer: Describer,
    scorer: Scorer,
    *,
    seed: int = 0,
    repeats: int = PAPER_REPEATS,
    per_class: int = 50,
    concurrency: int = 1,
    progress: bool = False,
    on_concept: Callable[[Concept], None] | None = None,
) -> ConceptDictionary:
    """Describe and score every latent. ``on_concept`` sees each finished entry (any order)."""
    t0 = time.perf_counter()
    m = ctx.train.n_latents
    ctx.train.by_latent, heldout.by_latent  # noqa: B018 -- build the shared indexes once, not per thread

    def one(j: int) -> Concept:
        ev = latent_evidence(ctx, j, seed=seed)
        if ev is None:
            if heldout.counts[j] == 0:
                return Concept(latent=j, status="dead", reason="never fires on the SAE's training or held-out samples")
            return Concept(latent=j, status="undescribed", reason="fires only on held-out samples: no training evidence")
        base: dict[str, Any] = dict(
            latent=j, firing_frequency=round(ev.firing_frequency, 6), describer=describer.name,
            model=describer.model, evidence=ev.summary(),
        )  # fmt: skip
        desc = describer.describe(ev)
        if desc.status != "described":
            return Concept(**base, status="undescribed", reason=desc.reason)
        if isinstance(scorer, StatsScorer) and desc.threshold is None:
            desc.threshold, _ = calibrate(ev, desc.attributes, seed=seed)
        sc = score_latent(scorer, desc, heldout, seed=seed, repeats=repeats, per_class=per_class)
        confidence, reason = sc.confidence, sc.reason
        if sc.detection is not None and sc.shown:
            titles = ctx.space.titles
            sc.detection.samples = [
                ScoredSample(history=[titles[i] for i in heldout.history(row)[-5:]],
                             recommendation=titles[heldout.recs[row]], fires=fires, predicted=pred)
                for row, fires, pred in sc.shown
            ]
        if confidence is not None and names_nothing(desc.text, desc.attributes, desc.exemplars) and confidence > NAMES_NOTHING_CAP:
            reason = f"names nothing but popularity: confidence {confidence:.2f} capped at {NAMES_NOTHING_CAP}"
            confidence = NAMES_NOTHING_CAP
        return Concept(
            **base, status="described", description=desc.text, attributes=desc.attributes,
            headline=desc.headline, exemplars=desc.exemplars, confidence=confidence, detection=sc.detection,
            match_threshold=desc.threshold, reason=reason,
        )  # fmt: skip

    from tqdm.auto import tqdm

    bar = tqdm(total=m, desc=f"describe ({describer.name})", disable=not progress)
    results: dict[int, Concept] = {}

    def done(c: Concept) -> None:
        results[c.latent] = c
        bar.update(1)
        if on_concept is not None:
            on_concept(c)

    try:
        if concurrency <= 1:
            for j in range(m):
                done(one(j))
        else:
            ex = ThreadPoolExecutor(concurrency, thread_name_prefix="describe")
            try:
                for f in as_completed([ex.submit(one, j) for j in range(m)]):
                    done(f.result())  # a worker's fatal error (bad key) surfaces here
            finally:  # on any error: drop what has not started, let what runs finish (cached)
                ex.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()
        usage = describer.usage()
        if usage:  # also after an interruption: what was spent so far
            print(
                f"LLM {usage['model']}: {usage['requests']} requests ({usage['cached_answers']} answers from "
                f"cache, {usage['retries']} retries, {usage['failed_requests']} failed), "
                f"{usage['prompt_tokens']} prompt + {usage['completion_tokens']} completion tokens, "
                f"cost ${usage['cost_usd']:.4f}",
                file=sys.stderr,
            )
    concepts = [results[j] for j in range(m)]
    flag_duplicates(concepts)
    summary = summarize(concepts)
    if isinstance(describer, StatsDescriber):
        summary.update(describer.rules())
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    if usage:
        summary["llm"] = usage
    log.info("concepts (%s): %s", describer.name, {k: v for k, v in summary.items() if k != "llm"})
    return ConceptDictionary(describer=describer.name, model=describer.model, concepts=concepts, summary=summary)


def flag_duplicates(concepts: list[Concept], min_jaccard: float = 0.8) -> None:
    """Mark near-duplicates in place: described concepts with the same description (case and
    spaces aside) or whose attribute sets overlap by Jaccard >= ``min_jaccard``."""
    desc = [c for c in concepts if c.status == "described"]
    groups: dict[str, list[Concept]] = {}
    for c in desc:
        groups.setdefault(" ".join((c.description or "").lower().split()), []).append(c)
    dup: dict[int, set[int]] = {}
    for g in groups.values():
        for a in g:
            dup.setdefault(a.latent, set()).update(b.latent for b in g if b is not a)
    sets = [(c.latent, frozenset(c.attributes)) for c in desc if c.attributes]
    by_attr: dict[str, list[int]] = {}  # only pairs sharing an attribute can overlap
    for i, (_, s) in enumerate(sets):
        for a in s:
            by_attr.setdefault(a, []).append(i)
    for i, (li, a) in enumerate(sets):
        for j in {j for x in a for j in by_attr[x] if j > i}:
            lj, b = sets[j]
            if len(a & b) / len(a | b) >= min_jaccard:
                dup.setdefault(li, set()).add(lj)
                dup.setdefault(lj, set()).add(li)
    for c in desc:
        c.duplicates = sorted(dup.get(c.latent, ()))


def summarize(concepts: list[Concept]) -> dict:
    """Headline numbers; shares are over *alive* latents (undescribed ones count as failures)."""
    alive = [c for c in concepts if c.status != "dead"]
    scored = [c for c in alive if c.confidence is not None]
    det = [c.detection for c in scored if c.detection is not None]
    mean = lambda xs: round(float(np.mean(xs)), 4) if xs else None  # noqa: E731
    return {
        "n_latents": len(concepts),
        "n_alive": len(alive),
        "n_dead": len(concepts) - len(alive),
        "n_described": sum(c.status == "described" for c in concepts),
        "n_undescribed": sum(c.status == "undescribed" for c in concepts),
        "n_scored": len(scored),
        "mean_confidence": mean([c.confidence for c in scored]),
        "share_confidence_ge_0.8": round(sum(c.confidence >= 0.8 for c in scored) / max(1, len(alive)), 4),
        "mean_balanced_accuracy": mean([d.balanced_accuracy for d in det]),
        "mean_auc": mean([d.auc for d in det]),
        "n_near_duplicates": sum(bool(c.duplicates) for c in concepts),
    }


def connect_llm(llm: dict | LLMSettings | None, work: str | Path | None = None) -> LLMClient:
    """Validate the settings and make one cheap call: a wrong key fails here, before any work."""
    try:
        settings = llm if isinstance(llm, LLMSettings) else LLMSettings(**(llm or {}))
    except Exception as e:  # pydantic's message names the bad key
        raise ConfigError(f"invalid llm settings: {' '.join(str(e).split())}") from None
    cache = Path(settings.cache) if settings.cache else Path(work or ".recsae-work") / "llm-cache.jsonl"
    client = LLMClient(settings, cache)
    client.check()
    return client


def interpret_activations(
    ds,
    kernel: SAEKernel,
    item_emb: np.ndarray,
    acts,
    *,
    describer: str = "stats",
    llm: dict | LLMSettings | LLMClient | None = None,
    seed: int = 0,
    work: str | Path | None = None,
    progress: bool = False,
    on_concept: Callable[[Concept], None] | None = None,
) -> ConceptDictionary:
    """Concept dictionary of ``kernel``'s latents on captured activations (``pipeline.Activations``).

    With ``describer="llm"`` the endpoint and key are checked first, before any work is spent.
    """
    client = None
    if describer == "llm":
        client = llm if isinstance(llm, LLMClient) else connect_llm(llm, work)
    elif describer != "stats":
        raise ConfigError(f"unknown describer {describer!r}; use 'stats' or 'llm'")

    item_emb = np.asarray(item_emb, dtype=np.float32)
    train = SampleSet.build(acts.train, acts.train_windows, acts.train_users, kernel, item_emb)
    heldout = SampleSet.build(acts.heldout, acts.heldout_windows, acts.heldout_users, kernel, item_emb)
    space = FeatureSpace(ds.item_features, ds.item_titles, ds.item_ids, ds.user_features)
    ctx = build_context(train, space)
    if client is None:
        d: Describer = StatsDescriber(seed=seed)
        sc: Scorer = StatsScorer(space)
        kw = dict(repeats=PAPER_REPEATS, per_class=50, concurrency=1)
    else:
        s = client.s
        d = LLMDescriber(client, dataset=getattr(ds, "name", ""))
        sc = LLMScorer(client, ctx) if s.scorer == "llm" else StatsScorer(space)
        kw = dict(repeats=s.repeats, per_class=s.detection_per_class, concurrency=s.concurrency)
        if s.mode == "batch":
            batch_prefetch(ctx, heldout, d, sc, seed=seed, repeats=s.repeats, per_class=s.detection_per_class)
    return build_dictionary(ctx, heldout, d, sc, seed=seed, progress=progress, on_concept=on_concept, **kw)


def batch_prefetch(
    ctx: EvidenceContext,
    heldout: SampleSet,
    describer: LLMDescriber,
    scorer: Scorer,
    *,
    seed: int = 0,
    repeats: int = PAPER_REPEATS,
    per_class: int = 50,
) -> list[dict]:
    """``llm.mode=batch``: fill the answer cache through the Batch API in two batches, then the
    normal (sync) run finds the answers there and asks synchronously only for what is missing.

    1. describe: one request per latent with training evidence;
    2. score (LLM scorer only): the scoring requests of every latent whose description came
       back, collected by running the scoring protocol without asking.
    """
    client = describer.client
    m = ctx.train.n_latents
    ctx.train.by_latent, heldout.by_latent  # noqa: B018
    evs = [ev for j in range(m) if (ev := latent_evidence(ctx, j, seed=seed)) is not None]
    stats = [client.run_batch("describe", [(describer.prompt(ev), parse_describe) for ev in evs])]
    if isinstance(scorer, LLMScorer):
        collect = RequestCollector(scorer)
        for ev in evs:
            desc = describer.cached(ev)
            if desc is not None:
                score_latent(collect, desc, heldout, seed=seed, repeats=repeats, per_class=per_class)
        stats.append(client.run_batch("score", collect.items))
    for st in stats:
        print(
            f"LLM batch ({st['phase']}): {st['pending']} requests not cached, {st['answered']} answered, "
            f"{st['failed']} failed, {st['invalid']} invalid, {st['missing']} missing -> asked synchronously",
            file=sys.stderr,
        )
    return stats


def describe_bundle_latents(cfg, ds, split, model, kernel: SAEKernel, acts, work: Path) -> ConceptDictionary:
    """The offline job's interpretation stage (``recsae.pipeline.interpret_concepts``)."""
    item_emb = model.item_embeddings().detach().cpu().numpy().astype(np.float32)
    return interpret_activations(
        ds, kernel, item_emb, acts, describer=cfg.describer, llm=cfg.llm, seed=cfg.seed,
        work=work, progress=cfg.progress,
    )  # fmt: skip


# -- re-describing a finished bundle --------------------------------------------------------------
class _OnnxEncoder:
    """Just enough of a recommender for ``stages.capture_activations``: the bundle's encoder."""

    def __init__(self, path: Path, model: dict) -> None:
        from recsae.engine import make_session

        self.session = make_session(str(path))
        self.input_name = self.session.get_inputs()[0].name
        self.input_kind = model["input_kind"]
        self.max_len = int(model.get("max_len") or 0)
        self.dim = int(model["d"])

    def represent(self, inp):
        import torch

        out = self.session.run(None, {self.input_name: inp.numpy().astype(np.int64)})[0]
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))


def reinterpret_bundle(
    bundle_path: str | Path,
    describer: str = "stats",
    data_dir: str | None = None,
    llm: dict | None = None,
    work_dir: str | Path | None = None,
) -> dict:
    """Describe a bundle's latents again and rewrite its concepts (and atlas); returns the summary.

    Activations are recaptured with the bundle's own ONNX encoder on the dataset named in its
    manifest (same rows and held-out split as the job: same seed), cached in ``work_dir``. The
    bundle is rewritten atomically with fresh hashes.
    """
    from dataclasses import fields

    from recsae.bundle import MANIFEST, verify_bundle, write_bundle
    from recsae.config import JobConfig
    from recsae.data import leave_one_out
    from recsae.stages import capture_activations, load_data

    bundle = Path(bundle_path)
    manifest = verify_bundle(bundle)
    known = {f.name for f in fields(JobConfig)}
    cfg = JobConfig(**{k: v for k, v in manifest["settings"].items() if k in known})
    cfg.describer, cfg.progress = describer, False
    if data_dir:
        cfg.data_dir = str(data_dir)
    if llm is not None:
        cfg.llm = llm
    work = Path(work_dir) if work_dir else bundle.parent / ".recsae-work" / f"reinterpret-{manifest['bundle_hash'][:12]}"
    work.mkdir(parents=True, exist_ok=True)
    client = connect_llm(cfg.llm, work) if describer == "llm" else None  # fail fast, before the data
    ds = load_data(cfg)
    if ds.n_items != manifest["model"]["n_items"] or ds.n_users != manifest["model"]["n_users"]:
        raise BundleError(
            f"dataset {cfg.dataset!r} in {cfg.data_dir} has {ds.n_users} users / {ds.n_items} items; "
            f"the bundle was built on {manifest['model']['n_users']} / {manifest['model']['n_items']}"
        )
    split = leave_one_out(ds)
    acts = capture_activations(_OnnxEncoder(bundle / "encoder.onnx", manifest["model"]), split, cfg, work)
    kernel = SAEKernel.load(bundle / "sae")
    item_emb = np.load(bundle / "item_embeddings.npy")
    concepts = interpret_activations(
        ds, kernel, item_emb, acts, describer=describer, llm=client, seed=cfg.seed, work=work
    )
    if cfg.sae_reserve == "popularity":
        describe_reserved_popularity(concepts, kernel, np.asarray(acts.heldout), item_emb, split)

    skip = {MANIFEST, "concepts.json", "atlas.html"}

    def fill(tmp: Path) -> dict:
        for name in manifest["files"]:
            if name not in skip:
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(bundle / name, tmp / name)
        (tmp / "concepts.json").write_text(concepts.model_dump_json(indent=1))
        body = {k: v for k, v in manifest.items() if k not in {"format_version", "recsae_version", "created", "bundle_hash", "version", "files"}}
        body["settings"] = {**body.get("settings", {}), "describer": describer}
        body.setdefault("metrics", {})["concepts"] = concepts.summary
        return body

    write_bundle(bundle, fill)
    write_atlas(bundle)
    return {"bundle": str(bundle), **concepts.summary}


# -- the reserved popularity latent (sae_reserve="popularity") ------------------------------------
def describe_reserved_popularity(concepts: ConceptDictionary, kernel: SAEKernel, x: np.ndarray, emb: np.ndarray,
                                 split: Split) -> None:
    """Latent 0 of a ``sae_reserve="popularity"`` SAE is popularity by construction; it fires for
    almost everyone, so firing-based describers find nothing: its magnitude is what matters.
    Its confidence is measured, not assumed: the AUC of its activation for whether the model's
    top recommendation on a held-out row is one of the 20% most popular items."""
    head = head_of(len(emb), split)
    codes = kernel.encode(x)
    a0 = np.where(codes.idx == 0, codes.acts, 0.0).sum(1)
    top_is_head = head[np.concatenate([(x[s : s + 4096] @ emb.T).argmax(1) for s in range(0, len(x), 4096)])]
    score = auc(a0, top_is_head)
    c = concepts.by_latent()[0]
    c.status = "described"
    c.description = ("item popularity: how far this user's state leans to the 20% most popular items "
                     "(a latent reserved for this direction when the SAE was trained)")
    c.attributes = ["popularity:head"]
    c.confidence = round(float(score), 4)
    pred = a0 > np.median(a0)
    bal = 0.5 * (float(pred[top_is_head].mean()) + float((~pred[~top_is_head]).mean())) if 0 < top_is_head.sum() < len(x) else 0.5
    c.detection = DetectionScore(balanced_accuracy=round(bal, 4), auc=float(score),
                                 n_positive=int(top_is_head.sum()), n_negative=int((~top_is_head).sum()))
    c.reason = None
    if concepts.describer != "none":
        concepts.summary = {**concepts.summary, **summarize(concepts.concepts)}  # counts it as described


def measure_freq(kernel: SAEKernel, x: np.ndarray) -> np.ndarray:
    codes = kernel.encode(np.asarray(x))
    counts = np.bincount(codes.idx[codes.acts > 0], minlength=kernel.n_latents)
    return counts / max(1, len(x))
