"""The offline job's settings, and the single source of the ``recsae train`` flags.

Each field that is also a command-line flag carries its help, choices, type and flag name in its
metadata (:func:`option`); ``recsae.cli`` builds the parser from them (:func:`add_flags`), so a
choice or a default is written once. Torch-free, so the CLI checks input before heavy imports.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import MISSING, Field, asdict, dataclass, field, fields
from typing import Any, Sequence, get_args

from recsae import ConfigError
from recsae.data.logfile import WEIGHT_KINDS
from recsae.kernel import ENCODERS, SteerMode

DESCRIBERS = ("stats", "llm", "none")
RESERVE_CHOICES = ("popularity",)
MODEL_CHOICES = ("auto", "sasrec", "bprmf", "lightgcn")  # models.MODELS, without importing torch
STEER_MODES = get_args(SteerMode)


def option(default: Any = MISSING, help: str = "", *, factory: Any = None, **cli: Any) -> Any:
    """A config field that is also a flag: ``cli`` holds ``argparse`` keywords (``choices``,
    ``type``, ``metavar``, ``action``), ``flags`` (default ``--field-name``) and ``cli_default``
    where the flag's default differs from the field's (e.g. ``None`` = "from the preset")."""
    meta = {"help": help, "cli": cli}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def add_flags(parser: argparse.ArgumentParser | Any, config: type, names: Sequence[str]) -> None:
    """Add the flags of ``config``'s fields ``names``, in that order, from their metadata."""
    by_name: dict[str, Field] = {f.name: f for f in fields(config)}
    for name in names:
        f = by_name[name]
        cli = dict(f.metadata["cli"])
        flags = cli.pop("flags", None) or [f"--{name.replace('_', '-')}"]
        if "cli_default" in cli:
            default = cli.pop("cli_default")
        elif cli.get("action") == "append":
            default = []
        else:
            default = f.default_factory() if f.default is MISSING else f.default
        parser.add_argument(*flags, default=default, help=f.metadata["help"], **cli)


def min_rating_arg(text: str) -> float | str | None:
    """``--min-rating``: a number, ``auto`` (the scale's midpoint where there are ratings) or ``all``."""
    if text in ("auto", "all"):
        return None if text == "all" else "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, 'auto' or 'all', not {text!r}") from None


def parse_duration(text: str) -> float:
    """Seconds from ``600``, ``90s``, ``10m``, ``1.5h``; ``0`` or ``off`` is 0 (no quality search)."""
    t = text.strip().lower()
    if t in ("off", "none", "no"):
        return 0.0
    scale = {"s": 1, "m": 60, "h": 3600}.get(t[-1:], None)
    try:
        value = float(t[:-1] if scale else t) * (scale or 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give seconds (600), minutes (10m), hours (1h), or off") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: the budget must be a finite time >= 0")
    return value


def threads_arg(text: str) -> int | str:
    """``--threads``: a count >= 1 or ``auto``."""
    if text == "auto":
        return text
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number >= 1, or auto")
    return n


LLM_HELP = (
    "LLM describer setting, repeatable: base_url=http://host:8000/v1, model=NAME, concurrency=N, "
    "temperature=0, api_key_env=VAR, price_input_per_1m=USD ... (the API key itself is read from $OPENAI_API_KEY "
    "or the variable named by api_key_env, never from the command line)")
DATA_DIR_HELP = ("folder holding the datasets (default: $RECSAE_DATA_DIR, else ../shared/data next to the "
                 "repository if present, else ~/.cache/recsae/data)")


