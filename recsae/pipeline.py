"""The offline job: dataset -> recommender -> activations -> SAE -> concepts -> bundle.

Every stage caches its output in a work directory keyed by the settings that made it, so a
re-run with the same settings skips finished stages (resume after an interruption) and a
changed setting recomputes only what depends on it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
import torch

from recsae import ConfigError, RecSAEError
from recsae import ann
from recsae.bundle import Catalog, UserTable, write_bundle
from recsae.concepts import ConceptDictionary, placeholder_dictionary
from recsae.data import Dataset, Split, has_time, leave_one_out, split_description
from recsae.evaluate import (
    eval_users,
    evaluate_reps,
    metrics_from_ranks,
    ndcg_per_user,
    paired_ratio_ci,
    sample_negatives,
    stage_histories,
    stage_ranks,
    stage_targets,
    target_ranks,
)
from recsae.kernel import ENCODERS, Codes, SAEKernel, history_windows, top_items
from recsae.sae import SAEConfig, TopKSAE
from recsae.train import SAETrainConfig, SAETrainResult, TrainingStopped, measure, train_sae

log = logging.getLogger(__name__)


@dataclass
class JobConfig:
    """Settings of one offline run. Defaults: SASRec d=64, SAE k=8 x 1,024 latents (see README)."""

    dataset: str = "ml-100k"
    data_dir: str | None = None
    # "auto": where the data has ratings, those below the scale's midpoint are dislikes and are
    # not positive interactions (3 on MovieLens' 1-5); None keeps every rating (README, "Bring your own data")
    min_rating: float | str | None = "auto"
    kcore: int = 0
    # "auto": SASRec when the log has timestamps, LightGCN when it has none (see choose_model)
    model: str = "auto"
    # a log file instead of a named dataset: ``recsae.data.load_csv``'s keyword arguments
    # (path, user_col, item_col, time_col, weight_col, weight_kind, min_weight, sep, encoding),
    # with ``items`` holding ``recsae.data.ItemFile``'s fields
    data: dict | None = None
    model_params: dict = field(default_factory=dict)
    train_params: dict = field(default_factory=dict)
    expansion: int = 16
    k: int = 8
    sae_epochs: int = 60
    sae_batch_size: int = 512
    sae_lr: float = 2e-3
    heldout_fraction: float = 0.1
    describer: str = "stats"  # "stats" | "llm" | "none"
    llm: dict = field(default_factory=dict)
    seed: int = 0
    # torch intra-op threads: 1 by default, so a job never spins threads for cores a busy machine
    # does not give it (README, "Threads"); `recsae train --threads auto` measures the share
    threads: int = 1
    progress: bool = True
    # "popularity": latent 0 is reserved for the direction that raises the head items' scores, and
    # that direction is kept out of every other latent and of b_dec, so popularity becomes one
    # concept the service can suppress (README, "De-biasing"); None: a plain SAE
    sae_reserve: str | None = None
    # refuse to write a bundle whose SAE keeps less than this share of NDCG@10 (see quality_report)
    min_fidelity: float | None = None
    # when over WARN_DEAD of the latents come out dead, retrain the SAE with fewer (refit_expansion)
    # until they do not; the CLI sets it when --expansion is not given
    fit_latents: bool = False
    # inference encoder of the bundle: "topk" (the trained encoder) or "pursuit" (non-negative
    # orthogonal matching pursuit over the same decoder: a better code, ~0.3 ms more per request)
    sae_encoder: str = "topk"
    # the quality search (README, "Quality search"): when the SAE as configured keeps less than
    # ``target_ndcg`` of NDCG@10 (held-out rows) or leaves more than ``target_fvu`` of the
    # held-out variance unexplained, larger SAEs (``sae_ladder``) are trained on the cached
    # activations until one meets both or ``quality_budget`` seconds are spent; 0 = off (the SAE
    # exactly as configured). Defaults tuned on one dataset must not silently fail on the next.
    quality_budget: float = 600.0
    target_ndcg: float = 0.95
    target_fvu: float = 0.10
    # approximate retrieval (recsae.ann): "auto" = an IVF index from 100k items on, "off", "ivf", "hnsw"
    ann: str = "auto"

    def key(self, *names: str) -> str:
        d = asdict(self)
        return hashlib.sha256(json.dumps({n: d[n] for n in names}, sort_keys=True).encode()).hexdigest()[:12]


DATA_KEYS = ("dataset", "data_dir", "min_rating", "kcore", "data")
MODEL_KEYS = DATA_KEYS + ("model", "model_params", "train_params", "seed")
SAE_KEYS = MODEL_KEYS + ("expansion", "k", "sae_epochs", "sae_batch_size", "sae_lr", "heldout_fraction", "sae_reserve")
RESERVE_CHOICES = ("popularity",)


# -- data --------------------------------------------------------------------------------------
def load_data(cfg: JobConfig) -> Dataset:
    """The job's dataset; a log without time is split with the job's seed (``meta["split_seed"]``)."""
    from recsae.data.loaders import ItemFile, kcore_filter, load_csv, load_dataset

    if cfg.data:
        spec = dict(cfg.data)
        items = spec.pop("items", None)
        if items:
            items = ItemFile(**{k: tuple(v) if isinstance(v, list) else v for k, v in items.items()})
        ds = kcore_filter(load_csv(**spec, items=items), cfg.kcore)
    else:
        ds = load_dataset(cfg.dataset, data_dir=cfg.data_dir, min_rating=cfg.min_rating, kcore=cfg.kcore)
    ds.meta["split_seed"] = cfg.seed
    ds.meta["split"] = split_description(ds)
    return ds


def choose_model(cfg: JobConfig, ds: Dataset) -> tuple[str, str]:
    """``(model, why)``: the recommender for ``model="auto"``, or the given one with a caveat."""
    if cfg.model != "auto":
        if cfg.model == "sasrec" and not has_time(ds):
            return "sasrec", ("given (--model sasrec); note the log has no time column, so SASRec learns from the "
                              "file's row order, which may mean nothing")
        return cfg.model, "given"
    if has_time(ds):
        return "sasrec", ("the log has timestamps: SASRec models each user's sequence (the RecSAE paper's "
                          "setting) and gives the SAE one activation row per interaction")
    return "lightgcn", ("the log has no time column, so a user's items have no order for a sequential model "
                        "(SASRec) to learn from; LightGCN needs only who interacted with what (the user-item "
                        "graph) and beat BPR-MF on ml-100k (NDCG@10 0.052 vs 0.046). --model sasrec forces order")


def popularity_baseline(split: Split, stage: str = "test") -> dict:
    """The same metrics for ranking every user's unseen items by training popularity: the bar any
    recommender must clear on this split."""
    users = eval_users(split, stage)
    pop = np.bincount(np.concatenate(split.train), minlength=split.n_items).astype(np.float32)
    # ties (the many items with the same count) ranked pessimistically, as for every model
    return evaluate_reps(np.ones((len(users), 1), np.float32), pop[:, None], split, users, stage)


# -- recommender ---------------------------------------------------------------------------------
def train_recommender(cfg: JobConfig, split: Split, work: Path) -> tuple[Any, dict]:
    """Train (or reload from the work directory) the recommender; returns (model, metrics)."""
    from models import MODELS
    from models.training import TrainConfig, fit

    if cfg.model not in MODELS:
        raise ConfigError(f"unknown model {cfg.model!r}; choose one of {sorted(MODELS)}")
    cls = MODELS[cfg.model]
    ckpt, meta_path = work / "recommender.pt", work / "recommender.json"
    if ckpt.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        model = cls.from_config(meta["config"])
        model.load_state_dict(torch.load(ckpt, weights_only=True))
        model.eval()
        log.info("reusing trained recommender from %s", ckpt)
        return model, meta["metrics"]
    torch.manual_seed(cfg.seed)
    model = cls.for_split(split, **{"seed": cfg.seed, **cfg.model_params})
    tcfg = TrainConfig.for_model(cfg.model, seed=cfg.seed, progress=cfg.progress, **cfg.train_params)
    result = fit(model, split, tcfg)
    model.eval()
    metrics = {k: v for k, v in result.to_dict().items() if k != "history"}
    metrics["test"] = evaluate_model(model, split, "test")
    tmp = ckpt.with_suffix(".pt.tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(ckpt)
    meta_path.write_text(json.dumps({"config": model.config(), "metrics": metrics}, indent=2))
    return model, metrics


@torch.no_grad()
def represent(model, split: Split, users: np.ndarray, stage: str, batch: int = 1024) -> np.ndarray:
    out = [
        model.represent(model.encoder_inputs(split, users[s : s + batch], stage)).numpy()
        for s in range(0, len(users), batch)
    ]
    return np.concatenate(out) if out else np.zeros((0, model.dim), np.float32)


@torch.no_grad()
def item_embeddings(model) -> np.ndarray:
    return model.item_embeddings().detach().numpy().astype(np.float32)


def evaluate_model(model, split: Split, stage: str) -> dict:
    users = eval_users(split, stage)
    return evaluate_reps(represent(model, split, users, stage), item_embeddings(model), split, users, stage)


# -- activations ---------------------------------------------------------------------------------
@dataclass
class Activations:
    """Captured representations: SAE training rows and held-out rows, with where they came from.

    ``*_windows`` hold each row's history window (sequential models) so interpretation can show
    the sequences a latent fires on; for user-based models the window is the user's last items.
    """

    train: np.ndarray
    heldout: np.ndarray
    train_users: np.ndarray
    heldout_users: np.ndarray
    train_windows: np.ndarray
    heldout_windows: np.ndarray


def _holdout_mask(n: int, cfg: JobConfig) -> np.ndarray:
    """Which of ``n`` candidate rows are held out from SAE training (seeded by the job)."""
    return np.random.default_rng(cfg.seed).random(n) < cfg.heldout_fraction


@dataclass
class SAERows:
    """Where one part ("train" / "heldout") of the SAE's activation rows comes from."""

    users: np.ndarray
    inputs: list[np.ndarray]  # the history each row encodes (its window; for user-based models, the training items)
    targets: np.ndarray  # the item that followed that input, -1 where none
    exclude: list[np.ndarray]  # items ranked out when the target is ranked


