"""The recommender interface the SAE pipeline relies on, and ONNX export of its encoder.

Every model factors its score as ``represent(x) @ item_embeddings().T``. ``represent`` is the
activation the sparse autoencoder probes (the user / sequence vector right before the prediction
layer), so an SAE reconstruction can be scored by the very same dot product. The part of the model
that produces it (:meth:`Recommender.encoder_module`) is exported to ONNX for the NumPy + ONNX
Runtime service; the item embeddings are shipped as a plain matrix.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Iterator, NamedTuple

import numpy as np
import torch
from torch import nn

from recsae import ConfigError
from recsae.data.core import Split

STAGES = ("dev", "test", "serve")


class Recommender(nn.Module, ABC):
    """Base class: a user/sequence encoder plus an item embedding table scored by dot product.

    Subclasses set ``name`` (registry key), ``kind`` ("general" | "graph" | "sequential") and
    ``input_kind`` ("user": int64 user indices ``(B,)``; "history": left-padded int64 item windows
    ``(B, T)`` with pad ``n_items`` and the most recent item last).
    """

    name: ClassVar[str]
    kind: ClassVar[str]
    input_kind: ClassVar[str]

    n_users: int
    n_items: int
    dim: int

    # --- the probed representation --------------------------------------------------------------
    @abstractmethod
    def represent(self, inputs: torch.Tensor) -> torch.Tensor:
        """``(B, d)`` representation right before the prediction layer."""

    @abstractmethod
    def item_embeddings(self) -> torch.Tensor:
        """``(n_items, d)`` item vectors of the prediction layer (no padding row)."""

    def scores(self, inputs: torch.Tensor) -> torch.Tensor:
        """``(B, n_items)`` scores = ``represent(inputs) @ item_embeddings().T``."""
        return self.represent(inputs) @ self.item_embeddings().T

    # --- inputs ---------------------------------------------------------------------------------
    def encoder_inputs(
        self, split: Split, users: np.ndarray | list[int], stage: str
    ) -> torch.Tensor:
        """Encoder input for ``users`` with the history visible at ``stage``.

        ``stage`` is "dev" (train history), "test" (train + dev) or "serve" (everything, incl.
        test). User-based models ignore the stage: their user vector is fixed after training.
        """
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, not {stage!r}")
        users = np.asarray(users, dtype=np.int64)
        if users.size and (users.min() < 0 or users.max() >= self.n_users):
            raise ValueError(f"user indices must be in [0, {self.n_users})")
        if self.input_kind == "user":
            return torch.from_numpy(users.copy())
        hists = [
            split.full_history(int(u)) if stage == "serve" else split.history(int(u), stage)
            for u in users
        ]
        return pad_histories(hists, self.max_len, self.n_items)

    def example_inputs(
        self, batch: int = 2, seq_len: int | None = None, seed: int = 0
    ) -> torch.Tensor:
        """Random valid encoder inputs (used for export tracing and ONNX checks)."""
        g = torch.Generator().manual_seed(seed)
        if self.input_kind == "user":
            return torch.randint(0, self.n_users, (batch,), generator=g)
        t = seq_len or self.max_len
        x = torch.randint(0, self.n_items, (batch, t), generator=g)
        n_pad = torch.randint(0, t + 1, (batch,), generator=g)  # 0..t pads, incl. empty histories
        pad = torch.arange(t)[None, :] < n_pad[:, None]
        return x.masked_fill(pad, self.n_items)

    @property
    def max_len(self) -> int:
        raise AttributeError(f"{type(self).__name__} does not take histories")

    # --- export ---------------------------------------------------------------------------------
    @abstractmethod
    def encoder_module(self) -> nn.Module:
        """A standalone eval-mode module mapping :meth:`encoder_inputs` to :meth:`represent`."""

    # --- training hooks (used by models.training.fit) --------------------------------------------
    @abstractmethod
    def batches(self, split: Split, batch_size: int, rng: np.random.Generator) -> Iterator[Any]:
        """One epoch of training batches drawn from ``split.train``."""

    @abstractmethod
    def loss(self, batch: Any) -> torch.Tensor:
        """Scalar training loss for one batch."""

    # --- persistence ----------------------------------------------------------------------------
    @abstractmethod
    def config(self) -> dict:
        """JSON-able constructor arguments plus ``"name"``; ``from_config`` rebuilds the shapes."""

    @classmethod
    def from_config(cls, cfg: dict) -> "Recommender":
        """An untrained model with the same shapes; fill it with ``load_state_dict``."""
        cfg = dict(cfg)
        name = cfg.pop("name", cls.name)
        if name != cls.name:
            raise ConfigError(f"config is for model {name!r}, not {cls.name!r}")
        return cls(**cfg)

    @classmethod
    @abstractmethod
    def for_split(cls, split: Split, **hparams: Any) -> "Recommender":
        """A fresh model sized for ``split`` (LightGCN also reads its training graph)."""


def pad_histories(hists: list[np.ndarray], max_len: int, pad: int) -> torch.Tensor:
    """Left-pad (or keep the last ``max_len`` of) each history into an int64 ``(B, max_len)``."""
    out = np.full((len(hists), max_len), pad, dtype=np.int64)
    for i, h in enumerate(hists):
        h = h[-max_len:]
        if len(h):
            out[i, max_len - len(h) :] = h
    return torch.from_numpy(out)


def init_seeded(module: nn.Module, seed: int, init: Any) -> None:
    """Run ``init(module)`` under a private RNG so a model is reproducible from its config alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        init(module)


