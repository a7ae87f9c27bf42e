"""Fast in-process tests of the HTTP service: starlette's TestClient over the BentoML ASGI app
(built once per process), a real small bundle, and the shared Redis under a private prefix."""

from __future__ import annotations

import os
import re
import time
import tempfile
import uuid
from dataclasses import replace

os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="recsae-prom-"))
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tests.conftest import SYNTHETIC_SETTINGS  # noqa: E402

SHARED_REDIS = "redis://127.0.0.1:6379/0"
TOKEN = "test-admin-token-" + uuid.uuid4().hex[:8]
AUTH = {"Authorization": f"Bearer {TOKEN}", "X-Admin-Label": "pytest"}


@pytest.fixture(scope="module")
def redis_prefix():
    import redis

    r = redis.Redis.from_url(SHARED_REDIS, socket_timeout=2)
    try:
        r.ping()
    except redis.RedisError as e:
        pytest.skip(f"no Redis at {SHARED_REDIS}: {e}")
    prefix = f"test-inproc-{uuid.uuid4().hex[:10]}"
    yield prefix
    keys = list(r.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        r.delete(*keys)


_ASGI = None


def _asgi():
    """BentoML's ASGI app can be built only once per process."""
    global _ASGI
    if _ASGI is None:
        from service.service import RecSAEService

        _ASGI = RecSAEService.to_asgi()
    return _ASGI


@pytest.fixture(scope="module")
def client(bundle, redis_prefix, tmp_path_factory):
    from starlette.testclient import TestClient

    env = {
        "RECSAE_BUNDLE": str(bundle),
        "REDIS_URL": SHARED_REDIS,
        "RECSAE_REDIS_PREFIX": redis_prefix,
        "RECSAE_ADMIN_TOKEN": TOKEN,
        "RECSAE_STATE_DIR": str(tmp_path_factory.mktemp("state")),
        "RECSAE_POLICY_SYNC_S": "0.5",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with TestClient(_asgi(), raise_server_exceptions=False) as c:
            yield c
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def svc(client):
    from _bentoml_sdk.service import get_current_service

    return get_current_service()


def users(engine, n=6):
    ids = engine.bundle.users.user_ids
    return [str(ids[i]) for i in np.linspace(0, len(ids) - 1, n).astype(int)]


def offline(engine, user_id, k=10, suppress=None, mode="error", baseline=0.0):
    u = engine.bundle.users.index_of(user_id)
    x = engine.encode_users(np.array([u]))
    ids, sc, _, _ = engine.recommend(x, k, exclude=[engine.bundle.users.history(u)], suppress=suppress, mode=mode,
                                     baseline=baseline)
    return [engine.bundle.catalog.item_ids[i] for i in ids[0]], sc[0]


def check_schema(body):
    """A served body is exactly what the Pydantic response model describes (the wire format)."""
    from service.schemas import RecommendResponse

    assert RecommendResponse.model_validate(body).model_dump(mode="json") == body


def check_decomposition(body, tol=1e-4):
    check_schema(body)
    for it in body["items"]:
        e = it["explanation"]
        total = e["bias"] + e["error"] + sum(c["contribution"] for c in e["contributions"])
        assert total == pytest.approx(it["score"], abs=tol), it["item_id"]


# -- basics ---------------------------------------------------------------------------------------
def test_ready_and_bundle_summary(client, engine):
    assert client.get("/readyz").status_code == 200
    assert client.get("/livez").status_code == 200
    b = client.get("/bundle").json()
    assert b["bundle_hash"] == engine.bundle.bundle_hash
    assert b["version"] == engine.bundle.version
    assert b["sae"] == {"k": engine.sae.k, "n_latents": engine.sae.n_latents,
                       "expansion": SYNTHETIC_SETTINGS["expansion"], "encoder": "topk"}
    assert b["accepts_history"] is True and b["model"]["input_kind"] == "history"
    fid = engine.bundle.manifest["metrics"]["fidelity"]
    assert b["metrics"]["sae_heldout_ndcg10_ratio"] == round(fid["heldout_ndcg10_ratio_reconstruction"], 4)
    assert b["metrics"]["sae_test_ndcg10_ratio"] == round(fid["ndcg10_ratio_reconstruction"], 4)
    assert b["quality_warnings"] == engine.bundle.manifest["metrics"]["quality"]["warnings"]


@pytest.mark.parametrize("explain", [False, True])
def test_recommendations_equal_the_offline_kernel(client, engine, explain):
    for uid in users(engine):
        r = client.get("/recommend", params={"user_id": uid, "k": 10, "explain": explain})
        assert r.status_code == 200, r.text
        body = r.json()
        want_ids, want_scores = offline(engine, uid)
        assert [it["item_id"] for it in body["items"]] == want_ids
        assert [it["score"] for it in body["items"]] == pytest.approx(want_scores.tolist(), abs=1e-5)
        assert [it["rank"] for it in body["items"]] == list(range(1, 11))
        assert body["bundle_version"] == engine.bundle.version
        assert (body["items"][0]["explanation"] is not None) == explain
        check_schema(body)
        if not explain:
            assert body["active_latents"] == []


def test_served_bytes_are_the_response_models_own_serialisation(client, engine):
    """The hot path writes bodies from plain dicts with orjson (service.deps.body_json): the bytes
    must be exactly what the Pydantic response model writes for the same answer (field order,
    numbers, escapes, nulls), with and without explanations, suppression and the baseline."""
    from service.schemas import RecommendResponse

    uid = users(engine)[1]
    first = client.get("/recommend", params={"user_id": uid, "k": 10, "explain": True}).json()
    latent = first["active_latents"][0]["latent"]
    for params in ({"explain": False}, {"explain": True}, {"explain": True, "suppress": f"{latent}:0.5"},
                   {"explain": True, "suppress_baseline": 0.3, "k": 3}, {"explain": True, "exclude_seen": False}):
        r = client.get("/recommend", params={"user_id": uid, "k": 10, **params})
        assert r.status_code == 200, r.text
        assert r.content == RecommendResponse.model_validate_json(r.content).model_dump_json().encode(), params


def test_explanations_decompose_the_scores(client, engine):
    for uid in users(engine):
        body = client.get("/recommend", params={"user_id": uid, "explain": "true"}).json()
        check_decomposition(body)
        u = engine.bundle.users.index_of(uid)
        codes = engine.sae.encode(engine.encode_users(np.array([u])))
        firing = codes.acts[0] > 0
        assert [a["latent"] for a in body["active_latents"]] == codes.idx[0][firing].tolist()
        assert [a["activation"] for a in body["active_latents"]] == pytest.approx(codes.acts[0][firing].tolist())
        for it in body["items"]:
            lat = {c["latent"] for c in it["explanation"]["contributions"]}
            assert lat == {a["latent"] for a in body["active_latents"]}
            contrib = [c["contribution"] for c in it["explanation"]["contributions"]]
            assert contrib == sorted(contrib, reverse=True)


def _strongest_positive(body):
    """(latent, {item_id: contribution}) of the active latent with the largest positive contribution."""
    best = max(
        ((c["latent"], c["contribution"]) for it in body["items"] for c in it["explanation"]["contributions"]),
        key=lambda t: t[1],
    )
    j = best[0]
    per_item = {
        it["item_id"]: next(c["contribution"] for c in it["explanation"]["contributions"] if c["latent"] == j)
        for it in body["items"]
    }
    return j, per_item


def test_suppression_removes_the_concept_and_moves_scores(client, engine):
    uid = users(engine)[1]
    before = client.get("/recommend", params={"user_id": uid, "explain": True, "k": 20}).json()
    j, contrib = _strongest_positive(before)
    assert contrib[max(contrib, key=contrib.get)] > 0
    after = client.get("/recommend", params={"user_id": uid, "explain": True, "k": 20, "suppress": str(j)}).json()
    check_decomposition(after)
    assert after["suppressed"] == [{"latent": j, "strength": 1.0, "source": "request", "active": True}]
    act = {a["latent"]: a for a in after["active_latents"]}
    assert act[j]["suppressed"] is True and act[j]["strength"] == 1.0
    for it in after["items"]:
        c = next(c for c in it["explanation"]["contributions"] if c["latent"] == j)
        assert c["contribution"] == 0.0 and c["suppressed"] is True
    # error mode: every item's score drops by exactly that concept's contribution
    old = {it["item_id"]: it["score"] for it in before["items"]}
    new = {it["item_id"]: it["score"] for it in after["items"]}
    common = set(old) & set(new)
    assert common
    for i in common:
        assert new[i] == pytest.approx(old[i] - contrib[i], abs=1e-4)
        if contrib[i] > 1e-6:
            assert new[i] < old[i]
    # and the served ranking is the offline steered ranking
    ids, scores = offline(engine, uid, k=20, suppress={j: 1.0})
    assert [it["item_id"] for it in after["items"]] == ids
    assert [it["score"] for it in after["items"]] == pytest.approx(scores.tolist(), abs=1e-5)


def test_suppress_strength_removes_that_share_of_each_concept(client, engine):
    """``suppress_strength=0.4``: each request-suppressed latent loses 40% of its contribution,
    exactly as the offline kernel steers; a policy on the same latent wins when it is stronger."""
    uid = users(engine)[2]
    before = client.get("/recommend", params={"user_id": uid, "explain": True, "k": 20}).json()
    j, contrib = _strongest_positive(before)
    part = client.get("/recommend", params={"user_id": uid, "explain": True, "k": 20, "suppress": str(j),
                                            "suppress_strength": 0.4}).json()
    check_decomposition(part)
    assert part["suppressed"] == [{"latent": j, "strength": 0.4, "source": "request", "active": True}]
    ids, scores = offline(engine, uid, k=20, suppress={j: 0.4})
    assert [it["item_id"] for it in part["items"]] == ids
    assert [it["score"] for it in part["items"]] == pytest.approx(scores.tolist(), abs=1e-5)
    old = {it["item_id"]: it["score"] for it in before["items"]}
    for it in part["items"]:
        if it["item_id"] in old:
            assert it["score"] == pytest.approx(old[it["item_id"]] - 0.4 * contrib[it["item_id"]], abs=1e-4)
    # the same through POST
    hist = [engine.bundle.catalog.item_ids[i] for i in engine.bundle.users.history(engine.bundle.users.index_of(uid))]
    r = client.post("/recommend", json={"history": hist[-20:], "suppress": [j], "suppress_strength": 0.4})
    assert r.status_code == 200 and r.json()["suppressed"][0]["strength"] == 0.4
    # a stored policy at strength 1 on the same latent is the stronger: it applies
    assert client.put("/admin/policies/full-j", json={"latents": [j], "strength": 1.0}, headers=AUTH).status_code == 200
    try:
        both = client.get("/recommend", params={"user_id": uid, "suppress": str(j), "suppress_strength": 0.4,
                                                "policy": "full-j"}).json()
        assert both["suppressed"] == [{"latent": j, "strength": 1.0, "source": "policy:full-j", "active": True}]
    finally:
        client.delete("/admin/policies/full-j", headers=AUTH)
    for bad in ("0", "1.5", "-1", "nan", "x"):
        r = client.get("/recommend", params={"user_id": uid, "suppress": str(j), "suppress_strength": bad})
        assert r.status_code == 422 and ["query", "suppress_strength"] in [d["loc"] for d in r.json()["detail"]], bad


def test_each_suppressed_latent_can_carry_its_own_strength(client, engine):
    """``suppress=12:0.7,57``: latent 12 at 0.7, 57 at ``suppress_strength``; the served ranking is
    the offline kernel's with exactly those strengths, through GET and POST alike; bad strengths
    are a 422 on ``suppress`` that says how to write one."""
    uid = users(engine)[3]
    before = client.get("/recommend", params={"user_id": uid, "explain": True, "k": 20}).json()
    active = [a["latent"] for a in before["active_latents"]]
    a, b = active[0], active[1]
    got = client.get("/recommend", params={"user_id": uid, "explain": True, "k": 20,
                                           "suppress": f"{a}:0.7,{b}", "suppress_strength": 0.3}).json()
    check_decomposition(got)
    assert got["suppressed"] == sorted([{"latent": a, "strength": 0.7, "source": "request", "active": True},
                                        {"latent": b, "strength": 0.3, "source": "request", "active": True}],
                                       key=lambda e: e["latent"])  # listed by latent id
    # each active concept shows the strength it was asked for, the same number (not float32's 0.699999988)
    shown = {e["latent"]: (e["suppressed"], e["strength"]) for e in got["active_latents"]}
    assert shown[a] == (True, 0.7) and shown[b] == (True, 0.3), shown
    assert all(s == (False, 0.0) for j, s in shown.items() if j not in (a, b)), shown
    ids, scores = offline(engine, uid, k=20, suppress={a: 0.7, b: 0.3})
    assert [it["item_id"] for it in got["items"]] == ids
    assert [it["score"] for it in got["items"]] == pytest.approx(scores.tolist(), abs=1e-5)
    assert [it["score"] for it in got["items"]] != pytest.approx(  # and not with the strengths swapped
        offline(engine, uid, k=20, suppress={a: 0.3, b: 0.7})[1].tolist(), abs=1e-5)
    hist = [engine.bundle.catalog.item_ids[i] for i in engine.bundle.users.history(engine.bundle.users.index_of(uid))]
    body = {"history": hist[-20:], "k": 20, "suppress": [{"latent": a, "strength": 0.7}, b], "suppress_strength": 0.3}
    post = client.post("/recommend", json=body).json()
    plain = client.post("/recommend", json={"history": hist[-20:], "k": 20}).json()
    assert post["suppressed"] == got["suppressed"] and post["items"] != plain["items"]
    for bad in (f"{a}:0", f"{a}:1.5", f"{a}:x", f"{a}:"):
        r = client.get("/recommend", params={"user_id": uid, "suppress": bad})
        assert r.status_code == 422, bad
        d = next(d for d in r.json()["detail"] if d["loc"] == ["query", "suppress"])
        assert "strength" in d["msg"] or "'12,57:0.5'" in d["msg"], d


def _mean_popularity(engine, body):
    pop = np.asarray(engine.bundle.catalog.popularity, dtype=float)
    return float(np.mean([pop[engine.bundle.catalog.index_of(it["item_id"])] for it in body["items"]]))


def test_suppress_baseline_moves_the_ranking_to_less_popular_items(client, engine):
    """The baseline (b_dec, what all users share) is popularity: suppressing it per request lowers
    the popularity of every tested user's list, exactly as the offline kernel does."""
    before, after = [], []
    for uid in users(engine):
        plain = client.get("/recommend", params={"user_id": uid, "k": 20}).json()
        r = client.get("/recommend", params={"user_id": uid, "k": 20, "explain": True, "suppress_baseline": 0.5})
        assert r.status_code == 200, r.text
        body = r.json()
        assert plain["baseline"] is None
        assert body["baseline"] == {"strength": 0.5, "source": "request"} and body["suppressed"] == []
        check_decomposition(body)
        ids, scores = offline(engine, uid, k=20, baseline=0.5)
        assert [it["item_id"] for it in body["items"]] == ids != [it["item_id"] for it in plain["items"]]
        assert [it["score"] for it in body["items"]] == pytest.approx(scores.tolist(), abs=1e-5)
        # the explanation's bias term is what is left of b_dec: (1 - 0.5) b_dec . item
        emb, cat = engine.item_emb, engine.bundle.catalog
        for it in body["items"]:
            half = 0.5 * float(engine.sae.b_dec @ emb[cat.index_of(it["item_id"])])
            assert it["explanation"]["bias"] == pytest.approx(half, abs=1e-4)
        before.append(_mean_popularity(engine, plain))
        after.append(_mean_popularity(engine, body))
    assert all(a < b for a, b in zip(after, before)), (before, after)

    # POST (explicit history) takes it in the body; reconstruction mode decodes with (1 - s) b_dec
    cat = engine.bundle.catalog
    hist = [cat.item_ids[i] for i in (49, 171, 180)]
    r = client.post("/recommend", json={"history": hist, "k": 5, "suppress_baseline": 0.3, "mode": "reconstruction",
                                        "explain": True})
    assert r.status_code == 200, r.text
    idx = np.array([cat.index_of(h) for h in hist])
    ids, _, _, _ = engine.recommend(engine.encode_histories([idx]), 5, exclude=[idx], mode="reconstruction",
                                    baseline=0.3)
    assert [it["item_id"] for it in r.json()["items"]] == [cat.item_ids[i] for i in ids[0]]
    assert r.json()["baseline"] == {"strength": 0.3, "source": "request"}
    check_decomposition(r.json())


def test_a_policy_with_only_a_baseline(client, engine):
    uid = users(engine)[2]
    r = client.put("/admin/policies/no-popularity", json={"baseline": 0.4, "description": "popularity"}, headers=AUTH)
    assert r.status_code == 200, r.text
    pol = r.json()
    assert pol["baseline"] == 0.4 and pol["latents"] == [] and pol["query"] is None
    try:
        via_policy = client.get("/recommend", params={"user_id": uid, "policy": "no-popularity", "explain": True}).json()
        via_request = client.get("/recommend", params={"user_id": uid, "suppress_baseline": 0.4}).json()
        assert via_policy["baseline"] == {"strength": 0.4, "source": "policy:no-popularity"}
        assert [i["item_id"] for i in via_policy["items"]] == [i["item_id"] for i in via_request["items"]]
        plain = client.get("/recommend", params={"user_id": uid}).json()
        assert [i["item_id"] for i in via_policy["items"]] == offline(engine, uid, baseline=0.4)[0]
        assert [i["item_id"] for i in via_policy["items"]] != [i["item_id"] for i in plain["items"]]
        check_decomposition(via_policy)
        # the request's stronger baseline wins, and says so; a weaker one leaves the policy's
        strong = client.get("/recommend", params={"user_id": uid, "policy": "no-popularity", "suppress_baseline": 0.8}).json()
        assert strong["baseline"] == {"strength": 0.8, "source": "request"}
        weak = client.get("/recommend", params={"user_id": uid, "policy": "no-popularity", "suppress_baseline": 0.1}).json()
        assert weak["baseline"] == {"strength": 0.4, "source": "policy:no-popularity"}
        audit = client.get("/admin/audit", headers=AUTH, params={"limit": 1}).json()["entries"][0]
        assert audit["policy"] == "no-popularity" and '"baseline": 0.4' in audit["detail"]
    finally:
        client.delete("/admin/policies/no-popularity", headers=AUTH)


@pytest.mark.parametrize("value", ["1.5", "-0.1", "nan", "inf", "half", ""])
def test_suppress_baseline_out_of_range_is_a_422_naming_the_field(client, value):
    r = client.get("/recommend", params={"user_id": "1", "suppress_baseline": value})
    assert r.status_code == 422, r.text
    d = next(d for d in r.json()["detail"] if d["loc"] == ["query", "suppress_baseline"])
    assert d["msg"]
    for bad in (1.5, -0.1, "x"):
        r = client.post("/recommend", json={"history": ["1"], "suppress_baseline": bad})
        assert r.status_code == 422 and ["body", "suppress_baseline"] in [d["loc"] for d in r.json()["detail"]]
    for body in ({"baseline": 1.5}, {"baseline": -1}, {"baseline": 0}, {"latents": [1], "baseline": 2}):
        r = client.put("/admin/policies/bad-baseline", json=body, headers=AUTH)
        assert r.status_code == 422, (body, r.text)


def test_reconstruction_mode_has_no_error_term(client, engine):
    uid = users(engine)[2]
    body = client.get("/recommend", params={"user_id": uid, "explain": True, "mode": "reconstruction"}).json()
    assert body["mode"] == "reconstruction"
    check_decomposition(body)
    assert all(abs(it["explanation"]["error"]) < 1e-4 for it in body["items"])
    ids, _ = offline(engine, uid, mode="reconstruction")
    assert [it["item_id"] for it in body["items"]] == ids


def test_post_history_equals_offline(client, engine):
    cat = engine.bundle.catalog
    hist = [cat.item_ids[i] for i in (49, 171, 180, 99, 0)]
    r = client.post("/recommend", json={"history": hist, "k": 5, "explain": True})
    assert r.status_code == 200, r.text
    body = r.json()
    idx = np.array([cat.index_of(h) for h in hist])
    x = engine.encode_histories([idx])
    ids, sc, _, _ = engine.recommend(x, 5, exclude=[idx])
    assert [it["item_id"] for it in body["items"]] == [cat.item_ids[i] for i in ids[0]]
    assert body["user_id"] is None
    check_decomposition(body)
    assert not set(hist) & {it["item_id"] for it in body["items"]}
    # numbers are accepted as ids; exclude_seen=false may return history items
    r2 = client.post("/recommend", json={"history": [int(h) for h in hist], "k": 5})
    assert [it["item_id"] for it in r2.json()["items"]] == [it["item_id"] for it in body["items"]]


def test_post_history_needs_a_sequential_bundle(client, svc):
    eng = svc.core.engine
    eng.input_kind = "user"
    try:
        r = client.post("/recommend", json={"history": ["1"]})
    finally:
        eng.input_kind = "history"
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "history"]
    assert "sequential" in r.json()["detail"][0]["msg"]


# -- errors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "params, status, field",
    [
        ({"user_id": "no-such-user"}, 404, None),
        ({"user_id": "1", "k": 0}, 422, "k"),
        ({"user_id": "1", "k": 101}, 422, "k"),
        ({"user_id": "1", "k": "ten"}, 422, "k"),
        ({"user_id": "1", "suppress": "12,abc"}, 422, "suppress"),
        ({"user_id": "1", "suppress": "999999"}, 422, "suppress"),
        ({"user_id": "1", "policy": "no-such-policy"}, 422, "policy"),
        ({"user_id": "1", "policy": "bad name!"}, 422, "policy"),
        ({"user_id": "1", "mode": "fancy"}, 422, "mode"),
        ({"user_id": "1", "explain": "maybe"}, 422, "explain"),
        ({"user_id": "1", "verbose": "1"}, 422, "verbose"),
        ({}, 422, "user_id"),
    ],
)
def test_get_errors(client, params, status, field):
    r = client.get("/recommend", params=params)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    if field is None:
        assert "unknown user_id" in detail
    else:
        assert field in {d["loc"][-1] for d in detail}, detail


