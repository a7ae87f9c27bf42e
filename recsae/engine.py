"""Serve-time engine: a verified bundle + ONNX Runtime encoder + the NumPy kernel.

Used by the service and by offline checks that must give exactly the served answer.
Imports no torch.
"""

from __future__ import annotations

import logging
import os
from typing import Mapping

import numpy as np

from recsae import BundleError, ann
from recsae.bundle import Bundle, load_bundle
from recsae.kernel import Codes, SAEKernel, SteerMode, history_windows, recommend

log = logging.getLogger(__name__)


CUDA_PROVIDER = ("CUDAExecutionProvider", {"use_tf32": "0"})
"""TF32 off: with it (ONNX Runtime's default on Ampere and later) an H200's encoder outputs differ
from the CPU's by up to 1.3e-3 and 0.8% of ml-100k top-10 lists change order; without it by
1.4e-6 (benchmarks/gpu_onnx.py), so a GPU replica serves the answer the offline job measured."""


_CUDA_PRELOADED = False


def _preload_cuda(ort) -> None:
    """onnxruntime-gpu installed from pip (the `gpu` extra) finds the pip-installed CUDA/cuDNN
    libraries only after ``preload_dlls()`` (once a process); without a GPU nothing happens."""
    global _CUDA_PRELOADED
    if _CUDA_PRELOADED or "CUDAExecutionProvider" not in ort.get_available_providers():
        return
    _CUDA_PRELOADED = True
    if hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()
        except Exception as e:  # noqa: BLE001 - ONNX Runtime then falls back to the CPU provider
            log.warning("could not preload the CUDA libraries (%s): ONNX Runtime may run on CPU", e)


def make_session(path: str, threads: int = 1):
    """An ONNX Runtime session: CUDA provider first when onnxruntime-gpu sees a GPU."""
    import onnxruntime as ort

    _preload_cuda(ort)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    available = ort.get_available_providers()
    providers = [CUDA_PROVIDER if p == "CUDAExecutionProvider" else p
                 for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    try:
        return ort.InferenceSession(path, sess_options=opts, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types
        raise BundleError(f"cannot load ONNX encoder {path}: {e}; rebuild the bundle") from e


class Engine:
    """Everything a request needs, loaded and checked once."""

    def __init__(self, bundle: Bundle, threads: int | None = None):
        self.bundle = bundle
        model = bundle.model
        self.input_kind: str = model["input_kind"]
        self.max_len: int = int(model.get("max_len") or 0)
        self.n_items: int = int(model["n_items"])
        self.sae = SAEKernel.load(bundle.sae_path)
        threads = threads or int(os.environ.get("RECSAE_ORT_THREADS", "1"))
        self.session = make_session(str(bundle.encoder_path), threads)
        self._check_signature()
        if self.sae.d_in != bundle.item_emb.shape[1]:
            raise BundleError(
                f"SAE input size {self.sae.d_in} != item embedding size {bundle.item_emb.shape[1]}"
            )
        # Row-major. Exact scoring (``recsae.kernel.score_top_k``) multiplies blocks of rows by
        # the batch's X.T: at 1M items a batch of 8 users costs ~2x one user, where ``X @ E.T``
        # from column-major items (the layout before) cost ~3.5x, 32 users ~4x vs ~9x; one user
        # alone is ~10% slower (1M items: 14.6-16.4 vs 12.7-13.2 ms; benchmarks/hot_path.py,
        # part ``floor``). The rows that
        # explanations and the ANN re-scoring gather (``item_emb[ids]``) are contiguous too.
        self.ann = ann.load(bundle.path, bundle.manifest, bundle.item_emb)
        self.item_emb = np.ascontiguousarray(bundle.item_emb, dtype=np.float32)
        bundle.item_emb = self.item_emb  # one copy in memory, not two
        if self.ann is not None:
            self.ann.item_emb = self.item_emb

    @classmethod
    def from_path(cls, path: str, threads: int | None = None) -> "Engine":
        return cls(load_bundle(path), threads)

    def _check_signature(self) -> None:
        inputs = self.session.get_inputs()
        want_rank = 1 if self.input_kind == "user" else 2
        if len(inputs) != 1 or len(inputs[0].shape) != want_rank or "int64" not in inputs[0].type:
            got = [(i.name, i.type, i.shape) for i in inputs]
            raise BundleError(
                f"ONNX encoder in {self.bundle.path} has input signature {got}; a "
                f"{self.input_kind!r} model needs one int64 input of rank {want_rank}: rebuild the bundle"
            )
        self.input_name = inputs[0].name
        x = self.session.run(None, {self.input_name: self._dummy()})[0]
        if x.ndim != 2 or x.shape[1] != self.bundle.item_emb.shape[1]:
            raise BundleError(f"ONNX encoder output shape {x.shape} does not match the item embeddings")

    def _dummy(self) -> np.ndarray:
        if self.input_kind == "user":
            return np.zeros(1, dtype=np.int64)
        return history_windows([np.zeros(1, np.int64)], self.max_len, self.n_items)

    # -- encoding ---------------------------------------------------------------------------
    @property
    def accepts_history(self) -> bool:
        return self.input_kind == "history"

    def encode_users(self, users: np.ndarray) -> np.ndarray:
        users = np.asarray(users, dtype=np.int64)
        if self.input_kind == "user":
            return self.session.run(None, {self.input_name: users})[0]
        return self.encode_histories([self.bundle.users.history(int(u)) for u in users])

    def encode_histories(self, histories: list[np.ndarray]) -> np.ndarray:
        if self.input_kind != "history":
            raise BundleError("this bundle's model encodes user ids, not histories")
        windows = history_windows(histories, self.max_len, self.n_items)
        return self.session.run(None, {self.input_name: windows})[0]

    # -- recommending -----------------------------------------------------------------------
    def recommend(
        self,
        x: np.ndarray,
        k: int,
        exclude: list[np.ndarray] | None = None,
        suppress: Mapping[int, float] | None = None,
        mode: SteerMode = "error",
        baseline: float = 0.0,
    ) -> tuple[np.ndarray, np.ndarray, Codes, np.ndarray]:
        return recommend(self.sae, x, self.item_emb, k, exclude=exclude, suppress=suppress, mode=mode,
                         baseline=baseline)
