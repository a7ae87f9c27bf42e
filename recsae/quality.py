"""How much of the model the SAE keeps (fidelity), the warnings and advice that go into the manifest,
and the quality search that trains larger SAEs on the cached activations until a target is met."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from recsae import RecSAEError
from recsae.config import SAE_PRESETS, JobConfig
from recsae.data import Split
from recsae.evaluate import (
    eval_users,
    evaluate_reps,
    metrics_from_ranks,
    ndcg_per_user,
    paired_ratio_ci,
    sample_negatives,
    stage_ranks,
    target_ranks,
)
from recsae.kernel import Codes, SAEKernel, score_top_k
from recsae.sae import TopKSAE
from recsae.stages import Activations, fit_sae, heldout_targets, item_embeddings, represent, sae_folder
from recsae.train import TrainingStopped, measure

log = logging.getLogger(__name__)


def sae_ladder(k: int, expansion: int, epochs: int, d_in: int) -> list[tuple[int, int, int]]:
    """The ``(k, expansion, epochs)`` settings the quality search tries, in order: the configured
    one; k doubled; k x4 with twice the latents and epochs; then twice the latents again. From
    the default that is the three presets (paper, balanced, fidelity), then k=32 x 4,096. k stops
    at ``d_in / 2``: a code of as many latents as dimensions could copy any input."""
    cap = max(k, d_in // 2)
    out: list[tuple[int, int, int]] = []
    for kk, x, ep in ((k, expansion, epochs), (2 * k, expansion, epochs), (4 * k, 2 * expansion, 2 * epochs),
                      (4 * k, 4 * expansion, 2 * epochs)):
        step = (min(kk, cap), x, ep)
        if step not in out:
            out.append(step)
    return out


def shortfall(ndcg_kept: float, fvu: float, target_ndcg: float, target_fvu: float) -> float:
    """How far one SAE is from the target: the larger of (NDCG@10 lost / loss allowed) and
    (FVU / FVU allowed); at most 1 meets both. Ranks the settings when none meets it."""
    return max((1.0 - ndcg_kept) / max(1.0 - target_ndcg, 1e-9), fvu / max(target_fvu, 1e-12))


def _setting(t: dict) -> str:
    return f"k={t['k']} x {t['n_latents']:,} latents, {t['epochs']} epochs"


class SAESearch(NamedTuple):
    sae: TopKSAE
    metrics: dict  # the chosen SAE's training metrics (``fit_sae``)
    evaluation: dict  # what ``evaluate`` returned for it
    cfg: JobConfig  # the job's settings with the chosen k / expansion / epochs
    record: dict  # every setting tried, its measures and time: the manifest's ``metrics.sae_search``


def search_sae(
    cfg: JobConfig,
    acts: Activations,
    work: Path,
    evaluate: Callable[[TopKSAE, dict], dict],
    reserved: np.ndarray | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> SAESearch:
    """Train the configured SAE; while it misses the target (NDCG@10 kept >= ``cfg.target_ndcg``
    and FVU <= ``cfg.target_fvu``), train the next of :func:`sae_ladder` on the same cached
    activations, within ``cfg.quality_budget`` seconds for everything after the first.

    ``evaluate(sae, metrics)`` returns at least ``ndcg10_kept`` and ``fvu`` (the job: NDCG@10
    with the reconstruction in the path over the held-out rows, and held-out FVU). A setting
    whose estimated time exceeds what is left is not started; one that runs past the budget is
    stopped after its current epoch and not kept. The SAE returned is the first that meets the
    target, else the closest (:func:`shortfall`). Each SAE is cached under its own settings, so
    a re-run costs only the measuring.
    """
    d_in = int(acts.train.shape[1])
    budget = float(cfg.quality_budget or 0.0)
    ladder = sae_ladder(cfg.k, cfg.expansion, cfg.sae_epochs, d_in) if budget > 0 else [(cfg.k, cfg.expansion, cfg.sae_epochs)]
    start = clock()
    deadline = start + budget
    trials: list[dict] = []
    best: tuple | None = None
    stopped = "search off (--quality-budget 0)" if budget <= 0 else "every setting of the ladder tried"
    for i, (k, x, ep) in enumerate(ladder):
        c = replace(cfg, k=k, expansion=x, sae_epochs=ep)
        cached = (sae_folder(c, work) / "metrics.json").exists()
        row = {"k": k, "expansion": x, "n_latents": x * d_in, "epochs": ep, "cached": cached}
        if i:
            left = deadline - clock()
            est = _estimate_seconds(trials[-1], row, cached)
            if est > left:
                stopped = (f"budget: {_setting(row)} would take ~{est:.0f} s and {max(left, 0.0):.0f} s of the "
                           f"{budget:.0f} s budget were left")
                break
        t = clock()
        try:
            sae, metrics = fit_sae(c, acts, work, reserved, should_stop=(lambda: clock() > deadline) if i else None)
        except TrainingStopped as e:
            trials.append({**row, "seconds": round(clock() - t, 1), "stopped": str(e)})
            stopped = f"budget: ran out while training {_setting(row)} ({e}; not kept)"
            break
        t_eval = clock()
        ev = evaluate(sae, metrics)
        gap = shortfall(ev["ndcg10_kept"], ev["fvu"], cfg.target_ndcg, cfg.target_fvu)
        row.update(ndcg10_kept=round(float(ev["ndcg10_kept"]), 4), fvu=round(float(ev["fvu"]), 4),
                   **({"measures": ev["measures"]} if "measures" in ev else {}),
                   meets=bool(gap <= 1.0), shortfall=round(gap, 3),
                   train_seconds_per_epoch=metrics.get("seconds_per_epoch"),
                   measure_seconds=round(clock() - t_eval, 1), seconds=round(clock() - t, 1))
        trials.append(row)
        if best is None or gap < best[0]:
            best = (gap, len(trials) - 1, sae, metrics, ev, c)
        if gap <= 1.0:
            stopped = "target met"
            break
    assert best is not None  # the first setting is always trained
    gap, chosen, sae, metrics, ev, c = best
    t = trials[chosen]
    target = f"NDCG@10 kept >= {cfg.target_ndcg:.0%} ({ev.get('measured_on', 'held-out rows')}) and FVU <= {cfg.target_fvu:g}"
    got = f"NDCG@10 kept {t['ndcg10_kept']:.1%}, FVU {t['fvu']:.3f}"
    if t["meets"]:
        why = (f"the configured SAE ({_setting(t)}) meets the target: {got}" if chosen == 0 else
               f"{_setting(t)} is the first setting that meets the target: {got}")
    else:
        misses = [m for m, bad in (("NDCG@10 kept", t["ndcg10_kept"] < cfg.target_ndcg), ("FVU", t["fvu"] > cfg.target_fvu)) if bad]
        why = (f"no setting met the target; the closest, {_setting(t)}, misses on {' and '.join(misses)} ({got}); "
               f"stopped: {stopped}")
    record = {
        "target": {"ndcg10_kept": cfg.target_ndcg, "fvu": cfg.target_fvu, "text": target},
        "budget_s": budget,
        "spent_s": round(clock() - start, 1),
        "trials": trials,
        "chosen": chosen,
        "met": bool(t["meets"]),
        "stopped": stopped,
        "why": why,
    }
    return SAESearch(sae, metrics, ev, replace(c), record)


def fit_sae_to_target(cfg: JobConfig, model, split: Split, acts: Activations, work: Path,
                      reserved: np.ndarray | None = None) -> tuple[SAESearch, "FidelityProbe"]:
    """The job's SAE stage: :func:`search_sae` scoring each SAE by NDCG@10 kept (held-out rows,
    or the test users when those are more) and held-out FVU, with the bundle's inference encoder,
    as the gate measures it; also returns the probe, for the chosen SAE's full fidelity."""
    probe = FidelityProbe(model, split, heldout_rows(split, cfg, model, acts))

    def evaluate(sae: TopKSAE, metrics: dict) -> dict:
        kern = kernel_of(sae, cfg.sae_encoder)
        q = quality_report(metrics, probe.measures(kern), sae.cfg.n_latents)
        same = cfg.sae_encoder == sae.cfg.encoder
        held = (metrics.get("heldout") or metrics["train"]) if same else measure(kern, acts.heldout).as_dict()
        return {"ndcg10_kept": q["ndcg10_ratio"], "measured_on": q["measured_on"], "fvu": held["fvu"],
                "measures": {m["name"]: round(m["value"], 4) for m in q["measures"]}}

    return search_sae(cfg, acts, work, evaluate, reserved), probe


