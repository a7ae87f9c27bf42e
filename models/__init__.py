"""Recommenders whose internal user representation the SAE probes (torch; never imported by the
service). ``MODELS`` maps a name to its class; ``build`` / ``from_config`` construct one."""

from __future__ import annotations

from typing import Any

from models.base import Recommender, check_onnx, export_onnx
from models.bprmf import BPRMF
from models.lightgcn import LightGCN
from models.sasrec import SASRec
from models.training import TrainConfig, TrainResult, fit
from recsae import ConfigError
from recsae.data.core import Split

MODELS: dict[str, type[Recommender]] = {"bprmf": BPRMF, "lightgcn": LightGCN, "sasrec": SASRec}


def _cls(name: str) -> type[Recommender]:
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name]


def build(name: str, split: Split, **hparams: Any) -> Recommender:
    """A fresh model ``name`` sized for ``split`` with the given hyperparameters."""
    return _cls(name).for_split(split, **hparams)


def from_config(cfg: dict) -> Recommender:
    """Rebuild an (untrained) model from ``model.config()``; then ``load_state_dict``."""
    if "name" not in cfg:
        raise ConfigError("model config has no 'name'")
    return _cls(cfg["name"]).from_config(cfg)


__all__ = [
    "BPRMF",
    "LightGCN",
    "MODELS",
    "Recommender",
    "SASRec",
    "TrainConfig",
    "TrainResult",
    "build",
    "check_onnx",
    "export_onnx",
    "fit",
    "from_config",
]
