"""The offline job's stages before the bundle: data, recommender, activation capture, SAE. Each caches
its output in the work folder under a key of the settings it depends on."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from recsae import ConfigError
from recsae.config import MODEL_KEYS, SAE_KEYS, JobConfig
from recsae.data import Dataset, Split, has_time, split_description
from recsae.evaluate import eval_users, evaluate_reps, head_of, stage_histories, stage_targets
from recsae.kernel import history_windows
from recsae.sae import SAEConfig, TopKSAE
from recsae.train import SAETrainConfig, SAETrainResult, train_sae

log = logging.getLogger(__name__)


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