def _estimate_seconds(last: dict, nxt: dict, cached: bool) -> float:
    """Time the next setting will take, from the last one's: training (seconds per epoch scaled
    by the per-sample arithmetic, dominated by the dense d x latents encoder product) plus
    measuring. Only measuring when the next SAE is cached."""
    measuring = float(last.get("measure_seconds") or 0.0)
    spe = last.get("train_seconds_per_epoch")
    if cached or not spe:
        return measuring
    per_sample = lambda t: t["n_latents"] + 8 * t["k"]  # noqa: E731
    return float(spe) * per_sample(nxt) / per_sample(last) * nxt["epochs"] + measuring


def search_warning(record: dict) -> list[str]:
    """A warning when the quality search ended short of its target (none when it was off)."""
    if record["met"] or not record["budget_s"]:
        return []
    return [f"quality search: {record['why']}"
            + (" (a larger --quality-budget lets it go on)" if record["stopped"].startswith("budget") else "")]


def heldout_rows(split: Split, cfg: JobConfig, model, acts: Activations) -> tuple:
    """``fidelity``'s ``heldout`` argument: the held-out activations that have a target."""
    rows, targets, exclude = heldout_targets(split, cfg, model.input_kind)
    x = np.asarray(acts.heldout)
    if len(targets) and rows.max() >= len(x):
        raise RuntimeError(f"held-out targets ({len(rows)} rows) do not match the {len(x)} captured rows")
    return x[rows], targets, exclude


