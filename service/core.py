"""What a request does, independent of the web framework.

``Core`` holds the verified bundle (through ``recsae.engine.Engine``), the concept store, the
policy store and the drift tracker; the routes (``service.routes``) map HTTP onto it. All
numbers come from the one kernel in ``recsae.kernel`` (encode, steer, score_top_k, explain), so a
served answer is the offline answer. A request's options arrive parsed (``RecommendOptions``).
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Any, NamedTuple

import numpy as np
import orjson
from pydantic import ValidationError

from recsae import BundleError
from recsae.concepts import Concept
from recsae.engine import Engine
from recsae.kernel import Codes, score_top_k
from recsae.policy import steering
from service import metrics as M
from service.concepts import ConceptStore, label_of
from service.batching import Batcher
from service.metrics import DriftTracker
from service.config import Settings
from service.options import RecommendOptions
from service.policies import PolicyStore
from service.recent import RecentLog
from service.hotpath import compiled_explain, compiled_items, declined
from service.redis_link import RedisLink, Tracker
from service.bundle_info import bundle_info
from service.schemas import BundleInfo, Policy, SteerMode

log = logging.getLogger("recsae.service")


DECIMALS = 6
"""Numbers on the wire are rounded to 6 decimals (the kernel computes in float32, ~7 digits):
the JSON stays small and bias + contributions + error still equals the score to < 1e-5."""


def _round(a: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(a, dtype=np.float64), DECIMALS)


class ClientError(Exception):
    """Bad client input found after schema validation (needs the bundle): answered with 422."""

    def __init__(self, loc: tuple[str, ...], message: str, kind: str = "value_error"):
        super().__init__(message)
        self.loc, self.message, self.kind = loc, message, kind

    def detail(self) -> list[dict[str, Any]]:
        return [{"type": self.kind, "loc": list(self.loc), "msg": self.message}]


class NotFound(Exception):
    """An unknown user or latent: answered with 404."""


class Core:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.engine = Engine.from_path(settings.bundle, threads=settings.ort_threads)
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
        self.recent = RecentLog(self.link, settings.redis_prefix, settings.audit_sample)
        # concepts and policies are read from process memory; Redis reports every change to
        # their keys to this tracker, which re-reads them (see ``service.redis_link.Tracker``)
        self.tracker = (
            Tracker(self.link, [self.store.key_prefix, self.policies.hash_key],
                    self._invalidated, self._resync, retry_s=min(0.25, settings.redis_backoff_s))
            if self.link is not None
            else None
        )
        if self.tracker is not None:
            self.store.tracked = self.tracker.tracking.is_set
        # plain: serve the recommender alone (no SAE encode, no steering, no explanation) — the
        # baseline of benchmarks/hot_path.py's "price of explanation"
        self.plain = settings.plain_scores
        self.batcher = Batcher(self.run_batch, settings.max_batch, M.BATCH_SIZE.observe)
        # the compiled hot path (service.hotpath) where built and not switched off
        self._c_explain, self._c_items = (compiled_explain, compiled_items) if settings.compiled_hotpath else (None, None)
        self.hot_path = "compiled" if self._c_items is not None else "python"
        self._served = {src: M.RECOMMENDATIONS.labels(src) for src in ("user", "history")}
        self.ready = False
        self._warming = False

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        t0 = time.perf_counter()
        self.policies.start()
        filled = self.store.prefill()
        if self.tracker is not None and not self.tracker.start(wait_s=1.0):
            log.warning("Redis invalidation tracking is not connected yet: serving the bundle's concepts and "
                        "the local policy copy until it is")
        if self.settings.warmup:
            self.warm()
        # Everything loaded so far (BentoML, FastAPI, the bundle) lives for the whole process:
        # move it out of the collector's generations so full collections stay short (p99).
        # Unfreeze first: objects frozen by an earlier start (a reloaded-away Core) are never
        # collected otherwise, ~28 MB leaked per POST /admin/reload.
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        self.ready = True
        log.info(
            "serving bundle %s (%s, %d latents) from %s on %s; redis=%s, %d concepts pre-filled; hot path %s; "
            "ready in %.2f s",
            self.bundle.version, self.engine.input_kind, self.sae.n_latents, self.bundle.path, self.provider,
            "on" if self.link else "off", filled, self.hot_path, time.perf_counter() - t0,
        )

    def warm(self) -> None:
        """Run the full request path a few times (ONNX Runtime allocations, caches, NumPy)."""
        self._warming = True
        try:
            if len(self.bundle.users.user_ids):
                uid = str(self.bundle.users.user_ids[0])
                for explain in (False, True):
                    self.recommend_user(uid, RecommendOptions(k=10, explain=explain))
            if self.engine.accepts_history and self.item_ids:
                self.recommend_history(self.item_ids[:3], RecommendOptions(k=10, explain=True, where="body"))
        finally:
            self._warming = False

    def examples(self, base_url: str) -> list[str]:
        """``curl`` lines that show an effect on *this* bundle, printed at start (the README's
        examples name ml-100k latents; the synthetic default has others): its first user, the two
        latents that contribute most to that user's top 5 (suppressing them changes the list) and
        a word of the best-confirmed concept's name (``/concepts?q=`` finds it)."""
        if not len(self.bundle.users.user_ids):
            return [f"curl '{base_url}/concepts?limit=5'"]
        uid = str(self.bundle.users.user_ids[0])
        self._warming, warming = True, self._warming  # not a user's request: no metrics, drift, log
        try:
            body = self.recommend_user(uid, RecommendOptions(k=5, explain=True))
            weight: dict[int, float] = {}
            for item in body["items"]:
                for c in item["explanation"]["contributions"]:
                    weight[c["latent"]] = weight.get(c["latent"], 0.0) + max(c["contribution"], 0.0)
            top = sorted(weight, key=lambda j: -weight[j])[:2]
        finally:
            self._warming = warming
        lines = [f"curl '{base_url}/recommend?user_id={uid}&k=5&explain=true'"]
        if top:
            lines.append(f"curl '{base_url}/recommend?user_id={uid}&k=5&suppress={','.join(map(str, sorted(top)))}'")
        described = sorted((c for c in self.concepts if c.status == "described" and c.description),
                           key=lambda c: (-(c.confidence or 0.0), c.latent))
        words = [w for c in described for w in (label_of(c.description) or "").replace(",", " ").split()
                 if len(w) > 3 and w.isalpha()]
        if words:
            lines.append(f"curl '{base_url}/concepts?q={words[0]}'")
        return lines

    def _resync(self) -> None:
        """After (re)subscribing: re-read everything, since changes made meanwhile were not reported."""
        self.policies.sync()
        self.store.refresh()

    def _invalidated(self, keys: list[bytes] | None) -> None:
        if keys is None:  # FLUSHALL / FLUSHDB: everything may be gone
            self._resync()
            return
        latents = [j for j in map(self.store.latent_of, keys) if j is not None]
        if latents:
            self.store.refresh(latents)
        if len(latents) < len(keys):  # a policy key ({prefix}:policies, {prefix}:policies:gen)
            self.policies.changed()

    def close(self) -> None:
        self.batcher.close()
        if self.tracker is not None:
            self.tracker.close()
        self.recent.close()
        self.policies.close()
        if self.link is not None:
            self.link.close()

    # -- recommendations --------------------------------------------------------------------------
    def recommend_user(self, user_id: str, opts: RecommendOptions) -> dict[str, Any]:
        return _answer(self.answers([Job("user", user_id, None, opts)])[0])

    def recommend_history(self, history: list[str], opts: RecommendOptions) -> dict[str, Any]:
        return _answer(self.answers([Job("history", None, history, opts)])[0])

    async def recommend_user_async(self, user_id: str, opts: RecommendOptions) -> dict[str, Any]:
        """``recommend_user``'s body for orjson (``finish``'s ``wire``: items and concepts may be
        ``orjson.Fragment``s written by the compiled hot path), through the batcher: shares its
        encoder call, SAE encode and scoring pass with the requests that arrive while the previous
        batch computes."""
        return self.finish(await self.batcher.submit(Job("user", user_id, None, opts)), wire=True)

    async def recommend_history_async(self, history: list[str], opts: RecommendOptions) -> dict[str, Any]:
        return self.finish(await self.batcher.submit(Job("history", None, history, opts)), wire=True)

    def answers(self, jobs: list["Job"]) -> list[dict[str, Any] | Exception]:
        """Each request's body (or the exception it answers with), computed as one batch."""
        out: list[dict[str, Any] | Exception] = []
        for r in self.run_batch(jobs):
            try:
                out.append(r if isinstance(r, Exception) else self.finish(r))
            except Exception as e:  # noqa: BLE001 - one request's failure is not its batch's
                out.append(e)
        return out

    def run_batch(self, jobs: list["Job"]) -> list["_Scored | Exception"]:
        """The shared part of several requests: one encoder call, one SAE encode, one scoring
        pass and one explanation call; everything per request (validation, policy, suppression,
        exclusion) is done per row as for a single request (which IS a batch of one). Returns
        each request's scored result, or the exception it answers with.

        The batcher's thread runs this (NumPy and ONNX Runtime release the GIL); ``finish``
        builds each body (~100 objects when explained) in the request's own coroutine, which
        writes it next: the objects never cross threads, the batch thread holds the GIL briefly."""
        out: list[_Scored | Exception | None] = [None] * len(jobs)
        live: list[int] = []
        for i, job in enumerate(jobs):
            try:
                self._prepare(job)
                live.append(i)
            except (NotFound, ClientError) as e:
                out[i] = e
        if not live:
            return out  # type: ignore[return-value]
        eng, sae = self.engine, self.sae
        if eng.input_kind == "history":
            x = eng.encode_histories([jobs[i].seen for i in live])
        else:
            x = eng.encode_users(np.array([jobs[i].u for i in live], dtype=np.int64))
        if self.plain:
            codes = Codes(np.zeros((len(live), 0), np.float32), np.zeros((len(live), 0), np.int64))
        else:
            codes = sae.encode(x)
        # the codes are sorted by activation, the non-firing (0) last: a row's firing latents are
        # its first n_active (lists made once a batch: each NumPy call on a tiny array costs ~1 us)
        latents, n_active = codes.idx.tolist(), (codes.acts > 0).sum(axis=1).tolist()
        plans: list[tuple[int, _Plan]] = []
        for r, i in enumerate(live):
            try:
                plans.append((i, self._plan(jobs[i], x[r : r + 1], Codes(codes.acts[r : r + 1], codes.idx[r : r + 1]),
                                            latents[r][: n_active[r]])))
            except Exception as e:  # noqa: BLE001 - a 422 (or a bug) of one request stays that request's
                out[i] = e
        if plans and not self._warming:  # drift counts live traffic: not an auditor's requests
            rows = [r for r, i in enumerate(live) if out[i] is None and not jobs[i].opts.audit]
            if rows and codes.idx.shape[1]:
                self.drift.record_codes(codes.idx[rows], codes.acts[rows])
        if plans:
            xs = np.concatenate([p.xs for _, p in plans]) if len(plans) > 1 else plans[0][1].xs
            k_max = max(jobs[i].opts.k for i, _ in plans)
            exclude = [jobs[i].seen if jobs[i].opts.exclude_seen else _NONE for i, _ in plans]
            # the first k of the top-k_max are the top-k (best first, ties by lower id)
            if eng.ann is not None:  # index candidates for the steered xs, re-scored exactly (recsae.ann)
                ids, sc = eng.ann.top_items(xs, k_max, exclude)
            else:  # the item matrix is read once per batch, block by block (no (B, n_items) scores)
                ids, sc = score_top_k(xs, eng.item_emb, k_max, exclude)
            explained = self._explain_batch(jobs, plans, xs, ids)
            # everything excluded in a tiny catalogue: never -inf in JSON (sorted best first, the
            # non-finite scores are each row's tail)
            n_ok = np.isfinite(sc).sum(axis=1).tolist()
            id_rows, score_rows = ids.tolist(), _round(sc).tolist()
            for row, (i, plan) in enumerate(plans):
                n = min(jobs[i].opts.k, n_ok[row])
                out[i] = _Scored(jobs[i], plan, id_rows[row][:n], score_rows[row][:n], explained[row])
        return out  # type: ignore[return-value]

    def _prepare(self, job: "Job") -> None:
        """Resolve the user (or the history's items): what to encode and what was seen."""
        if job.source == "user":
            u = self.bundle.users.index_of(job.user_id)
            if u is None:
                raise NotFound(
                    f"unknown user_id {job.user_id!r}: this bundle knows {len(self.bundle.users.user_ids)} users "
                    "of its training data; for a new user POST /recommend with a history"
                )
            job.u, job.seen = u, self.bundle.users.history(u)
            return
        if not self.engine.accepts_history:
            raise ClientError(
                ("body", "history"),
                f"this bundle's model ({self.engine.bundle.model['name']}) encodes user ids, not "
                "histories: POST /recommend needs a sequential bundle; use GET /recommend?user_id=",
            )
        idx, unknown = [], []
        for raw in job.history or []:
            i = self.bundle.catalog.index_of(raw)
            (unknown if i is None else idx).append(raw if i is None else i)
        if unknown:
            raise ClientError(
                ("body", "history"),
                f"{len(unknown)} item id(s) not in the catalog: {unknown[:10]}",
            )
        job.seen = np.asarray(idx, dtype=np.int64)

    def _plan(self, job: "Job", x: np.ndarray, codes: Codes, active: list[int]) -> "_Plan":
        """Validate this request's suppression against the bundle, resolve its policy, compute the
        suppression weights (once: scoring and the explanation both use them) and steer.
        ``active``: its firing latents."""
        sae, o = self.sae, job.opts
        where, suppress = o.where, o.suppress
        bad = [j for j in suppress if not 0 <= j < sae.n_latents]
        if bad:
            raise ClientError(
                (where, "suppress"),
                f"unknown latent ids {bad[:10]}: this bundle has latents 0..{sae.n_latents - 1}",
            )
        # policies and concepts come from process memory, kept coherent by the Redis tracker:
        # no round trip on the request path
        policy = o.policy
        pol = self.policies.current(policy) if policy is not None else None
        if policy is not None and pol is None:
            raise ClientError((where, "policy"), f"unknown policy {policy!r}; see GET /admin/policies")

        # one rule with `recsae debias` (recsae.policy.steering): the stronger of the policy's and
        # the request's suppression, per latent and for the baseline (b_dec)
        st = steering(
            pol.name if pol is not None else None,
            self.policies.effective_latents(pol) if pol is not None else None,
            pol.baseline if pol is not None else 0.0, pol.mode if pol is not None else None,
            suppress, o.suppress_baseline, o.mode,
        )
        strengths, sources, baseline, baseline_source, use_mode = st
        weights = sae.suppression_weights(codes, strengths)
        xs = sae.steer_weighted(x, codes, weights, use_mode, baseline)  # nothing to steer: x itself
        return _Plan(xs, codes, weights, active, pol, strengths, sources, baseline, baseline_source, use_mode)

    def finish(self, scored: "_Scored", wire: bool = False) -> dict[str, Any]:
        """The response body (schema: ``service.schemas.RecommendResponse``) of a scored request:
        its top-k and, when explained, its share of ``_explain_batch``. ``wire``: for orjson
        only (the HTTP routes): ``items`` and ``active_latents`` may then be ``orjson.Fragment``s
        of their JSON, written by the compiled hot path (``service.hotpath``).

        Without it the body is plain dicts (field for field the schema's RecommendResponse; tests
        check served bodies are byte for byte its serialisation): ~100 Pydantic objects per
        explained response cost more than the kernel."""
        job, plan, ids, scores, ex = scored
        pol, strengths, baseline, active = plan.pol, plan.strengths, plan.baseline, plan.active
        item_ids, titles = self.item_ids, self.titles
        described = self.store.described(active) if ex is not None else []
        items: Any = None
        active_out: Any = []
        if wire and self._c_items is not None:
            try:
                body = self._c_items(ids, scores, item_ids, titles, ex.table if ex else None, ex.order if ex else None,
                                      [d.json for d in described],
                                      [strengths.get(j, 0.0) for j in active] if strengths and ex else None,
                                      job.opts.explain_top or 0)
                items, active_out = orjson.Fragment(body[0]), orjson.Fragment(body[1])
            except (TypeError, ValueError, BufferError) as e:  # e.g. a title with lone surrogates
                declined("body", e)
        if items is None:
            items = [
                {"rank": r + 1, "item_id": item_ids[i], "title": titles[i], "score": s, "explanation": None}
                for r, (i, s) in enumerate(zip(ids, scores))
            ]
            if ex is not None:
                active_out, sup = self._active(ex, active, strengths, described)
                self._explain_items(ex, [d.contribution[s] for d, s in zip(described, sup)], items,
                                    job.opts.explain_top or 0)

        audit = job.opts.audit  # an auditor's request: not live traffic
        if not self._warming:  # (drift: recorded for the whole batch by run_batch)
            self._served[job.source].inc()
            label = M.policy_label(pol.name if pol is not None else None) if strengths or baseline else None
            if label is not None:
                M.SUPPRESSION.labels(label).inc()
            if baseline:
                M.BASELINE_SUPPRESSION.labels(label).inc()
            if not audit and self.recent.sampled():
                self.recent.record(job.user_id, [(item_ids[i], titles[i]) for i in ids[:10]], active, strengths,
                                   pol.name if pol is not None else None, baseline)
        active_set = set(active)
        return {
            "user_id": job.user_id,
            "bundle_version": self.bundle.version,
            "bundle_hash": self.bundle.bundle_hash,
            "k": job.opts.k,
            "mode": plan.mode,
            "policy": pol.name if pol is not None else None,
            "suppressed": [
                {"latent": j, "strength": float(s), "source": plan.sources[j], "active": j in active_set}
                for j, s in sorted(strengths.items())
            ],
            "baseline": {"strength": baseline, "source": plan.baseline_source} if baseline else None,
            "items": items,
            "active_latents": active_out,
        }

    def _explain_batch(self, jobs: list["Job"], plans: list[tuple[int, "_Plan"]], xs: np.ndarray,
                       ids: np.ndarray) -> list["_Explained | None"]:
        """Per-item bias + contributions + error (= the steered score) for every explained
        request of a batch, ranked and rounded for the wire in one call: the compiled one
        (``service.hotpath``, the GIL released) or ``SAEKernel.explain`` + one sort and one
        rounding in NumPy; the per-request work left is building the body (``finish``). ``xs``:
        the plans' steered representations, stacked (what was scored); ``ids``: the listed items.

        Each row is explained on its steered representation, its steered codes (z_j scaled by
        1 - w_j, ``w`` the suppression weights its steering used) and its steered bias
        ((1 - baseline) b_dec), so bias + sum(contributions) + error == steered score. All rows
        are explained over the batch's ``k_max`` listed items; ``finish`` keeps its first k.
        The number of NumPy calls does not grow with the batch: at a batch of one they are the
        cost (each ~2 us).
        """
        out: list[_Explained | None] = [None] * len(plans)
        rows = [] if self.plain else [r for r, (i, _) in enumerate(plans) if jobs[i].opts.explain]
        if not rows:
            return out
        ps = [plans[r][1] for r in rows]
        if len(ps) == 1:
            p = ps[0]
            acts, idx, w, baseline = p.codes.acts, p.codes.idx, p.weights, np.array([p.baseline])
        else:
            acts = np.concatenate([p.codes.acts for p in ps])
            idx = np.concatenate([p.codes.idx for p in ps])
            w = np.concatenate([p.weights for p in ps])
            baseline = np.array([p.baseline for p in ps])
        sel = rows if len(rows) < len(plans) else slice(None)
        xs, ids = xs[sel], ids[sel]
        (E, n), k = ids.shape, acts.shape[1]
        table, order = np.empty((E, n + 1, k + 2)), np.empty((E, n, k), dtype=np.int64)
        done = False
        if self._c_explain is not None:
            try:
                self._c_explain(xs, acts, w, idx, baseline, ids, self.sae.W_dec, self.sae.b_dec,
                                self.engine.item_emb, table, order)
                done = True
            except (TypeError, ValueError) as e:  # an input it does not take (a dtype, a layout)
                declined("explanation", e)
        if not done:
            self._explain_numpy(xs, Codes(acts, idx), w, baseline, ids, [len(p.active) for p in ps], table, order)
        activations = table[:, n, :k].tolist()
        for e, r in enumerate(rows):
            out[r] = _Explained(table[e], order[e], activations[e][: len(ps[e].active)])
        return out

    def _explain_numpy(self, xs: np.ndarray, codes: Codes, w: np.ndarray, baseline: np.ndarray, ids: np.ndarray,
                       n_active: list[int], table: np.ndarray, order: np.ndarray) -> None:
        """``_explain_batch`` in NumPy (the kernel's ``explain``): fills ``table`` and ``order``
        as ``service/_hotpath.c``'s ``explain`` does."""
        ex = self.sae.explain(xs, Codes(codes.acts * (1.0 - w), codes.idx), self.engine.item_emb[ids], baseline)
        E, k, n = ex.contributions.shape
        # one rounding for all numbers of the explanations: per item its k contributions, then
        # bias and error; a last row with the activations
        table[:, :n, :k] = ex.contributions.transpose(0, 2, 1)
        table[:, :n, k], table[:, :n, k + 1], table[:, n, :k], table[:, n, k:] = ex.bias, ex.error, codes.acts, 0.0
        # a row's firing latents are its first n_active (``run_batch``); they are ranked per
        # item, largest contribution first; the positions that did not fire are -1
        key = -table[:, :n, :k]
        cut = np.arange(k) >= np.array(n_active)[:, None, None]
        if min(n_active) < k:  # latents that did not fire go last (and are cut by ``finish``)
            key = np.where(cut, np.inf, key)
        order[:] = np.argsort(key, axis=2, kind="stable")
        if min(n_active) < k:
            order[np.broadcast_to(cut, order.shape)] = -1
        np.round(table, DECIMALS, out=table)

    @staticmethod
    def _active(ex: "_Explained", lat: list[int], suppress: dict[int, float],
                described: list) -> tuple[list[dict], list[bool]]:
        """The active concepts ``lat`` (descriptions and labels from process memory,
        ``ConceptStore.described``: their entries prebuilt there, copied here with this request's
        numbers) and whether each is suppressed. ``suppress``: the request's effective strengths
        (as its ``suppressed`` list shows them)."""
        strengths = [suppress.get(j, 0.0) for j in lat]
        sup = [s > 0 for s in strengths]
        active = []
        for d, a, s, w in zip(described, ex.activations, sup, strengths):
            e = d.entry.copy()
            e["activation"], e["suppressed"], e["strength"] = a, s, w
            active.append(e)
        return active, sup

    @staticmethod
    def _explain_items(ex: "_Explained", protos: list[dict], items: list[dict], top: int = 0) -> None:
        """Fill each listed item's explanation (the Python writer; ``service.hotpath`` has the
        compiled one). ``protos``: each latent position's prebuilt contribution entry; ``top``:
        list only each item's first ``top`` (0: all), the rest summed in ``other``."""
        table, order = ex.table.tolist(), ex.order.tolist()
        k = len(table[0]) - 2
        for item, nums, ranked in zip(items, table, order):
            contributions, other = [], 0.0
            for t, a in enumerate(ranked):
                if a < 0:  # the firing positions end here
                    break
                if top and t >= top:  # left out: summed, in ranked order (as service/_hotpath.c)
                    other += nums[a]
                    continue
                c = protos[a].copy()
                c["contribution"] = nums[a]
                contributions.append(c)
            item["explanation"] = {"bias": nums[k], "error": nums[k + 1], "contributions": contributions,
                                   "other": round(other * 1e6) / 1e6}  # rounded as np.round(x, 6) does

    # -- concepts and bundle ----------------------------------------------------------------------
    def concept(self, latent: int) -> Concept:
        c = self.store.concepts.get(latent)
        if c is None:
            raise NotFound(f"unknown latent {latent}: this bundle has latents 0..{self.sae.n_latents - 1}")
        return c

    def bundle_info(self) -> BundleInfo:
        return bundle_info(self.bundle, self.engine, self.sae, self.provider, self.hot_path)