@pytest.mark.parametrize(
    "body, field",
    [
        ({"history": []}, "history"),
        ({"history": ["1"] * 201}, "history"),
        ({"history": ["1", "not-an-item"]}, "history"),
        ({"history": ["1"], "k": 0}, "k"),
        ({"history": ["1"], "suppress": [100000]}, "suppress"),
        ({"history": ["1"], "suppress": "1,2"}, "suppress"),
        ({"history": ["1"], "user_id": "1"}, "user_id"),
        ({"k": 3}, "history"),
    ],
)
def test_post_errors(client, body, field):
    r = client.post("/recommend", json=body)
    assert r.status_code == 422, r.text
    assert field in {d["loc"][-1] for d in r.json()["detail"]}, r.text


def test_malformed_json_and_unknown_query_on_post(client):
    r = client.post("/recommend", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422
    r = client.post("/recommend?debug=1", json={"history": ["1"]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "debug"]


# -- concepts -------------------------------------------------------------------------------------
def test_concepts_list_search_sort_and_detail(client, engine):
    n = engine.sae.n_latents
    body = client.get("/concepts", params={"limit": 5}).json()
    assert body["total"] == n and [c["latent"] for c in body["concepts"]] == [0, 1, 2, 3, 4]
    freq = client.get("/concepts", params={"sort": "-frequency", "limit": 20}).json()["concepts"]
    f = [c["firing_frequency"] for c in freq]
    assert f == sorted(f, reverse=True)
    dead = client.get("/concepts", params={"status": "dead", "limit": 1000}).json()
    assert all(c["status"] == "dead" for c in dead["concepts"])
    page = client.get("/concepts", params={"offset": n - 2, "limit": 10}).json()
    assert [c["latent"] for c in page["concepts"]] == [n - 2, n - 1]
    assert client.get("/concepts", params={"q": "zzzz-no-such-word"}).json()["total"] == 0
    detail = client.get("/concepts/3").json()
    assert detail["latent"] == 3 and "evidence" in detail
    assert client.get(f"/concepts/{n}").status_code == 404
    assert client.get("/concepts/-1").status_code == 422
    assert client.get("/concepts", params={"sort": "colour"}).status_code == 422
    assert client.get("/concepts", params={"limit": 0}).status_code == 422


# -- admin and policies ---------------------------------------------------------------------------
def test_admin_requires_the_bearer_token(client, svc):
    assert client.get("/admin/policies").status_code == 401
    r = client.get("/admin/policies", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert client.get("/admin/policies", headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
    assert client.put("/admin/policies/x", json={"latents": [1]}).status_code == 401
    assert client.get("/admin/policies", headers=AUTH).status_code == 200
    settings = svc.settings
    svc.settings = replace(settings, admin_token=None)
    try:
        r = client.get("/admin/policies", headers=AUTH)
        assert r.status_code == 503 and "admin disabled" in r.json()["detail"]
    finally:
        svc.settings = settings


def test_policy_lifecycle_application_and_audit(client, engine):
    uid = users(engine)[3]
    base = client.get("/recommend", params={"user_id": uid, "explain": True}).json()
    active = [a["latent"] for a in base["active_latents"]]
    r = client.put("/admin/policies/no-top2", json={"latents": active[:2], "strength": 1.0,
                                                    "description": "drop two"}, headers=AUTH)
    assert r.status_code == 200, r.text
    pol = r.json()
    assert pol["latents"] == sorted(active[:2]) and pol["updated_by"] == "pytest"
    assert client.get("/admin/policies/no-top2", headers=AUTH).json()["latents"] == sorted(active[:2])
    assert "no-top2" in [p["name"] for p in client.get("/admin/policies", headers=AUTH).json()["policies"]]

    via_policy = client.get("/recommend", params={"user_id": uid, "explain": True, "policy": "no-top2"}).json()
    via_request = client.get("/recommend", params={"user_id": uid, "explain": True,
                                                   "suppress": ",".join(map(str, active[:2]))}).json()
    assert via_policy["policy"] == "no-top2"
    assert [it["item_id"] for it in via_policy["items"]] == [it["item_id"] for it in via_request["items"]]
    assert {s["source"] for s in via_policy["suppressed"]} == {"policy:no-top2"}
    check_decomposition(via_policy)

    # half strength, reconstruction mode: the policy's mode applies unless the request names one
    client.put("/admin/policies/half", json={"latents": [active[0]], "strength": 0.5, "mode": "reconstruction"},
               headers=AUTH)
    half = client.get("/recommend", params={"user_id": uid, "explain": True, "policy": "half"}).json()
    assert half["mode"] == "reconstruction"
    assert next(a for a in half["active_latents"] if a["latent"] == active[0])["strength"] == 0.5
    ids, _ = offline(engine, uid, suppress={active[0]: 0.5}, mode="reconstruction")
    assert [it["item_id"] for it in half["items"]] == ids
    forced = client.get("/recommend", params={"user_id": uid, "policy": "half", "mode": "error"}).json()
    assert forced["mode"] == "error"

    # per-latent strengths: {latent, strength} entries keep theirs, plain ids get the policy's;
    # stored (Redis JSON, keys as strings) and applied as the offline kernel steers
    body = {"latents": [{"latent": active[0], "strength": 0.3}, active[1]], "strength": 0.8}
    r = client.put("/admin/policies/mixed", json=body, headers=AUTH)
    assert r.status_code == 200 and r.json()["strengths"] == {str(active[0]): 0.3}, r.text
    assert client.get("/admin/policies/mixed", headers=AUTH).json()["strengths"] == {str(active[0]): 0.3}
    mixed = client.get("/recommend", params={"user_id": uid, "explain": True, "k": 20, "policy": "mixed"}).json()
    got = {x["latent"]: x["strength"] for x in mixed["suppressed"]}
    assert got == {active[0]: 0.3, active[1]: 0.8}
    ids, scores = offline(engine, uid, k=20, suppress={active[0]: 0.3, active[1]: 0.8})
    assert [it["item_id"] for it in mixed["items"]] == ids
    assert [it["score"] for it in mixed["items"]] == pytest.approx(scores.tolist(), abs=1e-5)
    r = client.put("/admin/policies/mixed", json={"latents": [{"latent": active[0], "strength": 1.5}]}, headers=AUTH)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][:2] == ["body", "latents"]
    assert client.delete("/admin/policies/mixed", headers=AUTH).status_code == 204

    # the policy shows in the POST body form too
    r = client.post("/recommend", json={"history": ["1", "2"], "policy": "half"})
    assert r.status_code == 200 and r.json()["policy"] == "half"

    assert client.delete("/admin/policies/no-top2", headers=AUTH).status_code == 204
    assert client.delete("/admin/policies/no-top2", headers=AUTH).status_code == 404
    assert client.get("/admin/policies/no-top2", headers=AUTH).status_code == 404
    r = client.get("/recommend", params={"user_id": uid, "policy": "no-top2"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "policy"]

    audit = client.get("/admin/audit", headers=AUTH, params={"limit": 10}).json()["entries"]
    actions = [(e["action"], e["policy"]) for e in audit]
    assert actions[:5] == [("delete", "no-top2"), ("delete", "mixed"), ("put", "mixed"), ("put", "half"), ("put", "no-top2")]
    assert all(e["who"] == "pytest" for e in audit[:3])  # the X-Admin-Label, nothing derived from the token
    assert TOKEN not in str(audit)
    assert client.get("/admin/audit", headers=AUTH, params={"limit": 0}).status_code == 422


def test_policy_input_errors(client, engine):
    n = engine.sae.n_latents
    r = client.put("/admin/policies/p", json={"latents": [n]}, headers=AUTH)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "latents"]
    r = client.put("/admin/policies/p", json={"query": "zzzz-matches-nothing"}, headers=AUTH)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "query"]
    assert client.put("/admin/policies/p", json={}, headers=AUTH).status_code == 422
    assert client.put("/admin/policies/p", json={"latents": [1], "strength": 2}, headers=AUTH).status_code == 422
    assert client.put("/admin/policies/bad%20name", json={"latents": [1]}, headers=AUTH).status_code == 422


def test_policy_from_a_text_query(client, engine):
    described = [c for c in engine.bundle.concepts if c.get("status") == "described" and c.get("description")]
    if not described:
        pytest.skip("this bundle has no described concepts (describer 'none')")
    word = max(described[0]["description"].split(), key=len)
    r = client.put("/admin/policies/by-query", json={"query": word}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert described[0]["latent"] in r.json()["latents"]
    client.delete("/admin/policies/by-query", headers=AUTH)


# -- the concept cache in Redis -------------------------------------------------------------------
def test_concepts_are_cached_in_redis_per_bundle_hash(client, svc, engine, redis_prefix):
    import redis

    r = redis.Redis.from_url(SHARED_REDIS)
    uid = users(engine)[4]
    body = client.get("/recommend", params={"user_id": uid, "explain": True}).json()
    active = [a["latent"] for a in body["active_latents"]]
    keys = [f"{redis_prefix}:concept:{engine.bundle.bundle_hash}:{j}" for j in active]
    assert all(r.exists(k) for k in keys)
    assert 0 < r.ttl(keys[0]) <= svc.settings.concept_ttl_s
    # a cached (e.g. curated) entry is what the service answers with
    # (Redis reports the change to the service's tracker, which re-reads the key: give it 1 s)
    r.set(keys[0], b'{"latent": %d, "status": "described", "description": "cached text", "confidence": 0.9}'
          % active[0], ex=60)

    def served_a0() -> dict:
        body = client.get("/recommend", params={"user_id": uid, "explain": True}).json()
        return next(a for a in body["active_latents"] if a["latent"] == active[0])

    t0 = time.monotonic()
    while served_a0()["description"] != "cached text" and time.monotonic() - t0 < 1.0:
        time.sleep(0.01)
    a0 = served_a0()
    assert a0["description"] == "cached text" and a0["confidence"] == 0.9
    # a missing or corrupt entry is answered from the bundle and written back
    r.delete(keys[0])
    r.set(keys[1], b"{corrupt")
    t0 = time.monotonic()
    while not (r.exists(keys[0]) and r.get(keys[1]) != b"{corrupt") and time.monotonic() - t0 < 1.0:
        time.sleep(0.01)
    assert served_a0()["description"] == engine.bundle.concepts[active[0]]["description"]
    assert r.exists(keys[0]) and r.get(keys[1]) != b"{corrupt"


def test_a_new_bundle_hash_never_reads_old_entries(svc, redis_prefix):
    from recsae.concepts import Concept
    from service.concepts import ConceptStore

    c = [Concept(latent=0, status="undescribed")]
    old = ConceptStore(c, "oldhash", svc.core.link, redis_prefix, 60)
    new = ConceptStore(c, "newhash", svc.core.link, redis_prefix, 60)
    svc.core.link.client.set(old.key(0), b'{"latent": 0, "status": "described", "description": "old bundle"}')
    assert old.fetch([0])[0].description == "old bundle"
    assert new.fetch([0])[0].description is None
    assert new.key(0) != old.key(0) and "newhash" in new.key(0)


# -- metrics --------------------------------------------------------------------------------------
def test_metrics(client, engine):
    for uid in users(engine, 3):
        client.get("/recommend", params={"user_id": uid, "explain": True, "suppress": "1"})
    text = client.get("/metrics").text
    assert 'recsae_request_latency_seconds_bucket{explain="true",le="0.005",route="GET /recommend"}' in text
    assert re.search(r'recsae_recommendations_served_total\{source="user"\} \d', text)
    assert re.search(r'recsae_concept_cache_hits_total\{backend="redis"\} \d', text)
    assert re.search(r'recsae_suppression_requests_total\{policy="adhoc"\} \d', text)
    client.get("/recommend", params={"user_id": users(engine, 1)[0], "suppress_baseline": 0.2})
    text = client.get("/metrics").text
    assert re.search(r'recsae_baseline_suppression_requests_total\{policy="adhoc"\} [1-9]', text)
    assert re.search(r"^recsae_concept_drift_jsd \d", text, re.M)
    assert re.search(r"^recsae_concept_drift_psi \d", text, re.M)
    rates = re.findall(r'^recsae_concept_firing_rate\{kind="(live|reference)",latent="(\d+)"\}', text, re.M)
    assert 0 < len(rates) <= 2 * 2 * 10 and len({j for _, j in rates}) == len(rates) // 2  # top 10 by PSI and by strength
    # how strongly each listed concept is present: the reference's and, where it fired, the live mean
    acts = dict(((k, int(j)), float(v)) for k, j, v in re.findall(
        r'^recsae_concept_mean_activation\{kind="(live|reference)",latent="(\d+)"\} (\S+)', text, re.M))
    listed = {int(j) for _, j in rates}
    assert {j for k, j in acts if k == "reference"} <= listed and any(k == "live" for k, _ in acts)
    for (kind, j), v in acts.items():
        if kind == "reference":
            assert v == pytest.approx(float(engine.bundle.mean_activation[j]), rel=1e-5)
        assert v > 0


def test_drift_by_strength(client, engine):
    """``/drift?sort=strength`` lists the concepts whose mean activation moved most against the
    bundle's reference, with the figures that rank them."""
    for uid in users(engine, 12):
        client.get("/recommend", params={"user_id": uid})
    d = client.get("/drift", params={"top": 20, "sort": "strength"}).json()
    shifts = [x["strength_shift"] for x in d["latents"]]
    assert d["latents"] and shifts == sorted(shifts, reverse=True) and shifts[0] > 0
    for x in d["latents"]:
        ref = float(engine.bundle.mean_activation[x["latent"]])
        assert x["reference_mean_activation"] == pytest.approx(ref, rel=1e-5)
        expected = abs(np.log(x["live_mean_activation"] / ref)) * x["live_rate"]
        assert x["strength_shift"] == pytest.approx(expected, rel=1e-3, abs=1e-5)
    by_psi = client.get("/drift", params={"top": 20}).json()["latents"]
    terms = [x["psi_term"] for x in by_psi]
    assert terms == sorted(terms, reverse=True)
    r = client.get("/drift", params={"sort": "size"})
    assert r.status_code == 422 and ["query", "sort"] in [e["loc"] for e in r.json()["detail"]]


# -- no 500 for any client input ------------------------------------------------------------------
def test_fuzzed_requests_never_get_a_500(client):
    import json

    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from schemathesis import GenerationMode

    from service.openapi import PATH

    schema = schemathesis.openapi.from_dict(json.loads(PATH.read_text()))
    ops = [op.ok() for op in schema.get_all_operations()]
    strategies = [op.as_strategy(generation_mode=m) for op in ops for m in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)]

    @settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.one_of(strategies), st.booleans())
    def run(case, with_token):
        kw = case.as_transport_kwargs(base_url="http://testserver")
        if with_token:
            kw["headers"] = {**kw.get("headers", {}), **AUTH}
        kw.pop("cookies", None)
        # a header value beyond ASCII (negative mode makes them): sent as its UTF-8 bytes, as a
        # raw HTTP client can (httpx refuses to encode such a str itself)
        kw["headers"] = {k: v.encode() if isinstance(v, str) and not v.isascii() else v
                         for k, v in (kw.get("headers") or {}).items()}
        r = client.request(**kw)
        assert r.status_code < 500, (kw, r.status_code, r.text[:500])

    run()


def test_a_policy_stored_for_another_bundle_does_not_apply_its_latent_ids(client, svc, engine, redis_prefix):
    """Latent ids differ between SAEs: during a rolling upgrade only a policy's query carries over."""
    import json
    import time

    uid = users(engine)[5]
    active = [a["latent"] for a in client.get("/recommend", params={"user_id": uid, "explain": True}).json()["active_latents"]]
    foreign = {"name": "foreign", "latents": active[:2], "explicit": active[:2], "query": None,
               "bundle_hash": "0" * 64, "strength": 1.0, "strengths": {str(active[0]): 0.5}, "mode": "error",
               "description": None,
               "created_at": time.time(), "updated_at": time.time(), "updated_by": "other-replica"}
    svc.core.link.client.hset(f"{redis_prefix}:policies", "foreign", json.dumps(foreign))
    t0 = time.monotonic()  # Redis reports the change; the service re-reads the policies
    while svc.core.policies.current("foreign") is None and time.monotonic() - t0 < 1.0:
        time.sleep(0.01)
    try:
        body = client.get("/recommend", params={"user_id": uid, "explain": True, "policy": "foreign"}).json()
        assert body["policy"] == "foreign" and body["suppressed"] == []
        plain = client.get("/recommend", params={"user_id": uid}).json()
        assert [i["item_id"] for i in body["items"]] == [i["item_id"] for i in plain["items"]]
    finally:
        svc.core.link.client.hdel(f"{redis_prefix}:policies", "foreign")



def test_a_saved_debias_policy_serves_exactly_the_lists_the_report_measured(client, engine, bundle):
    """``recsae debias``'s saved policy, PUT as written (minus its name), makes the service answer
    each test-stage history with the very top-10 list the de-bias report evaluated: the report's
    head share is what users of the service get."""
    from recsae import debias as D

    data = D.load_data(bundle)
    result = D.run_experiment(data, "popularity", counts=(1, 4), strengths=(1.0,), seeds=1,
                              methods=("association", "baseline"), baseline_strengths=(0.4,))
    point = D.choose_policy(result, ("association", "baseline"), max_ndcg_loss=0.5)
    doc = D.policy_document("debias-e2e", point, result)
    assert doc["latents"] or doc["baseline"]
    r = client.put("/admin/policies/debias-e2e", json={k: v for k, v in doc.items() if k != "name"}, headers=AUTH)
    assert r.status_code == 200, r.text
    try:
        st = data.test
        offline, _ = D.steered_lists(data, st, doc["latents"], doc["strength"], doc["mode"], doc["baseline"])
        plain, _ = D.steered_lists(data, st, [], 1.0)
        cat = engine.bundle.catalog.item_ids
        rows = [i for i in range(len(st.users)) if 0 < len(st.exclude[i]) <= 200][::15]  # POST takes <= 200 items
        assert len(rows) >= 40
        served = []
        for i in rows:
            body = {"history": [cat[j] for j in st.exclude[i]], "k": data.top_k, "policy": "debias-e2e"}
            got = client.post("/recommend", json=body)
            assert got.status_code == 200, got.text
            served.append([engine.bundle.catalog.index_of(x["item_id"]) for x in got.json()["items"]])
        served = np.asarray(served)
        assert np.array_equal(served, offline[rows])  # the same items in the same order, user by user
        measure = data.measure("popularity")
        assert measure.per_user(served).mean() == pytest.approx(measure.per_user(offline[rows]).mean())
        assert not np.array_equal(served, plain[rows])  # and the policy did change the lists
    finally:
        client.delete("/admin/policies/debias-e2e", headers=AUTH)


def test_the_example_requests_printed_at_start_show_an_effect_on_this_bundle(client, svc):
    """The "try: curl ..." lines (printed when `bentoml serve` starts) are picked from the loaded
    bundle: the explained request names active latents, suppressing the two it prints changes
    the list, and the concept query finds concepts. The README's fixed ml-100k ids did none of
    that on the synthetic default."""
    from urllib.parse import urlsplit

    lines = svc.core.examples("http://127.0.0.1:3000")
    urls = [urlsplit(line.split("'")[1]) for line in lines]
    assert [u.path for u in urls] == ["/recommend", "/recommend", "/concepts"], lines
    assert all(line.startswith("curl 'http://127.0.0.1:3000/") for line in lines)
    explained, suppressed, concepts = (client.get(f"{u.path}?{u.query}") for u in urls)
    assert explained.status_code == suppressed.status_code == concepts.status_code == 200
    assert explained.json()["active_latents"]
    named = {s["latent"] for s in suppressed.json()["suppressed"]}
    assert len(named) == 2 and named <= {a["latent"] for a in explained.json()["active_latents"]}
    assert [i["item_id"] for i in suppressed.json()["items"]] != [i["item_id"] for i in explained.json()["items"]]
    assert concepts.json()["total"] > 0


def test_explain_top_lists_the_largest_contributions_and_sums_the_rest(client, engine):
    """explain_top=N: each item lists its N largest contributions, those of the full explanation,
    and `other` holds the rest, so bias + contributions + other + error is still the score."""
    uid = users(engine)[1]
    full = client.get("/recommend", params={"user_id": uid, "k": 5, "explain": True}).json()
    top2 = client.get("/recommend", params={"user_id": uid, "k": 5, "explain": True, "explain_top": 2}).json()
    assert top2["active_latents"] == full["active_latents"] and len(full["active_latents"]) > 2
    for a, b in zip(full["items"], top2["items"]):
        ea, eb = a["explanation"], b["explanation"]
        assert ea["other"] == 0.0 and eb["contributions"] == ea["contributions"][:2]
        assert eb["other"] == pytest.approx(sum(c["contribution"] for c in ea["contributions"][2:]), abs=2e-6)
        total = eb["bias"] + eb["error"] + eb["other"] + sum(c["contribution"] for c in eb["contributions"])
        assert total == pytest.approx(b["score"], abs=1e-4)
    if engine.accepts_history:
        hist = list(engine.bundle.catalog.item_ids[10:14])
        r = client.post("/recommend", json={"history": hist, "explain": True, "explain_top": 1})
        assert r.status_code == 200 and all(len(it["explanation"]["contributions"]) == 1 for it in r.json()["items"])
        r = client.post("/recommend", json={"history": hist, "explain": True, "explain_top": True})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "explain_top"]
    blank = client.get("/recommend", params={"user_id": uid, "k": 5, "explain": True, "explain_top": ""}).json()
    assert blank == full  # an empty value: no limit, as other optional query parameters read it
    for bad in ("0", "-1", "x", "1025", "true", "1.5"):
        r = client.get("/recommend", params={"user_id": uid, "explain": True, "explain_top": bad})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "explain_top"], (bad, r.text)
