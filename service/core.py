"""What a request does, independent of the web framework.

``Core`` holds the verified bundle (through ``recsae.engine.Engine``), the concept store, the
policy store and the drift tracker; ``service.service`` maps HTTP onto it. All numbers come from
the one kernel in ``recsae.kernel`` (encode, steer, top_items, explain), so a served answer is
the offline answer.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

import numpy as np
from pydantic import ValidationError

from recsae import BundleError
from recsae.concepts import Concept
from recsae.engine import Engine
from recsae.kernel import Codes, top_items
from service import metrics as M
from service.concepts import ConceptStore
from service.metrics import DriftTracker
from service.config import Settings
from service.policies import PolicyStore
from service.redis_link import Pending, RedisLink, RedisUnavailable
from service.schemas import (
    BundleInfo,
    ConceptSummary,
    ModelInfo,
    Policy,
    SAEInfo,
    SteerMode,
)

log = logging.getLogger("recsae.service")


DECIMALS = 6
"""Numbers on the wire are rounded to 6 decimals (the kernel computes in float32, ~7 digits):
the JSON stays small and bias + contributions + error still equals the score to < 1e-5."""


def _label(description: str | None) -> str | None:
    """A concept's short name: the stats describer writes 'name — details'; LLM ones are short."""
    return description.split(" — ", 1)[0] if description else description


def _rounded(a: np.ndarray) -> list:
    return np.round(np.asarray(a, dtype=np.float64), DECIMALS).tolist()


class ClientError(Exception):
    """Bad client input found after schema validation (needs the bundle): answered with 422."""

    def __init__(self, loc: tuple[str, ...], message: str, kind: str = "value_error"):
        super().__init__(message)
        self.loc, self.message, self.kind = loc, message, kind

    def detail(self) -> list[dict[str, Any]]:
        return [{"type": self.kind, "loc": list(self.loc), "msg": self.message}]


class NotFound(Exception):
    """An unknown user or latent: answered with 404."""