_NONE = np.zeros(0, dtype=np.int64)


class Job:
    """One recommendation request on its way through ``Core.run_batch``: a known user
    (source 'user') or an explicit history ('history'), with its options."""

    __slots__ = ("source", "user_id", "history", "opts", "u", "seen")

    def __init__(self, source: str, user_id: str | None, history: list[str] | None, opts: RecommendOptions):
        self.source, self.user_id, self.history, self.opts = source, user_id, history, opts
        self.u: int | None = None
        self.seen: np.ndarray = _NONE


class _Scored(NamedTuple):
    """A request after the batch's shared work: what ``Core.finish`` builds its body from."""

    job: Job
    plan: "_Plan"
    ids: list[int]
    """its top-k item ids, best first (items with non-finite scores dropped)"""
    scores: list[float]
    """their scores, rounded for the wire"""
    explained: "_Explained | None"


class _Explained(NamedTuple):
    """One request's share of ``Core._explain_batch``: its n_active firing latents' (its plan's
    ``active``) activations and the decomposition of its listed items' scores (all k_max of the
    batch), numbers rounded for the wire."""

    table: np.ndarray
    """(n + 1, k + 2) per listed item: each latent position's contribution, then bias and error;
    the last row: the k activations (then two zeros)"""
    order: np.ndarray
    """(n, k): per item, the firing latent positions, largest contribution first, then -1s"""
    activations: list[float]
    """the n_active firing latents' activations (the table's last row, as floats)"""


class _Plan(NamedTuple):
    """A request after steering: what scoring and the explanation need."""

    xs: np.ndarray
    codes: Codes
    weights: np.ndarray
    """(1, k) strength with which each of ``codes``' latents is suppressed (steering and explanation)"""
    active: list[int]
    pol: Policy | None
    strengths: dict[int, float]
    sources: dict[int, str]
    baseline: float
    baseline_source: str | None
    mode: SteerMode


def _answer(result: dict[str, Any] | Exception) -> dict[str, Any]:
    if isinstance(result, Exception):
        raise result
    return result
