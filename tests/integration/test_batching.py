"""Batched serving: concurrent requests share one encoder call, one SAE encode and one scoring
pass (``service.core.Core.run_batch`` behind ``Batcher``), and each gets the answer it would get
alone — item for item, with its own suppression, policy, exclusion and explanation."""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid

os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="recsae-prom-"))

import numpy as np  # noqa: E402
import orjson  # noqa: E402
import pytest  # noqa: E402

from service.core import ClientError, Job, NotFound  # noqa: E402
from service.options import RecommendOptions  # noqa: E402


@pytest.fixture(scope="module")
def core(synthetic_bundle, tmp_path_factory):
    from service.config import Settings
    from service.core import Core
    from service.schemas import PolicyIn

    c = Core(Settings(bundle=str(synthetic_bundle), redis_url=None, redis_prefix=f"batch-{uuid.uuid4().hex[:8]}",
                      state_dir=str(tmp_path_factory.mktemp("state")), warmup=False))
    c.start()
    uid = str(c.bundle.users.user_ids[0])
    active = [a["latent"] for a in c.recommend_user(uid, opts())["active_latents"]]
    c.policies.put("calm", PolicyIn(latents=active[:2], strength=0.7, baseline=0.3), who="test")
    yield c
    c.close()


def opts(**kw) -> RecommendOptions:
    return RecommendOptions(**{"k": 10, "explain": True, **kw})


def requests(core) -> list[Job]:
    users = [str(u) for u in core.bundle.users.user_ids[:12]]
    first = [a["latent"] for a in core.recommend_user(users[1], opts())["active_latents"]]
    variants = [
        opts(),
        opts(explain=False, k=5),
        opts(suppress={first[0]: 1.0, first[1]: 0.4}),
        opts(policy="calm"),
        opts(suppress_baseline=0.5, k=20),
        opts(mode="reconstruction", suppress={first[0]: 1.0}),
        opts(exclude_seen=False, k=3),
        opts(explain_top=2, suppress={first[0]: 1.0}),
        opts(policy="no-such-policy"),  # 422, alone and in a batch
        opts(suppress={10**6: 1.0}),  # 422
    ]
    jobs = [Job("user", u, None, variants[i % len(variants)]) for i, u in enumerate(users)]
    jobs.append(Job("user", "no-such-user", None, opts()))  # 404
    if core.engine.accepts_history:
        jobs.append(Job("history", None, core.item_ids[:5], opts(suppress={first[0]: 1.0}, where="body")))
        jobs.append(Job("history", None, ["not-an-item"], opts(where="body")))  # 422
    return jobs


def alone(core, job: Job):
    try:
        if job.source == "user":
            return core.recommend_user(job.user_id, job.opts)
        return core.recommend_history(job.history, job.opts)
    except (NotFound, ClientError) as e:
        return e


def assert_same(batched, single) -> None:
    """The same body: every field equal, numbers to 2e-6 (the batch's encoder call, SAE encode
    and matrix-matrix scoring may round the last float32 bit differently from a batch of one;
    the wire rounds to 6 decimals)."""
    if isinstance(single, Exception):
        assert type(batched) is type(single) and str(batched) == str(single)
        return
    assert not isinstance(batched, Exception), batched
    assert [i["item_id"] for i in batched["items"]] == [i["item_id"] for i in single["items"]]
    same(batched, single, "body")


def same(a, b, where: str) -> None:
    if isinstance(b, float) and not isinstance(a, bool):
        assert a == pytest.approx(b, abs=2e-6), where
    elif isinstance(b, dict):
        assert isinstance(a, dict) and a.keys() == b.keys(), where
        for key in b:
            same(a[key], b[key], f"{where}.{key}")
    elif isinstance(b, list):
        assert isinstance(a, list) and len(a) == len(b), where
        for n, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{where}[{n}]")
    else:
        assert a == b, where


def test_a_batch_answers_each_request_as_if_it_came_alone(core):
    jobs = requests(core)
    single = [alone(core, j) for j in jobs]
    assert sum(isinstance(s, Exception) for s in single) >= 3 and any(s["suppressed"] for s in single
                                                                        if isinstance(s, dict))
    batched = core.answers(requests(core))
    assert len(batched) == len(jobs)
    for b, s in zip(batched, single):
        assert_same(b, s)