def _prepare_gpu() -> None:
    """onnxruntime-gpu installed from pip (the `gpu` extra) finds the pip-installed CUDA/cuDNN
    libraries only after ``preload_dlls()``; without a GPU nothing happens (CPU provider)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return
    if "CUDAExecutionProvider" in ort.get_available_providers() and hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()
        except Exception as e:  # noqa: BLE001 - ONNX Runtime then falls back to the CPU provider
            log.warning("could not preload the CUDA libraries (%s): ONNX Runtime may run on CPU", e)


class Core:
    def __init__(self, settings: Settings):
        self.settings = settings
        _prepare_gpu()
        self.engine = Engine.from_path(settings.bundle)
        self.provider = self.engine.session.get_providers()[0]
        bundle = self.engine.bundle
        self.bundle = bundle
        self.sae = self.engine.sae
        try:
            self.concepts = [Concept.model_validate(c) for c in bundle.concepts]
        except ValidationError as e:
            raise BundleError(f"{bundle.path}/concepts.json does not match the concept schema: {e}") from e
        if len(bundle.firing_frequency) != self.sae.n_latents:
            raise BundleError(
                f"{bundle.path}/reference_stats.npz has {len(bundle.firing_frequency)} latents, "
                f"the SAE {self.sae.n_latents}: rebuild the bundle"
            )
        self.link = (
            RedisLink(settings.redis_url, settings.redis_timeout_s, settings.redis_backoff_s, settings.redis_prefix)
            if settings.redis_url
            else None
        )
        self.store = ConceptStore(
            self.concepts, bundle.bundle_hash, self.link, settings.redis_prefix, settings.concept_ttl_s
        )
        self.policies = PolicyStore(
            self.concepts, self.sae.n_latents, self.link, bundle.bundle_hash, settings.redis_prefix,
            settings.state_dir, settings.policy_sync_s,
        )
        self.drift = DriftTracker(bundle.firing_frequency, self.sae.k, settings.drift_window, settings.drift_top,
                                  reference_mean_activation=bundle.mean_activation)
        self.titles = bundle.catalog.titles
        self.item_ids = bundle.catalog.item_ids
        self.recent = RecentLog(self.link, settings.redis_prefix)
        self.ready = False
        self._warming = False

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        t0 = time.perf_counter()
        self.policies.start()
        filled = self.store.prefill()
        if self.settings.warmup:
            self.warm()
        # Everything loaded so far (BentoML, FastAPI, the bundle) lives for the whole process:
        # move it out of the collector's generations so full collections stay short (p99).
        gc.collect()
        gc.freeze()
        self.ready = True
        log.info(
            "serving bundle %s (%s, %d latents) from %s on %s; redis=%s, %d concepts pre-filled; ready in %.2f s",
            self.bundle.version, self.engine.input_kind, self.sae.n_latents, self.bundle.path, self.provider,
            "on" if self.link else "off", filled, time.perf_counter() - t0,
        )

    def warm(self) -> None:
        """Run the full request path a few times (ONNX Runtime allocations, caches, NumPy)."""
        self._warming = True
        try:
            if len(self.bundle.users.user_ids):
                uid = str(self.bundle.users.user_ids[0])
                for explain in (False, True):
                    self.recommend_user(uid, k=10, explain=explain, suppress={}, policy=None,
                                        exclude_seen=True, mode=None)
            if self.engine.accepts_history and self.item_ids:
                self.recommend_history(self.item_ids[:3], k=10, explain=True, suppress={}, policy=None,
                                       exclude_seen=True, mode=None)
        finally:
            self._warming = False

    def close(self) -> None:
        self.recent.close()
        self.policies.close()
        if self.link is not None:
            self.link.close()

    # -- recommendations --------------------------------------------------------------------------
    def recommend_user(self, user_id: str, **opts: Any) -> dict[str, Any]:
        u = self.bundle.users.index_of(user_id)
        if u is None:
            raise NotFound(
                f"unknown user_id {user_id!r}: this bundle knows {len(self.bundle.users.user_ids)} users "
                "of its training data; for a new user POST /recommend with a history"
            )
        x = self.engine.encode_users(np.array([u]))
        seen = self.bundle.users.history(u)
        return self._recommend(x, seen, "query", user_id=user_id, source="user", **opts)

    def recommend_history(self, history: list[str], **opts: Any) -> dict[str, Any]:
        if not self.engine.accepts_history:
            raise ClientError(
                ("body", "history"),
                f"this bundle's model ({self.engine.bundle.model['name']}) encodes user ids, not "
                "histories: POST /recommend needs a sequential bundle; use GET /recommend?user_id=",
            )
        idx, unknown = [], []
        for raw in history:
            i = self.bundle.catalog.index_of(raw)
            (unknown if i is None else idx).append(raw if i is None else i)
        if unknown:
            raise ClientError(
                ("body", "history"),
                f"{len(unknown)} item id(s) not in the catalog: {unknown[:10]}",
            )
        seen = np.asarray(idx, dtype=np.int64)
        x = self.engine.encode_histories([seen])
        return self._recommend(x, seen, "body", user_id=None, source="history", **opts)

    def _recommend(
        self,
        x: np.ndarray,
        seen: np.ndarray,
        where: str,
        *,
        user_id: str | None,
        source: str,
        k: int,
        explain: bool,
        suppress: Mapping[int, float],
        policy: str | None,
        exclude_seen: bool,
        mode: SteerMode | None,
        suppress_baseline: float = 0.0,
    ) -> dict[str, Any]:
        """The response body (schema: ``service.schemas.RecommendResponse``). ``suppress``: latent ->
        strength of this request's suppression."""
        sae = self.sae
        bad = [j for j in suppress if not 0 <= j < sae.n_latents]
        if bad:
            raise ClientError(
                (where, "suppress"),
                f"unknown latent ids {bad[:10]}: this bundle has latents 0..{sae.n_latents - 1}",
            )
        codes = sae.encode(x)
        firing = codes.acts[0] > 0
        active = [int(j) for j in codes.idx[0][firing]]
        # the Redis round trip (policy and/or concepts) is sent now and read when first needed:
        # for concepts that is after scoring, so the round trip overlaps the computation
        lookup = _Lookup(self, policy, active if explain else None)
        try:
            return self._score(x, seen, where, codes, active, lookup, user_id=user_id, source=source, k=k,
                               explain=explain, suppress=suppress, exclude_seen=exclude_seen, mode=mode,
                               suppress_baseline=suppress_baseline)
        finally:
            lookup.close()

    def _score(
        self, x: np.ndarray, seen: np.ndarray, where: str, codes: Codes, active: list[int], lookup: "_Lookup",
        *, user_id: str | None, source: str, k: int, explain: bool, suppress: Mapping[int, float],
        exclude_seen: bool, mode: SteerMode | None, suppress_baseline: float,
    ) -> dict[str, Any]:
        sae = self.sae
        policy = lookup.policy_name
        pol = lookup.policy()
        if policy is not None and pol is None:
            raise ClientError((where, "policy"), f"unknown policy {policy!r}; see GET /admin/policies")

        strengths: dict[int, float] = {}
        sources: dict[int, str] = {}
        if pol is not None:
            for j, s in self.policies.effective_latents(pol).items():
                strengths[j], sources[j] = s, f"policy:{pol.name}"
        for j, s in suppress.items():  # like the baseline: the stronger of the policy's and the request's
            if s >= strengths.get(j, 0.0):
                strengths[j], sources[j] = float(s), "request"
        # the baseline (b_dec): the stronger of the policy's and the request's, like latents
        baseline, baseline_source = 0.0, None
        if pol is not None and pol.baseline > 0:
            baseline, baseline_source = float(pol.baseline), f"policy:{pol.name}"
        if suppress_baseline > 0 and suppress_baseline >= baseline:
            baseline, baseline_source = float(suppress_baseline), "request"
        use_mode: SteerMode = mode or (pol.mode if pol is not None else "error")

        xs = sae.steer(x, codes, strengths, use_mode, baseline)
        scores = xs @ self.engine.item_emb.T
        ids, sc = top_items(scores, k, [seen] if exclude_seen else None)
        ids, sc = ids[0], sc[0]
        keep = np.isfinite(sc)  # everything excluded in a tiny catalogue: never -inf in JSON
        ids, sc = ids[keep], sc[keep]

        # The hot path builds the wire body as plain dicts (field for field the schema's
        # RecommendResponse; tests check served bodies round-trip through it unchanged):
        # constructing ~100 Pydantic objects per explained response cost more than the kernel.
        items = [
            {"rank": r + 1, "item_id": self.item_ids[i], "title": self.titles[i], "score": s, "explanation": None}
            for r, (i, s) in enumerate(zip(ids.tolist(), np.round(sc.astype(np.float64), DECIMALS).tolist()))
        ]
        active_out: list[dict] = []
        if explain:
            active_out = self._explain(xs, codes, strengths, ids, items, baseline)

        if not self._warming:
            self.drift.record(np.asarray(active, dtype=np.int64), codes.acts[0][: len(active)])
            M.RECOMMENDATIONS.labels(source).inc()
            label = M.policy_label(pol.name if pol is not None else None) if strengths or baseline else None
            if label is not None:
                M.SUPPRESSION.labels(label).inc()
            if baseline:
                M.BASELINE_SUPPRESSION.labels(label).inc()
            self.recent.maybe_record(user_id, items, active, strengths, pol.name if pol is not None else None,
                                     baseline)
        active_set = set(active)
        body = {
            "user_id": user_id,
            "bundle_version": self.bundle.version,
            "bundle_hash": self.bundle.bundle_hash,
            "k": k,
            "mode": use_mode,
            "policy": pol.name if pol is not None else None,
            "suppressed": [
                {"latent": j, "strength": float(s), "source": sources[j], "active": j in active_set}
                for j, s in sorted(strengths.items())
            ],
            "baseline": {"strength": baseline, "source": baseline_source} if baseline else None,
            "items": items,
            "active_latents": active_out,
        }
        if explain:
            # the concepts' Redis reply is read only now, when everything else is built: the
            # round trip sent after encoding overlaps all of the request's own work
            self._describe(items, active_out, lookup.concepts() or {})
        return body

    @staticmethod
    def _describe(items: list[dict], active_out: list[dict], concepts: dict[int, ConceptSummary]) -> None:
        """Fill the concept fields that need the lookup: labels per contribution, descriptions."""
        labels: dict[int, str | None] = {}
        for a in active_out:
            cs = concepts.get(a["latent"])
            if cs is not None:
                a["description"], a["confidence"], a["status"] = cs.description, cs.confidence, cs.status
                labels[a["latent"]] = _label(cs.description)
        if labels:
            for item in items:
                for c in item["explanation"]["contributions"]:
                    c["label"] = labels.get(c["latent"])

    def _explain(
        self,
        xs: np.ndarray,
        codes: Codes,
        strengths: dict[int, float],
        ids: np.ndarray,
        items: list[dict],
        baseline: float = 0.0,
    ) -> list[dict]:
        """Per-item bias + contributions + error (= the steered score), and the active concepts
        (their descriptions and labels are filled in by ``_describe`` once the lookup answers).

        Uses ``SAEKernel.explain`` on the steered representation, the steered codes (z_j scaled
        by 1 - strength_j) and the steered bias ((1 - baseline) b_dec), so bias +
        sum(contributions) + error == steered score.
        """
        sae = self.sae
        w = sae.suppression_weights(codes, strengths)
        steered = Codes(codes.acts * (1.0 - w), codes.idx)
        ex = sae.explain(xs, steered, self.engine.item_emb[ids][None], baseline)
        firing = np.flatnonzero(codes.acts[0] > 0)
        lat = codes.idx[0][firing].tolist()
        sup = (w[0][firing] > 0).tolist()
        contrib = ex.contributions[0][firing]  # (n_active, n_items)
        order = np.argsort(-contrib, axis=0, kind="stable").T.tolist()  # per item, largest first
        contrib_t = _rounded(contrib.T)
        bias, error = _rounded(ex.bias[0]), _rounded(ex.error[0])
        acts, strength = _rounded(codes.acts[0][firing]), w[0][firing].tolist()
        for n, item in enumerate(items):
            c = contrib_t[n]
            item["explanation"] = {
                "bias": bias[n],
                "error": error[n],
                "contributions": [
                    {"latent": lat[a], "contribution": c[a], "label": None, "suppressed": sup[a]}
                    for a in order[n]
                ],
            }
        return [
            {"latent": j, "activation": acts[a], "description": None, "confidence": None, "status": None,
             "suppressed": sup[a], "strength": strength[a]}
            for a, j in enumerate(lat)
        ]

    # -- concepts and bundle ----------------------------------------------------------------------
    def concept(self, latent: int) -> Concept:
        c = self.store.concepts.get(latent)
        if c is None:
            raise NotFound(f"unknown latent {latent}: this bundle has latents 0..{self.sae.n_latents - 1}")
        return c

    def bundle_info(self) -> BundleInfo:
        m = self.bundle.manifest
        model = m["model"]
        metrics = m.get("metrics", {})
        headline: dict[str, Any] = {}
        rec_test = metrics.get("recommender", {}).get("test", {})
        if "NDCG@10" in rec_test:
            headline["recommender_test_ndcg10"] = rec_test["NDCG@10"]
        heldout = metrics.get("sae", {}).get("heldout", {})
        for key in ("fvu", "dead_ratio"):
            if key in heldout:
                headline[f"sae_heldout_{key}"] = heldout[key]
        # how much of the model the concepts capture: NDCG@10 with the SAE's reconstruction in
        # place of the activation / the original's (all held-out rows; the test users alone)
        fid = metrics.get("fidelity", {})
        for key, name in (("heldout_ndcg10_ratio_reconstruction", "sae_heldout_ndcg10_ratio"),
                          ("ndcg10_ratio_reconstruction", "sae_test_ndcg10_ratio"),
                          ("ndcg10_ratio_reconstruction_sampled99", "sae_sampled99_ndcg10_ratio"),
                          ("overlap10_reconstruction", "sae_top10_overlap")):
            if isinstance(fid.get(key), (int, float)):
                headline[name] = round(float(fid[key]), 4)
        worst = (metrics.get("quality") or {}).get("worst")
        if isinstance(worst, dict) and isinstance(worst.get("value"), (int, float)):
            # the fidelity measure the gate reads: the lowest of the four above
            headline["sae_fidelity_worst"] = {"name": str(worst.get("name")), "value": round(float(worst["value"]), 4)}
        if "onnx_max_abs_diff" in metrics:
            headline["onnx_max_abs_diff"] = metrics["onnx_max_abs_diff"]
        describer = m.get("settings", {}).get("describer") or "unknown"
        return BundleInfo(
            version=m["version"],
            bundle_hash=m["bundle_hash"],
            created=m.get("created", ""),
            recsae_version=m.get("recsae_version", ""),
            dataset=m.get("dataset", {}).get("dataset"),
            model=ModelInfo(
                name=model["name"], kind=model.get("kind", ""), input_kind=model["input_kind"],
                d=int(model.get("d", self.sae.d_in)), n_items=int(model["n_items"]),
                n_users=int(model.get("n_users", len(self.bundle.users.user_ids))),
                max_len=model.get("max_len"),
            ),
            sae=SAEInfo(k=self.sae.k, n_latents=self.sae.n_latents, expansion=m.get("sae", {}).get("expansion"),
                        encoder=self.sae.encoder),
            describer=describer,
            accepts_history=self.engine.accepts_history,
            execution_provider=self.provider,
            metrics=headline,
            quality_warnings=[str(w) for w in (metrics.get("quality") or {}).get("warnings", [])],
        )


