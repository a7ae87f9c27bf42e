"""BPR-MF: matrix factorization; the probed representation is the user embedding.

Name kept from the RecSAE paper's model zoo. By default it is trained with a full-softmax
cross-entropy over all items instead of the 1-negative BPR loss (``loss="bpr"`` is still
available): on ml-100k the softmax reaches a better NDCG in a handful of epochs, while BPR
needs many more epochs and careful regularization for a lower score (see
``benchmarks/recommenders.py``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from models.base import UserItemRecommender, init_seeded
from recsae.data.core import Split


class BPRMF(UserItemRecommender):
    """``score(u, i) = <p_u, q_i>``; ``represent(users) = p_u``."""

    name: ClassVar[str] = "bprmf"
    kind: ClassVar[str] = "general"

    def __init__(
        self,
        n_users: int,
        n_items: int,
        dim: int = 64,
        loss: str = "softmax",
        n_negatives: int = 0,
        l2: float = 0.0,
        init_std: float = 0.1,
        seed: int = 0,
    ) -> None:
        super().__init__(loss, n_negatives, l2)
        self.n_users, self.n_items, self.dim = n_users, n_items, dim
        self.init_std, self.seed = init_std, seed
        self.user_emb = nn.Embedding(n_users, dim)
        self.item_emb = nn.Embedding(n_items, dim)
        init_seeded(self, seed, self._init)

    def _init(self, _: nn.Module) -> None:
        nn.init.normal_(self.user_emb.weight, std=self.init_std)
        nn.init.normal_(self.item_emb.weight, std=self.init_std)

    def user_item_vectors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user_emb.weight, self.item_emb.weight

    def ego_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user_emb.weight, self.item_emb.weight

    def config(self) -> dict:
        return {
            "name": self.name,
            "n_users": self.n_users,
            "n_items": self.n_items,
            "dim": self.dim,
            "loss": self.loss_type,
            "n_negatives": self.n_negatives,
            "l2": self.l2,
            "init_std": self.init_std,
            "seed": self.seed,
        }

    @classmethod
    def for_split(cls, split: Split, **hparams: Any) -> "BPRMF":
        return cls(split.n_users, split.n_items, **hparams)