def sae_rows(split: Split, cfg: JobConfig, input_kind: str) -> dict[str, SAERows]:
    """The SAE's training and held-out rows, in the order ``capture_activations`` writes them.

    Sequential models: every prefix ``train[:t]`` of every training sequence (target
    ``train[t]``), a seeded ``heldout_fraction`` of them held out, plus every evaluated user's
    dev and test input in the held-out part. User-based models: one row per user (test target,
    ranked without training and dev items), ``heldout_fraction`` of users held out.
    """
    if input_kind == "history":
        users, ts = _positions(split)
        hold = _holdout_mask(len(users), cfg)
        prefixes = [split.train[u][:t] for u, t in zip(users, ts)]
        nexts = np.array([split.train[u][t] for u, t in zip(users, ts)], dtype=np.int64)
        pick = lambda mask: [p for p, m in zip(prefixes, mask) if m]  # noqa: E731
        held = SAERows(users[hold], pick(hold), nexts[hold], [])
        for stage in ("dev", "test"):
            eu = eval_users(split, stage)
            held.users = np.concatenate([held.users, eu])
            held.inputs += stage_histories(split, eu, stage)
            held.targets = np.concatenate([held.targets, stage_targets(split, eu, stage)])
        held.exclude = held.inputs
        train_inputs = pick(~hold)
        return {"train": SAERows(users[~hold], train_inputs, nexts[~hold], train_inputs), "heldout": held}
    users = np.arange(split.n_users)
    hold = _holdout_mask(len(users), cfg)
    test = np.full(split.n_users, -1, dtype=np.int64)
    has = eval_users(split, "test")
    test[has] = stage_targets(split, has, "test")
    return {
        name: SAERows(us, [split.train[u] for u in us], test[us], [split.history(int(u), "test") for u in us])
        for name, us in (("train", users[~hold]), ("heldout", users[hold]))
    }