class RecentLog:
    """A bounded sample of served recommendations for the audit page (``GET /audit/recent``).

    A share ``RECSAE_AUDIT_SAMPLE`` (default 0.1) of served answers is kept: in a Redis stream
    ``{prefix}:recent`` capped with ``XADD MAXLEN ~ 500`` (shared by the replicas), written by a
    background thread so the request never waits for Redis; always also in an in-process deque
    of 500 (the answer without Redis or while it is down). Entries: time, user (or history),
    top items, firing latents, suppression.
    """

    MAXLEN = 500

    def __init__(self, link: RedisLink | None, prefix: str):
        self.link, self.key = link, f"{prefix}:recent"
        try:
            self.rate = min(1.0, max(0.0, float(os.environ.get("RECSAE_AUDIT_SAMPLE", "0.1"))))
        except ValueError:
            self.rate = 0.1
        self.local: deque[dict] = deque(maxlen=self.MAXLEN)
        self._seq = 0
        self._q: queue.Queue[dict | None] = queue.Queue(maxsize=1000)
        self._thread: threading.Thread | None = None
        if link is not None:
            self._thread = threading.Thread(target=self._drain, name="recsae-recent", daemon=True)
            self._thread.start()

    def maybe_record(self, user_id: str | None, items: list[dict], active: list[int],
                     strengths: dict[int, float], policy: str | None, baseline: float = 0.0) -> None:
        if self.rate <= 0 or (self.rate < 1 and random.random() >= self.rate):
            return
        self._seq += 1
        entry = {
            "id": f"local-{self._seq}", "ts": round(time.time(), 3), "user_id": user_id, "policy": policy,
            "suppressed": sorted(strengths), "baseline": baseline, "active": active,
            "items": [{"item_id": it["item_id"], "title": it["title"]} for it in items[:10]],
        }
        self.local.append(entry)
        if self._thread is not None:
            try:
                self._q.put_nowait(entry)
            except queue.Full:  # Redis slower than traffic: drop the sample, never the request
                pass

    def _drain(self) -> None:
        while True:
            entry = self._q.get()
            if entry is None:
                return
            data = json.dumps({k: v for k, v in entry.items() if k != "id"})
            try:
                self.link.run("recent", lambda r: r.xadd(self.key, {"e": data}, maxlen=self.MAXLEN, approximate=True))
            except RedisUnavailable:
                pass
            except Exception:  # noqa: BLE001 - a sample must never take the writer thread down
                log.exception("could not record a recent-traffic sample")

    def recent(self, limit: int) -> list[dict]:
        """Newest first: from the Redis stream (all replicas), else this worker's deque."""
        if self.link is not None:
            try:
                rows = self.link.run("recent", lambda r: r.xrevrange(self.key, "+", "-", count=limit))
                out = []
                for sid, fields in rows:
                    try:
                        e = json.loads(fields[b"e"])
                    except (KeyError, ValueError):
                        continue
                    if isinstance(e, dict):
                        out.append({**e, "id": sid.decode()})
                return out
            except RedisUnavailable:
                pass
        return list(reversed(self.local))[:limit]

    def close(self) -> None:
        if self._thread is not None:
            try:
                self._q.put_nowait(None)
            except queue.Full:
                pass


