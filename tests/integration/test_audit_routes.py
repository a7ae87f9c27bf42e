"""The audit page's own routes against ``bentoml serve`` on the synthetic bundle (no Redis):
history attribution against the encoder itself, the concept page's data against the bundle,
title search, segments, the drift verdict, and auditors' requests kept out of drift.

A served process, not the in-process TestClient: BentoML's ASGI app runs one lifespan per
process, and tests/integration/test_service_inprocess.py already holds it."""

from __future__ import annotations

import json
import re
import uuid

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.devserver import Client, ServeProcess

TOKEN = "audit-routes-" + uuid.uuid4().hex[:10]
AUTH = {"Authorization": f"Bearer {TOKEN}"}
pytestmark = pytest.mark.e2e


class _Answer:
    def __init__(self, status: int, body):
        self.status_code, self._body = status, body
        self.text = body if isinstance(body, str) else json.dumps(body)

    def json(self):
        return self._body


class _Http:
    """requests-like calls over tests.devserver.Client (one keep-alive connection)."""

    def __init__(self, port: int):
        self.c = Client(port, timeout=30)

    def _do(self, method, path, params=None, json=None, headers=None):
        return _Answer(*self.c.request(method, path, params, json, headers))

    def get(self, path, params=None, headers=None):
        return self._do("GET", path, params, None, headers)

    def post(self, path, json=None, headers=None):
        return self._do("POST", path, None, json, headers)

    def put(self, path, json=None, headers=None):
        return self._do("PUT", path, None, json, headers)

    def delete(self, path, headers=None):
        return self._do("DELETE", path, None, None, headers)


@pytest.fixture(scope="module")
def client(bundle, tmp_path_factory):
    env = {"RECSAE_BUNDLE": str(bundle), "REDIS_URL": "", "RECSAE_ADMIN_TOKEN": TOKEN,
           "RECSAE_STATE_DIR": str(tmp_path_factory.mktemp("state")), "RECSAE_AUDIT_SAMPLE": "0"}
    with ServeProcess(env, log_dir=str(tmp_path_factory.mktemp("log"))).start(300) as proc:
        http = _Http(proc.port)
        yield http
        http.c.close()


def _act(engine, history: np.ndarray, latent: int) -> float:
    codes = engine.sae.encode(engine.encode_histories([history]))
    hit = codes.idx[0] == latent
    return float(codes.acts[0][hit].sum())


