"""The offline job's settings (torch-free: the CLI builds its flags from them before any heavy import)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field


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

    def key(self, *names: str) -> str:
        d = asdict(self)
        return hashlib.sha256(json.dumps({n: d[n] for n in names}, sort_keys=True).encode()).hexdigest()[:12]


DATA_KEYS = ("dataset", "data_dir", "min_rating", "kcore", "data")
MODEL_KEYS = DATA_KEYS + ("model", "model_params", "train_params", "seed")
SAE_KEYS = MODEL_KEYS + ("expansion", "k", "sae_epochs", "sae_batch_size", "sae_lr", "heldout_fraction", "sae_reserve")
RESERVE_CHOICES = ("popularity",)

# Named SAE shapes (k, expansion, epochs): "paper" is the RecSAE paper's setting and the default
# (8 concepts per explanation, a 35 s SAE stage on ml-100k, ~97% of NDCG@10 with the
# reconstruction in the path); "balanced" keeps 99% of it on ml-100k at the same training time,
# with 16 concepts per explanation; "fidelity" 99.5% for 2.5-3.5 min of SAE training. Other data
# keeps less (Grocery: 84% / 90% / 95%): figures, not promises (README, "Defaults"); the quality
# search climbs these presets when the first falls short.
SAE_PRESETS = {"paper": (8, 16, 60), "balanced": (16, 16, 60), "fidelity": (32, 32, 120)}
