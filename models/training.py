"""Fit a :class:`models.base.Recommender` on a split: Adam, early stopping on dev NDCG@10.

Per-model defaults (``TrainConfig.for_model``) were tuned on ml-100k with
``benchmarks/recommenders.py`` to reach good test NDCG in well under two minutes on 2 CPU cores.
"""

from __future__ import annotations

import copy
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from models.base import Recommender
from recsae import ConfigError
from recsae.data.core import Split
from recsae.evaluate import eval_users, evaluate_reps

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Optimizer and schedule. The objective itself (loss, negatives, dropout) is a model option."""

    epochs: int = 50
    batch_size: int = 256  # per step: users (softmax MF/LightGCN), pairs (BPR), windows (SASRec)
    lr: float = 1e-3
    weight_decay: float = 0.0
    # "cosine": lr * (1 + cos(pi * (epoch - 1) / epochs)) / 2 per epoch, so a fixed epoch budget
    # ends on small steps (a smoother, slightly better final model than a constant lr).
    schedule: str = "constant"
    patience: int = 5  # evaluations without dev improvement before stopping
    min_epochs: int = 0  # never stop before this (the dev metric can plateau early at popularity)
    eval_every: int = 1
    metric: str = "NDCG@10"
    seed: int = 0
    threads: int | None = None  # torch intra-op threads; None leaves the process setting alone
    progress: bool = True  # tqdm bar over epochs
    max_seconds: float | None = None  # wall-clock budget; stops after the epoch that exceeds it

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.eval_every < 1 or self.patience < 1:
            raise ConfigError("epochs, batch_size, eval_every and patience must be >= 1")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ConfigError("lr must be > 0 and weight_decay >= 0")
        if self.schedule not in ("constant", "cosine"):
            raise ConfigError(f"schedule must be 'constant' or 'cosine', not {self.schedule!r}")
        if self.min_epochs < 0:
            raise ConfigError("min_epochs must be >= 0")

    @staticmethod
    def for_model(name: str, **overrides: Any) -> "TrainConfig":
        """Tuned defaults for ``"bprmf"``, ``"lightgcn"`` or ``"sasrec"`` (plus overrides)."""
        if name not in DEFAULTS:
            raise ConfigError(f"no training defaults for model {name!r}; known: {sorted(DEFAULTS)}")
        return replace(DEFAULTS[name], **overrides)


DEFAULTS: dict[str, TrainConfig] = {
    # user-batched full softmax: 15 steps/epoch, so a high lr; converges in ~15 epochs (~3 s)
    "bprmf": TrainConfig(
        epochs=60, batch_size=64, lr=1e-2, weight_decay=1e-5, patience=5, min_epochs=10
    ),
    # the smoothed embeddings first learn popularity and plateau there: do not stop before 20
    "lightgcn": TrainConfig(epochs=60, batch_size=64, lr=3e-2, patience=5, min_epochs=20),
    # a fixed 20-epoch cosine budget: dev NDCG is noisy, and the best model is near the end
    "sasrec": TrainConfig(epochs=20, batch_size=256, lr=3e-3, schedule="cosine", patience=5),
}


@dataclass
class TrainResult:
    """What ``fit`` achieved; the model itself holds the best weights afterwards."""

    best_epoch: int
    epochs_run: int
    best_dev: dict
    seconds: float
    history: list[dict] = field(default_factory=list)  # per evaluated epoch: loss, dev, time

    def to_dict(self) -> dict:
        return asdict(self)


def dev_metrics(model: Recommender, split: Split, stage: str = "dev") -> dict:
    """Full-ranking metrics of ``model`` at ``stage`` through the shared scorer."""
    users = eval_users(split, stage)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        reps = model.represent(model.encoder_inputs(split, users, stage)).numpy()
        items = model.item_embeddings().numpy()
    model.train(was_training)
    return evaluate_reps(reps, items, split, users, stage)


def fit(model: Recommender, split: Split, cfg: TrainConfig | None = None) -> TrainResult:
    """Train on ``split.train``, early-stop on dev ``cfg.metric``, end with the best weights."""
    cfg = cfg or TrainConfig.for_model(model.name)
    if len(eval_users(split, "dev")) == 0:
        raise ConfigError("the split has no dev users to early-stop on")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    start = time.perf_counter()
    best_score, best_epoch, best_dev = -1.0, 0, {}
    best_state = copy.deepcopy(model.state_dict())
    history: list[dict] = []
    stale, epoch = 0, 0
    bar = tqdm(
        range(1, cfg.epochs + 1), desc=f"fit {model.name}", disable=not cfg.progress, leave=False
    )
    for epoch in bar:
        if cfg.schedule == "cosine":
            for group in opt.param_groups:
                group["lr"] = cfg.lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / cfg.epochs))
        model.train()
        total, n = 0.0, 0
        for batch in model.batches(split, cfg.batch_size, rng):
            opt.zero_grad(set_to_none=True)
            loss = model.loss(batch)
            loss.backward()
            opt.step()
            total += float(loss.detach())
            n += 1
        mean_loss = total / max(n, 1)
        out_of_time = cfg.max_seconds is not None and time.perf_counter() - start > cfg.max_seconds
        if epoch % cfg.eval_every and epoch != cfg.epochs and not out_of_time:
            continue
        dev = dev_metrics(model, split, "dev")
        score = dev[cfg.metric]
        elapsed = time.perf_counter() - start
        history.append({"epoch": epoch, "loss": mean_loss, "seconds": elapsed, **dev})
        log.info(
            "%s epoch %d loss %.4f dev %s %.4f (%.1fs)",
            model.name, epoch, mean_loss, cfg.metric, score, elapsed,
        )
        bar.set_postfix(loss=f"{mean_loss:.4f}", dev=f"{score:.4f}")
        if score > best_score:
            best_score, best_epoch, best_dev, stale = score, epoch, dev, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if stale >= cfg.patience and epoch >= cfg.min_epochs:
                ended = f"stopped early at epoch {epoch} of {cfg.epochs}: no dev gain in {stale} evaluations"
                break
        if out_of_time:
            ended = f"stopped at epoch {epoch} of {cfg.epochs}: the {cfg.max_seconds:g} s budget is spent"
            break
    else:
        ended = f"ran all {cfg.epochs} epochs"
    bar.close()
    if cfg.progress:  # the bar vanishes (leave=False): say how the fit ended and what it kept
        tqdm.write(f"fit {model.name}: {ended}; kept epoch {best_epoch} (dev {cfg.metric} {best_score:.4f})",
                   file=sys.stderr)
    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(
        best_epoch=best_epoch,
        epochs_run=epoch,
        best_dev=best_dev,
        seconds=time.perf_counter() - start,
        history=history,
    )