class _Lookup:
    """The named policy and the active concepts of one request: ONE Redis round trip on the hit
    path (HGET and/or MGET, pipelined), sent at construction and read when first needed."""

    def __init__(self, core: Core, policy: str | None, latents: list[int] | None):
        self.core, self.policy_name, self.latents = core, policy, latents
        self._pending: Pending | None = None
        self._replies: list | None = None
        self._failed = False
        link = core.link
        if link is None:
            return
        cmds: list[tuple] = []
        if policy is not None:
            cmds.append(("HGET", core.policies.hash_key, policy))
        if latents:
            cmds.append(("MGET", *[core.store.key(j) for j in latents]))
        if cmds:
            try:
                self._pending = link.begin("request", cmds)
            except RedisUnavailable:
                self._failed = True

    def _wait(self) -> None:
        if self._pending is not None:
            try:
                self._replies = self._pending.result()
            except RedisUnavailable:
                self._failed = True
            self._pending = None

    def policy(self) -> Policy | None:
        name, core = self.policy_name, self.core
        if name is None:
            return None
        if core.link is None:
            return core.policies.get(name)
        self._wait()
        if self._failed:
            return core.policies.fallback(name)
        return core.policies.resolve(name, self._replies[0])  # type: ignore[index]

    def concepts(self) -> dict[int, ConceptSummary] | None:
        latents, core = self.latents, self.core
        if latents is None:
            return None
        if core.link is None:
            return core.store.fetch(latents)
        if not latents:
            return {}
        self._wait()
        if self._failed:
            return core.store.fallback(latents)
        return core.store.resolve(latents, self._replies[-1])  # type: ignore[index]

    def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