# --- ONNX -----------------------------------------------------------------------------------------
def export_onnx(model: Recommender, path: str | Path, opset: int | None = None) -> Path:
    """Export ``model.encoder_module()`` to a single self-contained ONNX file.

    Input ``"users"`` (int64 ``(batch,)``) or ``"history"`` (int64 ``(batch, seq)``, seq <=
    ``max_len``), output ``"representation"`` (float32 ``(batch, d)``). Batch (and sequence) axes
    are dynamic.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    enc = model.encoder_module().eval()
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    if model.input_kind == "user":
        names, example = ["users"], model.example_inputs(batch=3)
        dyn: dict = {"users": {0: batch}}
    else:
        names, example = ["history"], model.example_inputs(batch=3)
        seq = torch.export.Dim("seq", min=1, max=model.max_len)
        dyn = {"history": {0: batch, 1: seq}}
    kwargs: dict[str, Any] = {}
    if opset is not None:
        kwargs["opset_version"] = opset
    with torch.no_grad(), _quiet_exporter():
        prog = torch.onnx.export(
            enc,
            (example,),
            input_names=names,
            output_names=["representation"],
            dynamic_shapes=dyn,
            dynamo=True,
            external_data=False,
            verbose=False,
            **kwargs,
        )
    if prog is None:  # pragma: no cover - dynamo export always returns the program
        raise RuntimeError("torch.onnx.export returned no program")
    prog.save(str(path), external_data=False)
    return path


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's irrelevant chatter (missing torchvision ops, pytree deprecations)."""
    reg = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = reg.level
    reg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        reg.setLevel(level)