def kernel_of(sae: TopKSAE, encoder: str | None = None) -> SAEKernel:
    """The NumPy kernel of ``sae``, with its own inference encoder or ``encoder``."""
    f = lambda t: t.detach().numpy().astype(np.float32)  # noqa: E731
    return SAEKernel(f(sae.W_enc), f(sae.b_enc), f(sae.W_dec), f(sae.b_dec), sae.cfg.k, encoder or sae.cfg.encoder)


class FidelityProbe:
    """What fidelity compares against, computed once per job: the test users' representations,
    the original ranks (full and against 99 sampled negatives), the original top-10 lists, and
    the held-out rows' original NDCG@10. :meth:`measures` then scores one SAE in a few seconds
    (the quality search scores several); :func:`fidelity` adds intervals and suppression."""

    def __init__(self, model, split: Split, heldout: tuple[np.ndarray, np.ndarray, list[np.ndarray]] | None = None):
        self.split = split
        self.users = eval_users(split, "test")
        self.x = represent(model, split, self.users, "test")
        self.emb = item_embeddings(model)
        try:
            self.negatives = sample_negatives(split, self.users, 99, seed=0)
        except ValueError:  # a catalogue too small for 99 unseen items per user
            self.negatives = None
        self.base_ranks, self.base_sampled = stage_ranks(self.x, self.emb, split, self.users, "test", self.negatives)
        self.hist = [split.history(int(u), "test") for u in self.users]
        self.ref_top = self.top10(self.x)
        self.heldout = heldout if heldout is not None and len(heldout[0]) else None
        if self.heldout is not None:
            hx, ht, hex_ = self.heldout
            self.held_base = ndcg_per_user(target_ranks(hx, self.emb, ht, hex_)[0], 10)

    def top10(self, xs: np.ndarray) -> np.ndarray:
        # in chunks of users: all at once, (users x items) scores and their copies took
        # 2.3 GB on Grocery (14.7k users x 8.7k items)
        return np.concatenate([score_top_k(xs[s : s + 2048], self.emb, 10, self.hist[s : s + 2048])[0]
                               for s in range(0, len(xs), 2048)])

    def overlap(self, xs: np.ndarray) -> float:
        top = self.top10(xs)
        return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top, self.ref_top)]))

    def ranks(self, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        return stage_ranks(xs, self.emb, self.split, self.users, "test", self.negatives)

    def held_ndcg(self, kernel: SAEKernel) -> np.ndarray:
        hx, ht, hex_ = self.heldout
        return ndcg_per_user(target_ranks(kernel.decode(kernel.encode(hx)), self.emb, ht, hex_)[0], 10)

    def measures(self, kernel: SAEKernel) -> dict:
        """The four fidelity measures of ``kernel``, under :func:`fidelity`'s keys (no intervals)."""
        x_rec = kernel.decode(kernel.encode(self.x))
        rec_ranks, rec_sampled = self.ranks(x_rec)
        m = "NDCG@10"
        out = {
            "original": {**metrics_from_ranks(self.base_ranks), "users": len(self.users)},
            "ndcg10_ratio_reconstruction": float(ndcg_per_user(rec_ranks, 10).mean()
                                                 / max(ndcg_per_user(self.base_ranks, 10).mean(), 1e-12)),
            "ndcg10_ratio_reconstruction_sampled99": (
                metrics_from_ranks(rec_sampled)[m] / max(metrics_from_ranks(self.base_sampled)[m], 1e-12)
                if self.negatives is not None else None),
            "overlap10_reconstruction": self.overlap(x_rec),
        }
        if self.heldout is not None:
            r = self.held_ndcg(kernel)
            out.update(heldout_rows=int(len(r)),
                       heldout_ndcg10_ratio_reconstruction=float(r.mean() / max(self.held_base.mean(), 1e-12)))
        return out


def fidelity(
    model, split: Split, kernel: SAEKernel, heldout: tuple[np.ndarray, np.ndarray, list[np.ndarray]] | None = None,
    probe: FidelityProbe | None = None,
) -> dict:
    """Test metrics with the SAE in the path, against the original model.

    - ``reconstruction``: x replaced by the SAE's reconstruction (the paper's setting), ranked
      over all items and, for comparison with published figures, against 99 sampled negatives
      (a far gentler test: an untrained SAE keeps ~0.9 of sampled NDCG@10 on ml-100k, ~0.75 of
      full-ranking NDCG@10);
    - ``error_preserving_none``: error-preserving mode with nothing suppressed (must equal the
      original exactly: the service's default path);
    - ``suppress_top1_*``: each user's strongest latent suppressed, in both modes, with the
      overlap of the top-10 list against the original model's;
    - ``heldout_*`` (with ``heldout = (x, targets, exclude)``, see :func:`heldout_targets`):
      the reconstruction's NDCG@10 ratio over every held-out activation with a next item, not
      only the test users: ~12x the rows on ml-100k, so the interval is a third as wide.

    ``probe``: the job's :class:`FidelityProbe` (its ``heldout`` is used), to skip recomputing
    the original's side.
    """
    p = probe or FidelityProbe(model, split, heldout)
    users, x, emb, negatives = p.users, p.x, p.emb, p.negatives
    codes = kernel.encode(x)
    x_rec = kernel.decode(codes)
    base_ranks, base_sampled = p.base_ranks, p.base_sampled
    rec_ranks, rec_sampled = p.ranks(x_rec)
    base = {**metrics_from_ranks(base_ranks), "users": len(users)}
    recon = {**metrics_from_ranks(rec_ranks), "users": len(users)}
    if negatives is not None:  # as evaluate_reps reports them
        base.update(metrics_from_ranks(base_sampled, prefix="sampled_"))
        recon.update(metrics_from_ranks(rec_sampled, prefix="sampled_"))
    top1 = Codes(codes.acts, codes.idx)
    supp_err = x - top1.acts[:, :1] * kernel.W_dec[top1.idx[:, 0]]
    recon_mask = codes.acts.copy()
    recon_mask[:, 0] = 0
    supp_rec = kernel.decode(Codes(recon_mask, codes.idx))
    overlap = p.overlap

    m = "NDCG@10"
    ci = paired_ratio_ci(ndcg_per_user(rec_ranks, 10), ndcg_per_user(base_ranks, 10))
    wide = {}
    if p.heldout is not None:
        b, r = p.held_base, p.held_ndcg(kernel)
        lo, hi = paired_ratio_ci(r, b)
        wide = {
            "heldout_rows": int(len(r)),
            "heldout_ndcg10_original": float(b.mean()),
            "heldout_ndcg10_ratio_reconstruction": float(r.mean() / max(b.mean(), 1e-12)),
            "heldout_ndcg10_ratio_reconstruction_ci95": [round(lo, 4), round(hi, 4)],
        }
    return {
        **wide,
        "original": base,
        "reconstruction": recon,
        "ndcg10_ratio_reconstruction": recon[m] / max(base[m], 1e-12),
        "ndcg10_ratio_reconstruction_ci95": [round(ci[0], 4), round(ci[1], 4)],
        "ndcg10_ratio_reconstruction_sampled99": (
            recon[f"sampled_{m}"] / max(base[f"sampled_{m}"], 1e-12) if negatives is not None else None
        ),
        "error_preserving_none_equal": bool(np.array_equal(kernel.steer(x, codes, {}), x)),
        "overlap10_reconstruction": overlap(x_rec),
        "overlap10_suppress_top1_error_preserving": overlap(supp_err),
        "overlap10_suppress_top1_reconstruction": overlap(supp_rec),
        "ndcg10_suppress_top1_error_preserving": evaluate_reps(supp_err, emb, split, users, "test")[m],
        "ndcg10_suppress_top1_reconstruction": evaluate_reps(supp_rec, emb, split, users, "test")[m],
    }


class QualityError(RecSAEError):
    """The trained SAE falls short of the quality the job was asked to guarantee."""


# Below these a bundle's concepts describe its recommendations only roughly: the job says so, in
# the log, the summary and the manifest (the service's GET /bundle and the audit page show it).
WARN_NDCG_RATIO = 0.90
WARN_FVU = 0.10
WARN_DEAD = 0.10


def fidelity_measures(fid: dict) -> list[dict]:
    """Every fidelity measure in ``fid``, worst first. Each is a share of the model the SAE keeps
    (NDCG@10 with the reconstruction in the path over the original's, on three sets; the share
    of the model's top-10 lists the reconstruction reproduces), so one bar compares them: on a
    music log the all-rows figure kept 0.911 while 99 sampled negatives kept 0.554."""
    held_rows = int(fid.get("heldout_rows") or 0)
    users = int((fid.get("original") or {}).get("users") or 0)
    found = (
        ("heldout_rows", f"of NDCG@10 over {held_rows:,} held-out rows",
         fid.get("heldout_ndcg10_ratio_reconstruction"), fid.get("heldout_ndcg10_ratio_reconstruction_ci95")),
        ("test_users", f"of NDCG@10 over {users:,} test users",
         fid.get("ndcg10_ratio_reconstruction"), fid.get("ndcg10_ratio_reconstruction_ci95")),
        ("sampled99", f"of NDCG@10 against 99 sampled negatives ({users:,} test users)",
         fid.get("ndcg10_ratio_reconstruction_sampled99"), None),
        ("top10_overlap", f"of the model's top-10 lists ({users:,} test users)", fid.get("overlap10_reconstruction"), None),
    )
    out = [{"name": n, "what": w, "value": float(v), **({"ci95": ci} if ci else {})}
           for n, w, v, ci in found if isinstance(v, (int, float))]
    return sorted(out, key=lambda m: m["value"])


def stronger_settings(setting: dict | None, tried: list[tuple[int, int, int]] = ()) -> str:
    """What to try next for a more faithful SAE, never a setting already tried (``setting``
    itself and ``tried``): the larger presets, else more latents and epochs; the pursuit encoder
    when the bundle uses TopK's."""
    if not setting:
        return "a larger k (--sae-preset balanced or fidelity) or --sae-encoder pursuit reconstructs more of it"
    k, x, ep = setting["k"], setting["expansion"], setting["epochs"]
    seen = {(k, x, ep), *map(tuple, tried)}
    opts = [f"--sae-preset {name} (k={pk}, expansion {px}, {pe} epochs)"
            for name, (pk, px, pe) in SAE_PRESETS.items()
            if (pk, px, pe) not in seen and pk >= k and px >= x and pe >= ep]
    if not opts:
        top = max(seen)
        cap = max(top[0], int(setting.get("d_in") or 2 * top[0]) // 2)
        manual = (min(2 * top[0], cap), 2 * max(s[1] for s in seen), max(s[2] for s in seen) * 3 // 2)
        opts.append(f"-k {manual[0]} --expansion {manual[1]} --sae-epochs {manual[2]}")
    if setting.get("encoder", "topk") == "topk":
        opts.append("--sae-encoder pursuit")
    return "try " + " or ".join(opts)


def quality_report(sae_metrics: dict, fid: dict, n_latents: int, setting: dict | None = None,
                   tried: list[tuple[int, int, int]] = ()) -> dict:
    """How well the SAE stands in for the model: every fidelity measure, worst first, and
    plain-language warnings.

    ``ndcg10_ratio`` stays the headline figure of older bundles: NDCG@10 kept on the larger of
    the two evaluated sets (all held-out rows with a next item for sequential models; the test
    users for user-based ones, whose held-out users are few). The gate is ``worst``: the lowest
    of :func:`fidelity_measures`, each held to the same bar. ``setting`` (k, expansion, epochs,
    encoder, d_in) and ``tried`` keep the advice off what was already tried.
    """
    held_rows = int(fid.get("heldout_rows") or 0)
    test_users = int(fid.get("original", {}).get("users") or 0)
    if fid.get("heldout_ndcg10_ratio_reconstruction") is not None and held_rows >= test_users:
        ratio, ci, on = fid["heldout_ndcg10_ratio_reconstruction"], fid.get("heldout_ndcg10_ratio_reconstruction_ci95"), f"{held_rows:,} held-out rows"
    else:
        ratio, ci, on = fid["ndcg10_ratio_reconstruction"], fid.get("ndcg10_ratio_reconstruction_ci95"), f"{test_users:,} test users"
    measures = fidelity_measures(fid)
    worst = measures[0] if measures else None
    held = sae_metrics.get("heldout") or {}
    n_train = int((sae_metrics.get("train") or {}).get("n_samples") or 0)
    few_rows = 0 < n_train < n_latents
    larger_k = ("too few training rows, not too small a k (see the last warning)" if few_rows
                else stronger_settings(setting, tried))
    warnings = []
    if worst is not None and worst["value"] < WARN_NDCG_RATIO:
        listed = ", ".join(f"{m['value']:.1%} {m['what']}" for m in measures)
        warnings.append(f"the SAE keeps only {worst['value']:.1%} {worst['what']}, the worst of its fidelity "
                        f"measures ({listed}): concepts explain these recommendations only roughly; {larger_k}")
    if held.get("fvu", 0.0) > WARN_FVU:
        advice = "" if warnings else f"; {larger_k}"  # said once
        warnings.append(f"held-out FVU {held['fvu']:.3f} > {WARN_FVU}: the latents leave "
                        f"{held['fvu']:.0%} of the representation's variance unexplained{advice}")
    if held.get("dead_ratio", 0.0) > WARN_DEAD:
        warnings.append(f"{held['dead_ratio']:.0%} of latents fire on no held-out activation "
                        "(dead): fewer latents (--expansion) would lose nothing")
    if few_rows:
        warnings.append(f"{n_latents:,} latents for {n_train:,} training rows (user-based models give "
                        "one row per user): the SAE memorises rather than generalises, at any --expansion "
                        "on ml-100k; a sequential model (--model sasrec) gives a row per interaction")
    return {"ndcg10_ratio": float(ratio), "ndcg10_ratio_ci95": ci, "measured_on": on, "worst": worst,
            "measures": measures, "bar": WARN_NDCG_RATIO, "advice": larger_k, "warnings": warnings}


WARN_CONFIDENCE = 0.80


def concept_warnings(summary: dict) -> list[str]:
    """A warning when the described concepts are, on average, poorly confirmed on held-out data
    (``mean_confidence``; absent when nothing was described)."""
    conf = summary.get("mean_confidence")
    if not isinstance(conf, (int, float)) or conf >= WARN_CONFIDENCE:
        return []
    share = summary.get("share_confidence_ge_0.8")
    return [f"concepts are hard to describe: mean confidence {conf:.3f} < {WARN_CONFIDENCE}"
            + (f", {share:.0%} of them at >= 0.8" if isinstance(share, (int, float)) else "")
            + "; explanations will name concepts the held-out data confirms only loosely"]
