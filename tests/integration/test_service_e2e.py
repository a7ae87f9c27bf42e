"""End to end over real HTTP: two ``bentoml serve`` processes share the Redis on 6379 (under a
private key prefix); answers are checked against an offline computation on the same bundle."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from tests.devserver import REPO, Client, ServeProcess
from tests.conftest import serving_bundle

pytestmark = pytest.mark.e2e

SHARED_REDIS = "redis://127.0.0.1:6379/0"
DESCRIBER = os.environ.get("RECSAE_TEST_DESCRIBER", "stats")
TOKEN = "e2e-token-" + uuid.uuid4().hex[:8]
AUTH = {"Authorization": f"Bearer {TOKEN}", "X-Admin-Label": "e2e"}


@pytest.fixture(scope="module")
def bundle() -> Path:
    return serving_bundle(DESCRIBER)


@pytest.fixture(scope="module")
def prefix():
    import redis

    r = redis.Redis.from_url(SHARED_REDIS, socket_timeout=2)
    try:
        r.ping()
    except redis.RedisError as e:
        pytest.skip(f"no Redis at {SHARED_REDIS}: {e}")
    p = f"test-e2e-{uuid.uuid4().hex[:10]}"
    yield p
    keys = list(r.scan_iter(match=f"{p}:*", count=1000))
    if keys:
        r.delete(*keys)


@pytest.fixture(scope="module")
def servers(bundle, prefix, tmp_path_factory):
    """Replicas A and B: same bundle, same Redis and prefix, separate state directories."""
    procs = []
    for name in ("a", "b"):
        env = {
            "RECSAE_BUNDLE": str(bundle),
            "REDIS_URL": SHARED_REDIS,
            "RECSAE_REDIS_PREFIX": prefix,
            "RECSAE_ADMIN_TOKEN": TOKEN,
            "RECSAE_STATE_DIR": str(tmp_path_factory.mktemp(f"state-{name}")),
            "RECSAE_ACCESS_LOG": "1" if name == "a" else "0",  # B: no access log (its own test)
        }
        procs.append(ServeProcess(env, log_dir=str(tmp_path_factory.mktemp(f"log-{name}"))).launch())
    try:
        for p in procs:
            p.wait_ready(300)
        yield procs
    finally:
        for p in procs:
            p.stop()


@pytest.fixture(scope="module")
def a(servers):
    c = Client(servers[0].port)
    yield c
    c.close()


@pytest.fixture(scope="module")
def b(servers):
    c = Client(servers[1].port)
    yield c
    c.close()


@pytest.fixture(scope="module")
def offline(bundle):
    """Top-k straight from the bundle: ONNX Runtime encoder + NumPy scores (no service code)."""
    import onnxruntime as ort

    from recsae.bundle import load_bundle
    from recsae.kernel import history_windows

    bnd = load_bundle(bundle)
    sess = ort.InferenceSession(str(bnd.encoder_path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    max_len, n_items = bnd.model["max_len"], bnd.model["n_items"]

    def top(user_id: str, k: int = 10):
        u = bnd.users.index_of(user_id)
        seen = bnd.users.history(u)
        x = sess.run(None, {name: history_windows([seen], max_len, n_items)})[0]
        scores = (x @ bnd.item_emb.T)[0]
        scores[seen] = -np.inf
        order = np.lexsort((np.arange(n_items), -scores))[:k]
        return [bnd.catalog.item_ids[i] for i in order], scores[order]

    top.bundle = bnd
    return top


def get(c, **params):
    status, body = c.request("GET", "/recommend", params)
    assert status == 200, body
    return body


def sums_ok(body, tol=1e-4):
    for it in body["items"]:
        e = it["explanation"]
        assert e["bias"] + e["error"] + sum(x["contribution"] for x in e["contributions"]) == pytest.approx(
            it["score"], abs=tol
        )


def test_recommendations_equal_the_offline_top_k(a, b, offline):
    ids = offline.bundle.users.user_ids
    for uid in [str(ids[i]) for i in range(0, len(ids), 97)]:
        want_ids, want_scores = offline(uid)
        for c in (a, b):
            body = get(c, user_id=uid, k=10)
            assert [it["item_id"] for it in body["items"]] == want_ids
            assert [it["score"] for it in body["items"]] == pytest.approx(want_scores.tolist(), abs=1e-4)


def test_explanations_sum_to_the_scores(a, offline):
    for uid in ("1", "200", "600"):  # the first, a middle and the last user
        body = get(a, user_id=uid, explain="true", k=10)
        assert body["active_latents"]
        sums_ok(body)
        assert [it["item_id"] for it in body["items"]] == offline(uid)[0]


def test_suppression_moves_the_ranking_in_the_expected_direction(a):
    before = get(a, user_id="42", explain="true", k=30)
    # the active latent with the largest positive contribution to the top item
    top = before["items"][0]["explanation"]["contributions"][0]
    j = top["latent"]
    assert top["contribution"] > 0
    contrib = {
        it["item_id"]: next(c["contribution"] for c in it["explanation"]["contributions"] if c["latent"] == j)
        for it in before["items"]
    }
    after = get(a, user_id="42", explain="true", k=30, suppress=str(j))
    sums_ok(after)
    assert j in [s["latent"] for s in after["suppressed"]]
    assert all(
        c["contribution"] == 0 for it in after["items"] for c in it["explanation"]["contributions"] if c["latent"] == j
    )
    old = {it["item_id"]: it["score"] for it in before["items"]}
    new = {it["item_id"]: it["score"] for it in after["items"]}
    for i in set(old) & set(new):
        assert new[i] == pytest.approx(old[i] - contrib[i], abs=1e-4)
        if contrib[i] > 1e-6:
            assert new[i] < old[i]
    # the item the concept helped most ranks no better than before
    most = max(contrib, key=contrib.get)
    rank = lambda body, i: next((it["rank"] for it in body["items"] if it["item_id"] == i), 10**6)  # noqa: E731
    assert rank(after, most) >= rank(before, most)


def test_a_policy_set_on_one_replica_applies_on_the_other(a, b):
    base = get(b, user_id="7", explain="true")
    active = [x["latent"] for x in base["active_latents"]][:3]
    status, body = a.request("PUT", "/admin/policies/e2e-quiet", body={"latents": active, "strength": 1.0},
                             headers=AUTH)
    assert status == 200, body
    on_b = get(b, user_id="7", explain="true", policy="e2e-quiet")  # immediately, on the other process
    assert on_b["policy"] == "e2e-quiet"
    assert {s["latent"] for s in on_b["suppressed"]} == set(active)
    assert all(x["suppressed"] for x in on_b["active_latents"] if x["latent"] in active)
    sums_ok(on_b)
    same = get(b, user_id="7", suppress=",".join(map(str, active)))
    assert [it["item_id"] for it in on_b["items"]] == [it["item_id"] for it in same["items"]]

    status, listed = b.request("GET", "/admin/policies", headers=AUTH)
    assert status == 200 and "e2e-quiet" in [p["name"] for p in listed["policies"]]
    status, audit = b.request("GET", "/admin/audit", {"limit": 5}, headers=AUTH)
    assert audit["entries"][0]["policy"] == "e2e-quiet" and audit["entries"][0]["who"] == "e2e"

    assert b.request("DELETE", "/admin/policies/e2e-quiet", headers=AUTH)[0] == 204
    status, body = a.request("GET", "/recommend", {"user_id": "7", "policy": "e2e-quiet"})
    assert status == 422 and body["detail"][0]["loc"] == ["query", "policy"]


def test_history_errors_metrics_and_openapi_over_http(a, offline):
    cat = offline.bundle.catalog
    status, body = a.request("POST", "/recommend", body={"history": cat.item_ids[10:15], "k": 3, "explain": True})
    assert status == 200 and len(body["items"]) == 3
    sums_ok(body)
    assert a.request("GET", "/recommend", {"user_id": "nobody"})[0] == 404
    status, body = a.request("GET", "/recommend", {"user_id": "1", "k": 500})
    assert status == 422 and body["detail"][0]["loc"] == ["query", "k"]
    assert a.request("POST", "/recommend", body={"history": ["1"] * 300})[0] == 422
    assert a.request("GET", "/admin/policies")[0] == 401
    text = a.request("GET", "/metrics")[1]
    for name in ("recsae_request_latency_seconds_bucket", "recsae_recommendations_served_total",
                 "recsae_concept_drift_jsd", "recsae_concept_drift_psi", "recsae_concept_firing_rate",
                 "recsae_concept_cache_hits_total"):
        assert name in text, name
    served = a.request("GET", "/openapi.json")[1]
    committed = json.loads((REPO / "service" / "openapi.json").read_text())
    assert served == committed


def test_a_bad_bundle_refuses_to_start_with_one_message(bundle, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    with open(broken / "catalog.json", "a") as f:
        f.write(" ")
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True", "RECSAE_BUNDLE": str(broken),
           "RECSAE_STATE_DIR": str(tmp_path / "state")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    bentoml = str(Path(sys.executable).with_name("bentoml"))
    out = subprocess.run(
        [bentoml, "serve", "service.service:RecSAEService", "--port", "0", "--host", "127.0.0.1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 3, out.stderr[-2000:]
    lines = [ln for ln in (out.stdout + out.stderr).splitlines() if "cannot start" in ln]
    assert len(lines) == 1 and "catalog.json does not match its manifest hash" in lines[0]
    assert "Traceback" not in out.stderr


def test_bentoml_build_packages_serve_time_code_only(tmp_path):
    """`bentoml build` works offline and the Bento holds every module the service imports,
    and nothing that needs torch. (The compiled hot path, ``service._hotpath``, is not in it: a
    Bento is built from source and its image has no compiler; it computes the same in NumPy and
    Python.)"""
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True", "BENTOML_HOME": str(tmp_path / "home"),
           "PATH": venv_bin + os.pathsep + os.environ.get("PATH", "")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    out = subprocess.run([str(Path(venv_bin) / "bentoml"), "build", "."], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    (bento,) = (tmp_path / "home" / "bentos" / "recsae").glob("*/")
    reqs = (bento / "env" / "python" / "requirements.txt").read_text()
    assert "onnxruntime" in reqs and "torch" not in reqs
    src = bento / "src"
    assert not (src / "recsae" / "sae.py").exists() and not (src / "models").exists()
    code = ("import sys, service.service\n"
            "mods = [m for m in sys.modules if m.split('.')[0] in ('recsae', 'service')]\n"
            "outside = [m for m in mods if not (sys.modules[m].__file__ or '').startswith(sys.argv[1])\n"
            "           and m != 'service._hotpath']\n"
            "print('torch' in sys.modules, outside)\n")
    res = subprocess.run([sys.executable, "-c", code, str(src)], cwd=src, env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "False []", res.stdout


def test_the_service_serves_the_bundles_atlas_linked_from_the_audit_page(a, bundle):
    """#20 item 7: the atlas is reachable from the service (and the audit page links to it); its
    cards link to the concept pages the service serves."""
    status, page = a.request("GET", "/audit", parse=False)
    assert status == 200 and b'href="/audit/atlas"' in page
    status, html = a.request("GET", "/audit/atlas", parse=False)
    assert status == 200, html[:300]
    assert html == (bundle / "atlas.html").read_bytes()
    latent = int(re.search(rb'href="/audit/concepts/(\d+)"', html).group(1))
    status, concept = a.request("GET", f"/audit/concepts/{latent}", parse=False)
    assert status == 200 and b"<html" in concept.lower()


def test_access_log_is_on_by_default_and_off_with_recsae_access_log_0(servers, a, b):
    """Ops can drop BentoML's per-request log line (~100 us a request on two cores); the request
    metrics still count every request."""
    for c in (a, b):
        for _ in range(3):
            assert c.request("GET", "/recommend", {"user_id": "1", "k": 3})[0] == 200
    time.sleep(0.5)  # the log lines are written by the worker as it answers
    line = "path=/recommend"
    assert line in servers[0].log(), servers[0].log()[-2000:]
    assert line not in servers[1].log(), servers[1].log()[-2000:]
    _, text = b.request("GET", "/metrics", parse=False)
    served = sum(float(x.rsplit(" ", 1)[1]) for x in text.decode().splitlines()
                 if x.startswith("recsae_request_latency_seconds_count{") and 'route="GET /recommend"' in x)
    assert served >= 3