def check_onnx(
    model: Recommender,
    path: str | Path,
    batch_sizes: tuple[int, ...] = (1, 4, 33),
    seq_lens: tuple[int, ...] | None = None,
    seed: int = 0,
) -> float:
    """Max abs difference between ONNX Runtime and PyTorch representations on random inputs.

    Varies the batch size (and, for histories, the sequence length, default ``1, 7, max_len``) so
    a wrongly fixed dynamic axis fails loudly instead of silently.
    """
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    in_name = sess.get_inputs()[0].name
    enc = model.encoder_module().eval()
    if model.input_kind == "history":
        seq_lens = seq_lens or tuple(sorted({1, min(7, model.max_len), model.max_len}))
    else:
        seq_lens = (None,)  # type: ignore[assignment]
    worst = 0.0
    for i, b in enumerate(batch_sizes):
        for j, t in enumerate(seq_lens):  # type: ignore[arg-type]
            x = model.example_inputs(batch=b, seq_len=t, seed=seed + 100 * i + j)
            with torch.no_grad():
                ref = enc(x).numpy()
            got = sess.run(None, {in_name: x.numpy()})[0]
            if got.shape != ref.shape:
                raise AssertionError(f"ONNX output shape {got.shape} != PyTorch {ref.shape}")
            diff = float(np.abs(got - ref).max()) if ref.size else 0.0
            if not math.isfinite(diff):
                raise AssertionError("non-finite ONNX or PyTorch output")
            worst = max(worst, diff)
    return worst


# --- shared by the user-based models (BPR-MF, LightGCN) -----------------------------------------
class GatherEncoder(nn.Module):
    """Export form of a user-based model: final user vectors frozen into a buffer, looked up by id.

    The ONNX graph is a single Gather, so serving cost does not depend on how the vectors were
    computed (e.g. LightGCN's graph propagation happens once, at export).
    """

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", table.detach().clone().float().contiguous())

    def forward(self, users: torch.Tensor) -> torch.Tensor:
        return self.table[users]