def test_concurrent_requests_share_batches_and_get_their_own_answers(core):
    jobs = requests(core)
    single = [alone(core, j) for j in jobs]
    core.batcher.sizes.clear()

    async def many():
        async def one(job):
            try:
                if job.source == "user":
                    return orjson.loads(orjson.dumps(await core.recommend_user_async(job.user_id, job.opts)))
                return orjson.loads(orjson.dumps(await core.recommend_history_async(job.history, job.opts)))
            except (NotFound, ClientError) as e:
                return e
        return await asyncio.gather(*[one(j) for j in requests(core) * 3])

    got = asyncio.run(many())
    assert max(core.batcher.sizes) > 1, list(core.batcher.sizes)  # requests really were batched
    for n, b in enumerate(got):
        assert_same(b, single[n % len(jobs)])


def test_latents_that_do_not_fire_are_left_out_of_explanations_batched_or_alone(core):
    """A code can hold fewer than k firing latents (activation 0 after the ReLU). Here the
    bundle's own SAE with its encoder bias lowered so that users fire 1..k-1 latents: each body
    lists only its firing latents, every item ranks exactly those by contribution (largest
    first), and a batch mixing such rows with full ones answers each as alone."""
    import dataclasses

    full = core.sae
    users = [str(u) for u in core.bundle.users.user_ids[:10]]
    x = core.engine.encode_users(np.array([core.bundle.users.index_of(u) for u in users]))
    pre = np.sort((x - full.b_dec) @ full.W_enc.T + full.b_enc, axis=1)[:, ::-1]
    shift = float(np.median(pre[:, full.k - 1]))  # about half the users fire fewer than k
    core.sae = dataclasses.replace(full, b_enc=full.b_enc - np.float32(shift))
    try:
        jobs = [Job("user", u, None, opts()) for u in users]
        batched = core.answers(jobs)
        fewer = 0
        for job, body in zip(jobs, batched):
            assert_same(body, alone(core, job))
            lat = [a["latent"] for a in body["active_latents"]]
            assert all(a["activation"] > 0 for a in body["active_latents"])
            fewer += len(lat) < full.k
            for item in body["items"]:
                contrib = item["explanation"]["contributions"]
                assert sorted(c["latent"] for c in contrib) == sorted(lat)
                values = [c["contribution"] for c in contrib]
                assert values == sorted(values, reverse=True)
        assert 0 < fewer < len(users), fewer  # rows with fewer than k firing, batched with full ones
    finally:
        core.sae = full


def test_the_compiled_hot_path_and_the_python_one_answer_alike(core, synthetic_bundle, tmp_path):
    """``RECSAE_COMPILED_HOTPATH=0`` (and any install without a C compiler) serves the NumPy
    kernel's explanations and the dict-built bodies: the same answers, item for item, to the
    float32 rounding of the explanation numbers."""
    from service.config import Settings
    from service.core import Core
    from service.schemas import PolicyIn

    slow = Core(Settings(bundle=str(synthetic_bundle), redis_url=None, redis_prefix=f"py-{uuid.uuid4().hex[:8]}",
                         state_dir=str(tmp_path), warmup=False, compiled_hotpath=False))
    slow.start()
    try:
        calm = core.policies.current("calm")
        slow.policies.put("calm", PolicyIn(latents=calm.latents, strength=calm.strength, baseline=calm.baseline),
                          who="test")
        assert (core.hot_path, slow.hot_path) == ("compiled", "python")
        assert (core.bundle_info().hot_path, slow.bundle_info().hot_path) == ("compiled", "python")  # GET /bundle

        async def both():
            out = []
            for job in requests(core):
                got = []
                for c in (core, slow):
                    try:
                        call = (c.recommend_user_async(job.user_id, job.opts) if job.source == "user"
                                else c.recommend_history_async(job.history, job.opts))
                        got.append(orjson.loads(orjson.dumps(await call)))
                    except (NotFound, ClientError) as e:
                        got.append(e)
                out.append(got)
            return out

        for fast, py in asyncio.run(both()):
            assert_same(fast, py)
        from service import hotpath

        assert not hotpath._declined, hotpath._declined  # the compiled path took every request itself
    finally:
        slow.close()