@dataclass
class JobConfig:
    """Settings of one offline run. Defaults: SASRec d=64, SAE k=8 x 1,024 latents (see README)."""

    dataset: str = option("ml-100k", (
        "ml-100k, ml-1m, ml-latest-small, grocery, synthetic, a dataset folder, or auto = ml-100k when "
        "the data folder has it, else synthetic (default: auto)"), cli_default="auto")
    data_dir: str | None = option(None, DATA_DIR_HELP)
    # "auto": where the data has ratings, those below the scale's midpoint are dislikes and are
    # not positive interactions (3 on MovieLens' 1-5); None keeps every rating (README, "Bring your own data")
    min_rating: float | str | None = option("auto", (
        "keep ratings >= this as positive interactions; auto (default) = the rating scale's midpoint "
        "(3 on MovieLens' 1-5: 1-2 stars are dislikes), nothing for data without ratings; all keeps every rating"),
        type=min_rating_arg, metavar="auto|all|NUMBER")
    kcore: int = option(0, "drop users and items with fewer interactions than this, repeatedly (0 = keep all)", type=int)
    # "auto": SASRec when the log has timestamps, LightGCN when it has none (see choose_model)
    model: str = option("auto", (
        "auto (default): sasrec when the data has timestamps, lightgcn when it has none (a sequential model "
        "needs an order)"), choices=MODEL_CHOICES)
    # a log file instead of a named dataset: ``recsae.data.load_csv``'s keyword arguments
    # (path, user_col, item_col, time_col, weight_col, weight_kind, min_weight, sep, encoding),
    # with ``items`` holding ``recsae.data.ItemFile``'s fields
    data: dict | None = None
    model_params: dict = option(factory=dict, help="recommender setting, repeatable, e.g. dim=64 (see models/)",
                                flags=["--model-param"], action="append", metavar="KEY=VALUE")
    train_params: dict = option(factory=dict, help=(
        "recommender training setting, repeatable, e.g. epochs=50 or lr=1e-3 (see models/training.py)"),
        flags=["--train-param"], action="append", metavar="KEY=VALUE")
    # the CLI's defaults are None: the --sae-preset's (SAE_PRESETS), each overridden by its flag
    expansion: int = option(16, "latents = expansion x d (overrides the preset)", type=int, cli_default=None)
    k: int = option(8, "active latents per sample (overrides the preset)", flags=["-k", "--k"], type=int,
                    cli_default=None)
    sae_epochs: int = option(60, "SAE epochs (overrides the preset)", type=int, cli_default=None)
    sae_batch_size: int = 512
    sae_lr: float = 2e-3
    heldout_fraction: float = 0.1
    describer: str = option("stats", (
        "how latents get names: stats = from item features, llm = an OpenAI-compatible model, none"),
        choices=DESCRIBERS)
    llm: dict = option(factory=dict, help=LLM_HELP, action="append", metavar="KEY=VALUE")
    seed: int = option(0, "random seed of the recommender and the SAE", type=int)
    # torch intra-op threads: 1 by default, so a job never spins threads for cores a busy machine
    # does not give it (README, "Threads"); `recsae train --threads auto` measures the share
    threads: int = option(1, (
        "torch intra-op threads for training; more than the CPUs this job really gets slows it down "
        "on a busy machine; auto = the CPUs it may use less the current load average (at least 1)"),
        type=threads_arg, metavar="N|auto")
    progress: bool = True
    # "popularity": latent 0 is reserved for the direction that raises the head items' scores, and
    # that direction is kept out of every other latent and of b_dec, so popularity becomes one
    # concept the service can suppress (README, "De-biasing"); None: a plain SAE
    sae_reserve: str | None = option(None, (
        "reserve latent 0 for this direction and keep it out of every other latent and of the "
        "decoder bias, so suppressing latent 0 removes it (popularity: the direction that raises "
        "the 20%% most popular items' scores; default: none)"), choices=RESERVE_CHOICES)
    # refuse to write a bundle whose SAE keeps less than this share of NDCG@10 (see quality_report)
    min_fidelity: float | None = option(None, (
        "fail (exit 2, no bundle) when NDCG@10 with the SAE's reconstruction in the path is below "
        "this share of the model's, e.g. 0.95; without it, a low figure is only a warning"),
        type=float, metavar="RATIO")
    # when over WARN_DEAD of the latents come out dead, retrain the SAE with fewer (refit_expansion)
    # until they do not; the CLI sets it when --expansion is not given
    fit_latents: bool = False
    # inference encoder of the bundle: "topk" (the trained encoder) or "pursuit" (non-negative
    # orthogonal matching pursuit over the same decoder: a better code, ~0.3 ms more per request)
    sae_encoder: str = option("topk", (
        "how the bundle encodes at inference: topk = the trained encoder (default); pursuit = "
        "matching pursuit over the same decoder, k latents still: keeps more of the model (k=8 on "
        "ml-100k: 98.5%% of NDCG@10 instead of 97.3%%) for ~0.3 ms more per request"), choices=ENCODERS)
    # the quality search (README, "Quality search"): when the SAE as configured keeps less than
    # ``target_ndcg`` of NDCG@10 (held-out rows) or leaves more than ``target_fvu`` of the
    # held-out variance unexplained, larger SAEs (``sae_ladder``) are trained on the cached
    # activations until one meets both or ``quality_budget`` seconds are spent; 0 = off (the SAE
    # exactly as configured). Defaults tuned on one dataset must not silently fail on the next.
    quality_budget: float = option(600.0, (
        "when the SAE keeps < 95%% of NDCG@10 (held-out rows) or held-out FVU > 0.10, train larger "
        "ones (k doubled, then more latents and epochs) on the cached activations until one does, "
        "for at most this long: 600 (seconds), 10m, 1h; 0 or off = the SAE exactly as asked "
        "(default 10m)"), type=parse_duration, metavar="TIME")
    target_ndcg: float = 0.95
    target_fvu: float = 0.10
    # approximate retrieval (recsae.ann): "auto" = an IVF index from 100k items on, "off", "ivf", "hnsw"
    ann: str = option("auto", (
        "approximate retrieval: a faiss index in the bundle whose candidates the service re-scores "
        "exactly; auto = IVF from 100k items on, exact below (needs the `ann` extra, faiss-cpu)"),
        choices=("auto", "off", "ivf", "hnsw"))

    def key(self, *names: str) -> str:
        d = asdict(self)
        return hashlib.sha256(json.dumps({n: d[n] for n in names}, sort_keys=True).encode()).hexdigest()[:12]