def test_history_is_newest_first_and_attribution_is_leave_one_out(client, engine):
    r = client.get("/audit/history", params={"user_id": "1", "top": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    u = engine.bundle.users.index_of("1")
    hist = engine.bundle.users.history(u)
    ids = engine.bundle.catalog.item_ids
    assert [it["item_id"] for it in body["items"]] == [ids[i] for i in hist[::-1]]  # newest first
    assert body["method"] == "leave-one-out" and body["window"] == min(len(hist), engine.max_len)
    assert sum(it["in_window"] for it in body["items"]) == body["window"]
    assert body["items"][0]["in_window"] and body["seconds"] >= 0
    rec = client.get("/recommend", params={"user_id": "1", "k": 5, "explain": "true"}).json()
    assert [c["latent"] for c in body["concepts"]] == [a["latent"] for a in sorted(
        rec["active_latents"], key=lambda a: -a["activation"])]
    checked = 0
    for c in body["concepts"]:
        assert len(c["attributions"]) == len(hist)
        assert all(v == 0 for v, it in zip(c["attributions"], body["items"][::-1]) if not it["in_window"])
        for t in c["top"]:  # recompute: the activation with the item minus without it
            without = _act(engine, np.delete(hist, t["position"]), c["latent"])
            assert t["attribution"] == pytest.approx(c["activation"] - without, abs=1e-4)
            assert t["attribution"] > 0 and ids[hist[t["position"]]] == t["item_id"]
            checked += 1
        tops = [t["attribution"] for t in c["top"]]
        assert tops == sorted(tops, reverse=True)
    assert checked > 0


def test_history_post_and_errors(client, engine):
    ids = engine.bundle.catalog.item_ids
    r = client.post("/audit/history", json={"history": [ids[3], ids[7], ids[11]]})
    assert r.status_code == 200, r.text
    assert [it["item_id"] for it in r.json()["items"]] == [ids[11], ids[7], ids[3]]
    bad = client.post("/audit/history", json={"history": [ids[3], "no-such-item"]})
    assert bad.status_code == 422 and "no-such-item" in bad.text
    assert client.get("/audit/history", params={"user_id": "nobody"}).status_code == 404
    assert client.get("/audit/history").status_code == 422
    assert client.get("/audit/history", params={"user_id": "1", "top": 0}).status_code == 422


def test_title_search(client, engine):
    titles = engine.bundle.catalog.titles
    word = titles[5].split()[0]
    r = client.get("/audit/items", params={"q": word.lower(), "limit": 50})
    assert r.status_code == 200
    got = [it["title"] for it in r.json()["items"]]
    assert got and all(word.lower() in t.lower() for t in got)
    want = [t for t in titles if word.lower() in t.lower()][:50]
    assert got == want
    exact = client.get("/audit/items", params={"q": engine.bundle.catalog.item_ids[9]}).json()["items"]
    assert exact[0]["item_id"] == engine.bundle.catalog.item_ids[9]
    assert client.get("/audit/items").status_code == 422


def test_concept_detail_matches_the_bundle(client, engine):
    rec = client.get("/recommend", params={"user_id": "1", "k": 5, "explain": "true"}).json()
    j = rec["active_latents"][0]["latent"]
    r = client.get(f"/audit/concepts/{j}/detail")
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["concept"] == client.get(f"/concepts/{j}").json()
    w = engine.item_emb @ engine.sae.W_dec[j]
    up = [engine.bundle.catalog.item_ids[i] for i in np.argsort(-w, kind="stable")[:10]]
    assert [x["item_id"] for x in d["pushes_up"]] == up
    assert d["pushes_up"][0]["weight"] == pytest.approx(float(w.max()), abs=1e-5)
    assert d["pushes_down"][0]["weight"] == pytest.approx(float(w.min()), abs=1e-5)
    assert d["reference_rate"] == pytest.approx(float(engine.bundle.firing_frequency[j]), abs=1e-6)
    assert sum(d["user_histogram"]) == d["users_firing"] > 0
    assert d["users_total"] == len(engine.bundle.users.user_ids)
    acts = [u["activation"] for u in d["top_users"]]
    assert acts == sorted(acts, reverse=True) and acts[0] == pytest.approx(d["user_histogram_max"])
    # user 1's activation is what /recommend reports for it
    top_user = d["top_users"][0]["user_id"]
    mine = client.get("/recommend", params={"user_id": top_user, "k": 1, "explain": "true"}).json()
    assert next(a["activation"] for a in mine["active_latents"] if a["latent"] == j) == pytest.approx(acts[0], abs=1e-5)
    page = client.get(f"/audit/concepts/{j}")
    assert page.status_code == 200 and "concept.js" in page.text
    assert client.get("/audit/concepts/99999/detail").status_code == 404
    assert client.get("/audit/concepts/x1/detail").status_code == 422


def test_concept_detail_lists_the_policies_that_suppress_it(client):
    j = client.get("/recommend", params={"user_id": "2", "k": 5, "explain": "true"}).json()["active_latents"][0]["latent"]
    assert client.put("/admin/policies/audit-detail", json={"latents": [j], "strength": 0.7}, headers=AUTH).status_code == 200
    try:
        pols = client.get(f"/audit/concepts/{j}/detail").json()["policies"]
        assert {"name": "audit-detail", "strength": 0.7, "description": None} in pols
        other = client.get(f"/audit/concepts/{(j + 1) % 8}/detail").json()["policies"]
        assert "audit-detail" not in [p["name"] for p in other] or (j + 1) % 8 == j
    finally:
        client.delete("/admin/policies/audit-detail", headers=AUTH)


def test_audit_requests_stay_out_of_drift_and_drift_has_a_verdict(client):
    before = client.get("/drift").json()["window_requests"]
    for _ in range(3):
        assert client.get("/recommend", params={"user_id": "5", "k": 3}, headers={"X-RecSAE-Audit": "1"}).status_code == 200
    assert client.get("/drift").json()["window_requests"] == before  # an auditor's looks are not live traffic
    assert client.get("/recommend", params={"user_id": "5", "k": 3}).status_code == 200
    d = client.get("/drift").json()
    assert d["window_requests"] == before + 1
    if d["window_requests"] < d["min_window"]:
        assert d["verdict"] == "not-enough-traffic" and str(d["min_window"]) in d["verdict_text"]
    for _ in range(d["min_window"]):
        client.get("/recommend", params={"user_id": "5", "k": 3})  # one user over and over: drifted
    d = client.get("/drift").json()
    assert d["window_requests"] >= d["min_window"] and d["verdict"] == "drifting"
    assert d["psi"] > d["psi_drift"] > d["psi_watch"] > d["psi_noise"] >= 0


def test_dictionary_search_is_by_whole_words_and_sort_puts_few_samples_last(client, engine):
    from service.concepts import searchable_text
    from recsae.concepts import Concept

    concepts = [Concept.model_validate(c) for c in json.loads((engine.bundle.path / "concepts.json").read_text())["concepts"]]
    whole = re.compile(r"(?<![a-z0-9])populars?(?![a-z0-9])")
    r = client.get("/concepts", params={"q": "popular", "limit": 1000}).json()
    want = sorted(c.latent for c in concepts if whole.search(searchable_text(c)))
    if want:  # whole words only: "mid-popularity" is not "popular"
        assert sorted(c["latent"] for c in r["concepts"]) == want
    assert sum("popularity" in searchable_text(c) for c in concepts) > len(want)
    assert client.get("/concepts", params={"q": "myster", "limit": 5}).json()["total"] > 0  # partial words still find
    ranked = client.get("/concepts", params={"sort": "-confidence", "limit": 1000}).json()["concepts"]
    few = [c["n_positive"] is not None and c["n_positive"] < 20 for c in ranked if c["confidence"] is not None]
    assert few == sorted(few)  # every well-checked concept before any checked on few samples


def test_segments_compare_firing_between_groups(client, engine):
    users = [str(u) for u in engine.bundle.users.user_ids]
    a_ids, b_ids = users[:40], users[40:100]
    r = client.post("/audit/segments", json={"a": {"user_ids": a_ids + ["nobody"]}, "b": {"user_ids": b_ids}, "top": 1000})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["a"]["n"] == 40 and body["a"]["unknown"] == ["nobody"] and body["b"]["n"] == 60
    codes = engine.sae.encode(engine.encode_users(np.arange(len(users))))
    fires = np.zeros((len(users), engine.sae.n_latents), bool)
    for u in range(len(users)):
        fires[u, codes.idx[u][codes.acts[u] > 0]] = True
    rate_a, rate_b = fires[:40].mean(0), fires[40:100].mean(0)
    got = {c["latent"]: c for c in body["concepts"]}
    assert len(got) == engine.sae.n_latents
    for j in range(engine.sae.n_latents):
        assert got[j]["rate_a"] == pytest.approx(rate_a[j], abs=1e-6) and got[j]["rate_b"] == pytest.approx(rate_b[j], abs=1e-6)
    diffs = [abs(c["difference"]) for c in body["concepts"]]
    assert diffs == sorted(diffs, reverse=True)
    # by history: users whose history is at least 50% one genre, against everyone else
    feats = client.get("/audit/features").json()["features"]
    genre = next(f for f in feats if f.startswith("genre:"))
    r = client.post("/audit/segments", json={"a": {"feature": genre, "min_share": 0.5}, "top": 5}).json()
    cat = engine.bundle.catalog
    has = np.array([cat.feature_names.index(genre) in fs for fs in cat.item_features])
    want = sum(has[engine.bundle.users.history(u)].mean() >= 0.5 for u in range(len(users)))
    assert r["a"]["n"] == want and r["b"]["n"] == len(users) - want and r["b"]["label"] == "everyone else"
    assert len(r["concepts"]) == 5
    bad = client.post("/audit/segments", json={"a": {"feature": "genre:nope"}})
    assert bad.status_code == 422 and "genre:nope" in bad.text
    assert client.post("/audit/segments", json={"a": {}}).status_code == 422
    assert client.post("/audit/segments", json={"a": {"user_ids": ["nobody"]}}).status_code == 422


def test_user_id_models_get_encoder_alignment_and_say_so():
    """BPR-MF's user vector is a learned embedding: removing an item changes nothing, so the
    attribution is the alignment of each history item with the concept's encoder direction,
    scaled so a concept's positive parts add up to its activation, and named as such."""
    from recsae.engine import Engine
    from service.attribution import ALIGN, attribute
    from tests.conftest import build_synthetic_bundle

    engine = Engine.from_path(str(build_synthetic_bundle(name="synthetic-bprmf", model="bprmf", describer="none")))
    assert engine.input_kind == "user"
    checked = 0
    for u in range(0, 60, 6):
        hist = engine.bundle.users.history(u)
        res = attribute(engine, hist, u)
        assert res["method"] == ALIGN and res["in_window"].all()
        x = engine.encode_users(np.array([u]))
        codes = engine.sae.encode(x)
        assert sorted(res["latents"].tolist()) == sorted(codes.idx[0][codes.acts[0] > 0].tolist())
        for c, j in enumerate(res["latents"].tolist()):
            col = res["attr"][:, c]
            align = engine.item_emb[hist].astype(np.float64) @ engine.sae.W_enc[j].astype(np.float64)
            if (align > 0).any():
                assert col[col > 0].sum() == pytest.approx(res["activations"][c], rel=1e-6)
                assert np.array_equal(np.argsort(-col, kind="stable"), np.argsort(-align, kind="stable"))
                checked += 1
    assert checked > 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(st.sampled_from("abcAB ßSsé\nÉ1"), max_size=12), max_size=30),
       st.text(st.sampled_from("abcAB ßSsé\nÉ1"), max_size=6), st.integers(1, 5), st.none() | st.integers(0, 29))
def test_title_search_finds_what_a_scan_of_every_title_finds(titles, q, limit, skip):
    """``TitleSearch`` (one casefolded text, ``str.find``) against the plain scan it replaced:
    the first ``limit`` titles in catalogue order holding every casefolded word of ``q``."""
    from service.audit_routes import TitleSearch

    words = q.casefold().split()
    want = [i for i, t in enumerate(titles) if i != skip and all(w in t.casefold() for w in words)][:limit]
    assert TitleSearch(titles).find(q, limit, skip=skip) == want