def heldout_targets(
    split: Split, cfg: JobConfig, input_kind: str
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """``(rows, targets, exclude)`` of the held-out activation rows that have a next item.

    Lets fidelity be measured on all ~12k held-out rows of ml-100k rather than the 943 test
    users alone, a third of the interval's width.
    """
    held = sae_rows(split, cfg, input_kind)["heldout"]
    rows = np.flatnonzero(held.targets >= 0)
    return rows, held.targets[rows], [held.exclude[i] for i in rows]


def _positions(split: Split) -> tuple[np.ndarray, np.ndarray]:
    """(user, t) for every prefix train[:t] with t >= 1 of every training sequence."""
    users, ts = [], []
    for u, seq in enumerate(split.train):
        if len(seq) > 1:
            t = np.arange(1, len(seq))
            users.append(np.full(len(t), u))
            ts.append(t)
    return np.concatenate(users).astype(np.int64), np.concatenate(ts).astype(np.int64)


@torch.no_grad()
def capture_activations(model, split: Split, cfg: JobConfig, work: Path) -> Activations:
    """Capture once into memory-mapped ``.npy`` files (reused when already complete).

    Sequential models: one row per prefix of every training sequence (the paper's training
    samples, ~98k on ml-100k); a random ``heldout_fraction`` of them plus every evaluated user's
    dev and test input is held out from SAE training. User-based models: one row per user (the
    representation exists only per user); ``heldout_fraction`` of users held out.
    """
    folder = work / f"activations-{cfg.key(*MODEL_KEYS, 'heldout_fraction')}"
    done = folder / "DONE"
    names = ["train", "heldout", "train_users", "heldout_users", "train_windows", "heldout_windows"]
    if done.exists():
        return Activations(*[np.load(folder / f"{n}.npy", mmap_mode="r") for n in names])
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    L = getattr(model, "max_len", None) if model.input_kind == "history" else None
    parts = {
        name: (r.users, history_windows(r.inputs, L or 20, split.n_items))
        for name, r in sae_rows(split, cfg, model.input_kind).items()
    }

    from tqdm.auto import tqdm

    for name, (us, ws) in parts.items():
        acts = np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=np.float32, shape=(len(us), model.dim))
        for s in tqdm(range(0, len(us), 4096), desc=f"capture {name}", disable=not cfg.progress):
            if model.input_kind == "history":
                inp = torch.from_numpy(ws[s : s + 4096])
            else:
                inp = torch.from_numpy(us[s : s + 4096].astype(np.int64))
            acts[s : s + len(inp)] = model.represent(inp).numpy()
        acts.flush()
        del acts
        np.save(folder / f"{name}_users.npy", us)
        np.save(folder / f"{name}_windows.npy", ws)
    done.write_text("ok")
    return Activations(*[np.load(folder / f"{n}.npy", mmap_mode="r") for n in names])