DATA_KEYS = ("dataset", "data_dir", "min_rating", "kcore", "data")
MODEL_KEYS = DATA_KEYS + ("model", "model_params", "train_params", "seed")
SAE_KEYS = MODEL_KEYS + ("expansion", "k", "sae_epochs", "sae_batch_size", "sae_lr", "heldout_fraction", "sae_reserve")

# Named SAE shapes (k, expansion, epochs): "paper" is the RecSAE paper's setting and the default
# (8 concepts per explanation, a 35 s SAE stage on ml-100k, ~97% of NDCG@10 with the
# reconstruction in the path); "balanced" keeps 99% of it on ml-100k at the same training time,
# with 16 concepts per explanation; "fidelity" 99.5% for 2.5-3.5 min of SAE training. Other data
# keeps less (Grocery: 84% / 90% / 95%): figures, not promises (README, "Defaults"); the quality
# search climbs these presets when the first falls short.
SAE_PRESETS = {"paper": (8, 16, 60), "balanced": (16, 16, 60), "fidelity": (32, 32, 120)}


def _min_weight_arg(text: str) -> float | str | None:
    return "all" if text == "all" else min_rating_arg(text)


def sep_arg(text: str | None) -> str | None:
    """``--sep tab|comma|semicolon|pipe|CHAR``; None = sniffed."""
    return {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}.get(text or "", text) or None