class UserItemRecommender(Recommender):
    """User-based model trained on the (user, item) pairs of ``split.train``.

    Objectives (``loss``):

    * ``"softmax"`` with ``n_negatives=0`` (default): cross-entropy of every training item against
      *all* items. Batches are groups of users: one ``(users, n_items)`` logit matrix serves all
      of those users' training items, so an epoch costs ``n_users`` score rows instead of one per
      interaction (100x cheaper on ml-100k) and the gradient is the same sum over pairs. With
      ~1.7k items it converges in a few seconds and beats BPR clearly (measured in
      ``benchmarks/recommenders.py``): every step pushes down every item, not one sample.
    * ``"softmax"`` with ``n_negatives=k``: sampled softmax against ``k`` uniform negatives per
      pair (for catalogues too big for the full softmax).
    * ``"bpr"``: BPR with ``n_negatives`` uniform negatives per positive (averaged), plus ``l2``
      on the batch's ego embeddings (the classic BPR-MF / LightGCN recipe).

    ``batch_size`` counts users for the full softmax and (user, item) pairs otherwise.
    """

    input_kind: ClassVar[str] = "user"

    def __init__(self, loss: str, n_negatives: int, l2: float) -> None:
        super().__init__()
        if loss not in ("softmax", "bpr"):
            raise ConfigError(f"loss must be 'softmax' or 'bpr', not {loss!r}")
        if n_negatives < 0 or (loss == "bpr" and n_negatives < 1):
            raise ConfigError("n_negatives must be >= 1 for bpr (>= 0 for softmax; 0 = all items)")
        if l2 < 0:
            raise ConfigError("l2 must be >= 0")
        self.loss_type = loss
        self.n_negatives = n_negatives
        self.l2 = l2

    @abstractmethod
    def user_item_vectors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Final ``(n_users, d)`` and ``(n_items, d)`` vectors (with grad while training)."""

    @abstractmethod
    def ego_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The raw trainable tables (what ``l2`` regularizes)."""

    def represent(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.user_item_vectors()[0][inputs]

    def item_embeddings(self) -> torch.Tensor:
        return self.user_item_vectors()[1]

    def encoder_module(self) -> nn.Module:
        with torch.no_grad():
            return GatherEncoder(self.user_item_vectors()[0]).eval()

    def batches(
        self, split: Split, batch_size: int, rng: np.random.Generator
    ) -> Iterator[PairBatch]:
        users, items = train_pairs(split)
        if self.loss_type == "softmax" and self.n_negatives == 0:
            lens = np.fromiter((len(t) for t in split.train), dtype=np.int64, count=split.n_users)
            starts = np.concatenate([[0], np.cumsum(lens)])
            order = rng.permutation(np.flatnonzero(lens))
            for s in range(0, len(order), batch_size):
                us = order[s : s + batch_size]
                rows = np.repeat(np.arange(len(us)), lens[us])
                cols = np.concatenate([items[starts[u] : starts[u + 1]] for u in us])
                yield PairBatch(
                    torch.from_numpy(us), torch.from_numpy(rows), torch.from_numpy(cols), None
                )
            return
        keys = np.unique(users * self.n_items + items)
        order = rng.permutation(len(users))
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            u, i = users[idx], items[idx]
            neg = torch.from_numpy(sample_unseen(rng, u, self.n_negatives, self.n_items, keys))
            yield PairBatch(torch.from_numpy(u), torch.arange(len(u)), torch.from_numpy(i), neg)

    def loss(self, batch: PairBatch) -> torch.Tensor:
        uv, iv = self.user_item_vectors()
        u = uv[batch.users]
        pos = batch.items
        if self.loss_type == "softmax":
            if batch.negatives is None:  # full softmax, one logit row per user
                logp = (u @ iv.T).log_softmax(dim=-1)
                loss = -logp[batch.rows, pos].mean()
            else:
                cand = torch.cat([pos[:, None], batch.negatives], dim=1)
                logits = (u[:, None, :] * iv[cand]).sum(-1)
                loss = nn.functional.cross_entropy(logits, torch.zeros_like(pos))
            reg_neg = None
        else:
            assert batch.negatives is not None
            s_pos = (u * iv[pos]).sum(-1, keepdim=True)
            s_neg = (u[:, None, :] * iv[batch.negatives]).sum(-1)
            loss = -nn.functional.logsigmoid(s_pos - s_neg).mean()
            reg_neg = batch.negatives
        if self.l2:
            eu, ei = self.ego_embeddings()
            reg = eu[batch.users].pow(2).sum() + ei[pos].pow(2).sum()
            if reg_neg is not None:
                reg = reg + ei[reg_neg].pow(2).sum() / reg_neg.shape[1]
            loss = loss + self.l2 * reg / (2 * len(pos))
        return loss


class PairBatch(NamedTuple):
    """``items[j]`` is a positive of user ``users[rows[j]]``; ``negatives`` is ``(len(items), k)``
    or ``None`` for the full softmax."""

    users: torch.Tensor
    rows: torch.Tensor
    items: torch.Tensor
    negatives: torch.Tensor | None


def train_pairs(split: Split) -> tuple[np.ndarray, np.ndarray]:
    """All (user, item) training interactions as two aligned int arrays."""
    lens = np.fromiter((len(t) for t in split.train), dtype=np.int64, count=split.n_users)
    users = np.repeat(np.arange(split.n_users, dtype=np.int64), lens)
    items = np.concatenate(split.train).astype(np.int64) if lens.sum() else np.zeros(0, np.int64)
    return users, items


def sample_unseen(
    rng: np.random.Generator, users: np.ndarray, n: int, n_items: int, seen_keys: np.ndarray
) -> np.ndarray:
    """``(len(users), n)`` uniform items, resampled (a few rounds) where the user has them.

    ``seen_keys`` is the sorted array of ``user * n_items + item`` for the training pairs. A small
    residue of collisions after 5 rounds is accepted: it is harmless noise for the loss.
    """
    users = users.astype(np.int64)[:, None]
    neg = rng.integers(0, n_items, size=(len(users), n))
    for _ in range(5):
        k = users * n_items + neg
        pos = np.searchsorted(seen_keys, k).clip(max=len(seen_keys) - 1)
        hit = seen_keys[pos] == k if len(seen_keys) else np.zeros_like(k, dtype=bool)
        if not hit.any():
            break
        neg[hit] = rng.integers(0, n_items, size=int(hit.sum()))
    return neg