# -- SAE -----------------------------------------------------------------------------------------
# Bump when a change to the SAE training code changes what it produces for the same settings,
# so that cached SAEs from older code are not silently reused.
SAE_CODE_VERSION = 3  # 2: AuxK decodes the dead latents densely (ties at its top-k bar kept); 3: hand-written gradients, fused Adam, split resampling


def sae_settings(cfg: JobConfig, d_in: int) -> tuple[SAEConfig, SAETrainConfig]:
    sae_cfg = SAEConfig(d_in=d_in, expansion=cfg.expansion, k=cfg.k)
    tcfg = SAETrainConfig(
        epochs=cfg.sae_epochs, batch_size=cfg.sae_batch_size, lr=cfg.sae_lr, seed=cfg.seed,
        progress=cfg.progress,
    )
    return sae_cfg, tcfg


def refit_expansion(expansion: int, d: int, dead_ratio: float) -> int:
    """The expansion for a retrain after ``dead_ratio`` of ``expansion * d`` latents came out dead:
    the largest power-of-two share of ``expansion`` whose latents the alive ones could fill, and
    at most half of it. How many latents a dataset keeps alive is not its size: the synthetic
    default (400 items, 10 planted concepts) keeps ~180-200 of 256 or 1,024, ml-100k (1,682 items)
    all but 2% of 2,048."""
    alive = expansion * d * (1.0 - dead_ratio)
    new = max(1, expansion // 2)
    while new > 1 and new * d > alive:
        new //= 2
    return new


def sae_folder(cfg: JobConfig, work: Path) -> Path:
    """Cache folder of one SAE run inside a recommender's work folder (which fixes ``d_in``):
    keyed by the job's SAE settings, the defaults of every other SAE/training setting (so a
    changed default is a new run) and :data:`SAE_CODE_VERSION`."""
    # the inference encoder does not change training: one cached SAE serves both
    sae = {f.name: f.default for f in fields(SAEConfig) if f.name not in ("d_in", "encoder")} | {"expansion": cfg.expansion, "k": cfg.k}
    train = {f.name: f.default for f in fields(SAETrainConfig) if f.name not in ("progress", "threads")}
    full = json.dumps({"sae": sae, "train": train, "code": SAE_CODE_VERSION}, sort_keys=True)
    return Path(work) / f"sae-{cfg.key(*SAE_KEYS)}-{hashlib.sha256(full.encode()).hexdigest()[:8]}"


def head_of(n_items: int, split: Split) -> np.ndarray:
    """Mask of the top-20% items by training interactions: the de-bias head."""
    from recsae.debias import head_items

    return head_items(np.bincount(np.concatenate(split.train), minlength=n_items))


def popularity_direction(emb: np.ndarray, split: Split) -> np.ndarray:
    """Unit vector in representation space along which the head items' scores rise most against
    the catalogue's: mean embedding of the top-20% most popular items minus the mean of all."""
    head = head_of(len(emb), split)
    p = emb[head].mean(0) - emb.mean(0)
    return (p / max(float(np.linalg.norm(p)), 1e-12)).astype(np.float32)


def fit_sae(cfg: JobConfig, acts: Activations, work: Path, reserved: np.ndarray | None = None,
            should_stop: Callable[[], bool] | None = None) -> tuple[TopKSAE, dict]:
    """Train (or reload) the SAE ``cfg`` names; ``should_stop``: see ``train_sae`` (nothing is
    cached from a stopped run)."""
    folder = sae_folder(cfg, work)
    if (folder / "metrics.json").exists():
        return TopKSAE.load(folder), json.loads((folder / "metrics.json").read_text())
    sae_cfg, tcfg = sae_settings(cfg, acts.train.shape[1])
    res: SAETrainResult = train_sae(np.asarray(acts.train), sae_cfg, tcfg, np.asarray(acts.heldout),
                                    reserved=None if reserved is None else torch.from_numpy(np.atleast_2d(reserved)),
                                    should_stop=should_stop)
    metrics = res.summary()
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    res.sae.save(tmp)
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return res.sae, metrics


# -- the quality search --------------------------------------------------------------------------
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
        # in chunks of users: all at once, (users x items) scores and top_items' copies took
        # 2.3 GB on Grocery (14.7k users x 8.7k items)
        return np.concatenate([top_items(xs[s : s + 2048] @ self.emb.T, 10, self.hist[s : s + 2048])[0]
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


# -- the job -------------------------------------------------------------------------------------
@dataclass
class JobResult:
    bundle: Path
    summary: dict


def work_dir_for(cfg: JobConfig, root: Path) -> Path:
    """The cache folder of one (dataset, recommender) pair; SAE runs live inside it."""
    work = Path(root) / f"{cfg.dataset.replace('/', '_')}-{cfg.model}-{cfg.key(*MODEL_KEYS)}"
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

    t = time.perf_counter()
    ds = load_data(cfg)  # before anything is written: a bad file leaves no trace
    split = leave_one_out(ds)
    model_name, model_why = choose_model(cfg, ds)
    if model_name != cfg.model:
        cfg = replace(cfg, model=model_name)
    log.info("model %s: %s", model_name, model_why)
    work = work_dir_for(cfg, Path(work_dir) if work_dir else out.parent / ".recsae-work")
    t = lap("data", t)
    model, rec_metrics = train_recommender(cfg, split, work)
    rec_metrics = {**rec_metrics, "popularity_baseline_test": popularity_baseline(split)}
    t = lap("recommender", t)
    acts = capture_activations(model, split, cfg, work)
    t = lap("capture", t)
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

    serve_users = np.arange(split.n_users)
    serve_x = represent(model, split, serve_users, "serve")
    ref = measure(kernel, serve_x)
    concepts = interpret_concepts(cfg, ds, split, model, kernel, acts, work)
    quality["warnings"] += concept_warnings(concepts.summary)
    t = lap("interpret", t)

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
        UserTable.from_histories(ds.user_ids, [split.full_history(u) for u in range(split.n_users)]).save(
            tmp / "users.npz"
        )
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
    summary = {"bundle": str(bundle), "version": manifest["version"], "timings_s": timings,
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
    from recsae.cli import SAE_PRESETS

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


def interpret_concepts(cfg, ds, split, model, kernel, acts, work) -> ConceptDictionary:
    """Describe every latent (``recsae.interpret``); a placeholder dictionary when disabled."""
    if cfg.describer == "none":
        concepts = placeholder_dictionary(measure_freq(kernel, acts.heldout), reason="describer disabled")
    else:
        from recsae.interpret import describe_bundle_latents

        concepts = describe_bundle_latents(cfg, ds, split, model, kernel, acts, work)
    if cfg.sae_reserve == "popularity":
        describe_reserved_popularity(concepts, kernel, np.asarray(acts.heldout), item_embeddings(model), split)
    return concepts


def describe_reserved_popularity(concepts: ConceptDictionary, kernel: SAEKernel, x: np.ndarray, emb: np.ndarray,
                                 split: Split) -> None:
    """Latent 0 of a ``sae_reserve="popularity"`` SAE is popularity by construction; it fires for
    almost everyone, so firing-based describers find nothing: its magnitude is what matters.
    Its confidence is measured, not assumed: the AUC of its activation for whether the model's
    top recommendation on a held-out row is one of the 20% most popular items."""
    from recsae.concepts import DetectionScore
    from recsae.debias import auc

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
        from recsae.interpret import summarize

        concepts.summary = {**concepts.summary, **summarize(concepts.concepts)}  # counts it as described


def measure_freq(kernel: SAEKernel, x: np.ndarray) -> np.ndarray:
    codes = kernel.encode(np.asarray(x))
    counts = np.bincount(codes.idx[codes.acts > 0], minlength=kernel.n_latents)
    return counts / max(1, len(x))