@dataclass
class LogFlags:
    """``recsae train --data FILE`` and its column flags: the single source of those flags (help,
    defaults, choices); :meth:`spec` turns them into ``JobConfig.data`` (``load_csv``'s keyword
    arguments, with ``items`` holding ``ItemFile``'s fields) after the checks a person needs."""

    data: str | None = option(None, "an interaction log instead of --dataset: CSV/TSV (separator sniffed), gzip "
                                    "or Parquet, with a header row", metavar="FILE")
    sep: str | None = option(None, "the log's separator (tab, comma, semicolon, pipe or the character); default: sniffed")
    user_col: str = option("user_id", "user id column (default user_id)")
    item_col: str = option("item_id", "item id column (default item_id)")
    time_col: str | None = option(None, "timestamp column (unix seconds or ISO dates); without it the split is a "
                                        "seeded random leave-one-out and the model defaults to lightgcn")
    weight_col: str | None = option(None, "a rating or count column (see --weight-kind, --min-weight)")
    weight_kind: str = option("auto", "auto (default): ratings are 2-20 distinct half-steps within 0-10, anything "
                                      "else counts", choices=WEIGHT_KINDS)
    min_weight: float | str | None = option(
        None, "keep rows whose weight >= this (default auto: ratings >= the scale's midpoint, counts > 0; a count "
              "is binarised, never a sample weight: README)", type=_min_weight_arg, metavar="auto|all|NUMBER")
    encoding: str = option("utf-8", "text encoding of the log (and of --items unless --items-encoding), e.g. latin-1")
    items: str | None = option(None, "item file: names and attributes (tags, category) per item", metavar="FILE")
    item_id_col: str | None = option(None, "item id column of --items (default: --item-col)")
    item_name_col: str | None = option(None, "item name column of --items (titles)")
    item_text_col: list = option(help="a one-value attribute column of --items (e.g. category), repeatable",
                                 factory=list, action="append", metavar="COL")
    item_list_col: list = option(help="a multi-value attribute column of --items (e.g. tags), split on --list-sep, "
                                      "repeatable", factory=list, action="append", metavar="COL")
    list_sep: str = option("|", "separator inside --item-list-col values (default '|')")
    items_sep: str | None = option(None, "separator of --items (default: sniffed)")
    items_encoding: str | None = option(None, "text encoding of --items (default: --encoding)")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def spec(self, dataset: str, min_rating: float | str | None) -> dict | None:
        """``JobConfig.data`` (None without ``--data``); raises ``ConfigError`` saying what to fix."""
        from pathlib import Path

        if not self.data:
            stray = [f"--{n.replace('_', '-')}" for n in ("items", "time_col", "weight_col", "min_weight") if getattr(self, n)]
            if stray:
                raise ConfigError(f"{', '.join(stray)} describe a --data FILE; give one, or drop them")
            return None
        if dataset != "auto":
            raise ConfigError("give --dataset or --data FILE, not both")
        if not Path(self.data).is_file():
            raise ConfigError(f"--data {self.data}: no such file")
        if self.min_weight is not None and not self.weight_col:
            raise ConfigError("--min-weight needs --weight-col: the log's rating or count column")
        min_weight = self.min_weight if self.min_weight is not None else min_rating
        min_weight = None if min_weight == "all" else min_weight
        spec: dict = {
            "path": str(Path(self.data).resolve()), "user_col": self.user_col, "item_col": self.item_col,
            "time_col": self.time_col, "weight_col": self.weight_col, "weight_kind": self.weight_kind,
            "min_weight": min_weight if self.weight_col else None, "sep": sep_arg(self.sep), "encoding": self.encoding,
        }
        if self.items:
            if not Path(self.items).is_file():
                raise ConfigError(f"--items {self.items}: no such file")
            spec["items"] = {
                "path": str(Path(self.items).resolve()), "id_col": self.item_id_col or self.item_col,
                "name_col": self.item_name_col, "text_cols": list(self.item_text_col),
                "list_cols": list(self.item_list_col), "list_sep": self.list_sep, "sep": sep_arg(self.items_sep),
                "encoding": self.items_encoding,
            }
        elif self.item_name_col or self.item_text_col or self.item_list_col:
            raise ConfigError("--item-name-col/--item-text-col/--item-list-col name columns of --items FILE: give it")
        return spec
