"""What an independent probe of the service broke (issue 16), over real HTTP against
``bentoml serve`` on loopback with a private ``redis-server``:

* ``/metrics`` stays bounded under junk paths (route templates as labels);
* non-finite JSON numbers (NaN, Infinity, 1e400) get 422, never a 500 with a traceback;
* 30 ``POST /admin/reload`` grow the worker's RSS by at most 60 MB; a path component over 255
  bytes gets 422;
* two instances on one host keep their own metrics;
* admin routes check the token before the body; the audit stream survives a Redis restart
  without persistence and records the re-seed; ``updated_by`` is a label; the audit copy is 0600;
* both OpenAPI documents are valid; /docs works offline; nothing served calls out;
* long URLs get 414, repeated parameters 422, unknown paths a JSON 404, booleans are not numbers;
* policy files carry their bundle hash (refused on another bundle unless query-based or forced);
* ``recsae serve`` never trains; ``--redis auto`` picks a local Redis when one answers.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.devserver import REPO, Client, RedisServer, ServeProcess, free_port

pytestmark = pytest.mark.e2e

TOKEN = "probe-token-" + uuid.uuid4().hex
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PREFIX = f"probe-{uuid.uuid4().hex[:8]}"
needs_redis = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")


@pytest.fixture(scope="module")
def redis_server():
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    with RedisServer() as r:
        yield r


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("probe-state")


@pytest.fixture(scope="module")
def server(bundle, redis_server, state_dir, tmp_path_factory):
    env = {
        "RECSAE_BUNDLE": str(bundle), "REDIS_URL": redis_server.url, "RECSAE_REDIS_PREFIX": PREFIX,
        "RECSAE_ADMIN_TOKEN": TOKEN, "RECSAE_STATE_DIR": str(state_dir), "RECSAE_POLICY_SYNC_S": "0.3",
        "BENTOML_HOME": str(tmp_path_factory.mktemp("bentoml-home")),
    }
    with ServeProcess(env, log_dir=str(tmp_path_factory.mktemp("probe-log"))) as s:
        yield s


def _raw(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        r = conn.getresponse()
        return r.status, r.getheader("content-type", ""), r.read()
    finally:
        conn.close()


def _series(text: str) -> int:
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


# -- item 3: /metrics cardinality -----------------------------------------------------------------
def test_2000_junk_paths_add_at_most_a_handful_of_series(server):
    c = Client(server.port)
    c.request("GET", "/concepts/1999999")  # one of each kind first: its (route, status) series exist
    c.request("GET", "/no-such-route-warmup")
    time.sleep(0.2)
    before = _series(server.get("/metrics")[1])
    for i in range(1000):
        c.request("GET", f"/concepts/2000000{i}")
        c.request("GET", f"/no-such-route-{i}")
    c.close()
    text = server.get("/metrics")[1]
    assert _series(text) - before <= 5, (before, _series(text))
    assert "no-such-route-1" not in text and "/concepts/20000001" not in text
    assert 'endpoint="/concepts/{latent}"' in text and 'endpoint="unmatched"' in text


# -- item 4: non-finite numbers ---------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_json_numbers_get_422_without_a_traceback(server, bad):
    bodies = [
        ("POST", "/recommend", '{"history": ["50"], "k": %s}'),
        ("POST", "/recommend", '{"history": ["50"], "suppress_strength": %s}'),
        ("POST", "/recommend", '{"history": ["50"], "suppress_baseline": %s}'),
        ("POST", "/recommend", '{"history": ["50"], "suppress": [{"latent": 1, "strength": %s}]}'),
        ("PUT", "/admin/policies/nan-p", '{"latents": [1], "strength": %s}'),
        ("PUT", "/admin/policies/nan-p", '{"baseline": %s}'),
        ("POST", "/admin/reload", '{"path": %s}'),
    ]
    for method, path, body in bodies:
        st, ctype, raw = _raw(server.port, method, path, (body % bad).encode(), AUTH)
        assert st == 422 and ctype == "application/json", (method, path, bad, st, raw[:300])
        assert json.loads(raw)["detail"][0]["loc"][0] == "body"
    time.sleep(0.3)
    assert "Traceback" not in server.log(), server.log()[-3000:]


# -- item 5 and 6: reload -------------------------------------------------------------------------
def _worker_rss(proc) -> int:
    import psutil

    kids = [p for p in psutil.Process(proc.pid).children(recursive=True)
            if "_bentoml_impl.worker.service" in " ".join(p.cmdline())]
    assert len(kids) == 1, kids
    return kids[0].memory_info().rss


def test_30_reloads_grow_the_worker_rss_by_at_most_60_mb(bundle, tmp_path):
    env = {"RECSAE_BUNDLE": str(bundle), "RECSAE_ADMIN_TOKEN": TOKEN, "RECSAE_STATE_DIR": str(tmp_path / "state"),
           "BENTOML_HOME": str(tmp_path / "bentoml")}
    with ServeProcess(env, log_dir=str(tmp_path)) as s:
        c = Client(s.port, timeout=60)
        assert c.request("POST", "/admin/reload", headers=AUTH)[0] == 200  # lazy imports of the path
        time.sleep(6)  # the replaced cores are closed 5 s after each swap
        before = _worker_rss(s.proc)
        for _ in range(30):
            st, resp = c.request("POST", "/admin/reload", headers=AUTH)
            assert st == 200, resp
        time.sleep(6)
        grown = (_worker_rss(s.proc) - before) / 1e6
        c.close()
    print(f"\nworker RSS grew {grown:.1f} MB over 30 reloads")
    assert grown <= 60, f"{grown:.0f} MB over 30 reloads"


def test_a_reload_path_component_over_255_bytes_gets_422(server):
    for path in ("/tmp/" + "a" * 300, "/" + "b" * 256 + "/bundle"):
        st, resp = server.request("POST", "/admin/reload", body={"path": path}, headers=AUTH, timeout=30)
        assert st == 422 and "File name too long" in resp["detail"], (st, resp)
    assert server.get("/readyz")[0] == 200


# -- item 7: two instances ---------------------------------------------------------------------------
def _bundle_count(text: str) -> float:
    m = re.search(r'recsae_request_latency_seconds_count\{explain="false",route="GET /bundle"\} ([0-9.e+]+)', text)
    return float(m.group(1)) if m else 0.0


def test_two_instances_on_one_host_keep_their_own_metrics(bundle, tmp_path):
    home, state = tmp_path / "bentoml", tmp_path / "state"  # the same BentoML home and state dir
    env = {"RECSAE_BUNDLE": str(bundle), "RECSAE_STATE_DIR": str(state), "BENTOML_HOME": str(home)}
    with ServeProcess(env, log_dir=str(tmp_path)) as a:
        for _ in range(5):
            assert a.get("/bundle")[0] == 200
        assert _bundle_count(a.get("/metrics")[1]) == 5
        with ServeProcess(env, log_dir=str(tmp_path)) as b:
            for _ in range(3):
                assert b.get("/bundle")[0] == 200
            assert a.get("/bundle")[0] == 200
            assert _bundle_count(a.get("/metrics")[1]) == 6
            assert _bundle_count(b.get("/metrics")[1]) == 3
        dirs = sorted(p.name for p in (state / "metrics").iterdir())
        assert len(dirs) == 2, dirs


# -- item 8: token before body -----------------------------------------------------------------------
def test_admin_routes_check_the_token_before_the_body(server):
    for method, path, body in (("PUT", "/admin/policies/p1", b'{"latents": "x", "bogus": 1}'),
                               ("PUT", "/admin/policies/p1", b'{"latents": [1'),
                               ("PUT", "/admin/policies/bad name!", b'{}'),
                               ("POST", "/admin/reload", b'{"path": 5, "x": 1}'),
                               ("GET", "/admin/audit?limit=-1", None)):
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            st, _, raw = _raw(server.port, method, path.replace(" ", "%20"), body, headers)
            assert st == 401, (method, path, st, raw[:300])
            assert json.loads(raw) == {"detail": "missing or wrong bearer token"}


# -- item 9 and 11 (audit): re-seed, labels, file mode ---------------------------------------------
def test_audit_survives_a_redis_restart_and_records_the_reseed(server, redis_server, state_dir):
    for i in range(3):
        st, p = server.request("PUT", f"/admin/policies/audit-{i}", body={"latents": [i + 1]},
                               headers={**AUTH, "X-Admin-Label": "alice"})
        assert st == 200 and p["updated_by"] == "alice", p
    st, p = server.request("PUT", "/admin/policies/audit-nolabel", body={"latents": [4]}, headers=AUTH)
    assert p["updated_by"] == "admin"
    before = server.get("/admin/audit", headers=AUTH)[1]["entries"]
    assert len(before) >= 4
    sha8 = hashlib.sha256(TOKEN.encode()).hexdigest()[:8]
    assert not any(sha8 in e["who"] for e in before), before[:2]
    redis_server.stop()
    redis_server.start()  # same port, empty: no persistence
    deadline = time.monotonic() + 15
    entries: list = []
    while time.monotonic() < deadline:
        st, body = server.get("/admin/audit", headers=AUTH)
        entries = body.get("entries", []) if st == 200 else []
        if any(e["action"] == "reseed" for e in entries):
            break
        time.sleep(0.3)
    assert entries and entries[0]["action"] == "reseed", entries[:3]
    kept = {(e["policy"], e["who"], e["action"]) for e in entries[1:]}
    assert {(e["policy"], e["who"], e["action"]) for e in before} <= kept
    assert server.get("/admin/policies/audit-1", headers=AUTH)[0] == 200
    files = list(state_dir.glob("audit-*.jsonl"))
    assert files and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files), files


# -- item 10: OpenAPI documents ------------------------------------------------------------------
def test_both_openapi_documents_are_valid(server):
    from openapi_spec_validator import validate
    from openapi_spec_validator.validation import OpenAPIV30SpecValidator, OpenAPIV31SpecValidator

    from service.openapi import PATH

    committed = json.loads(PATH.read_text())
    validate(committed, cls=OpenAPIV31SpecValidator)
    st, served = server.get("/docs.json")
    assert st == 200 and served["openapi"].startswith("3.0"), served.get("openapi")
    validate(served, cls=OpenAPIV30SpecValidator)
    assert {"/recommend", "/concepts/{latent}", "/admin/policies/{name}", "/admin/reload"} <= set(served["paths"])
    assert "exclusiveMinimum\": 0" not in json.dumps(served)
    mode = served["components"]["schemas"]["RecommendRequest"]["properties"]["mode"]
    assert mode.get("nullable") and None in mode["enum"], mode  # null is a valid mode: 3.0 must say so


# -- item 11: the smaller ones ----------------------------------------------------------------------
def test_a_huge_url_gets_414(server):
    st, ctype, raw = _raw(server.port, "GET", "/recommend?user_id=" + "1" * 128 * 1024)
    assert st == 414 and ctype == "application/json", (st, raw[:200])
    assert server.get("/readyz")[0] == 200


def test_malformed_paths_types_and_repeated_parameters_get_422(server):
    st, _, raw = _raw(server.port, "GET", "/concepts/1%0A")
    assert st == 422 and json.loads(raw)["detail"][0]["loc"] == ["path", "latent"], raw
    for body in ({"history": ["50"], "suppress": [{"latent": False, "strength": 1}]},
                 {"history": ["50"], "suppress": [False]}, {"history": ["50"], "suppress_baseline": False},
                 {"history": ["50"], "k": True}, {"history": ["50"], "exclude_seen": 0},
                 {"history": ["50"], "explain": "yes"}, {"history": ["50"], "policy": 0}):
        st, resp = server.request("POST", "/recommend", body=body)
        assert st == 422, (body, resp)
    st, resp = server.request("PUT", "/admin/policies/bool-p", body={"baseline": False, "latents": [1]}, headers=AUTH)
    assert st == 422 and resp["detail"][0]["loc"][:2] == ["body", "baseline"], resp
    for q in ("user_id=1&policy=no-horror&policy=", "user_id=1&user_id=2", "user_id=1&k=5&k=6"):
        st, _, raw = _raw(server.port, "GET", "/recommend?" + q)
        assert st == 422, (q, raw)
        assert json.loads(raw)["detail"][0]["loc"][0] == "query"


def test_unknown_paths_get_a_json_404(server):
    for path in ("/no-such-route", "/concepts", "/admin", "/redoc", "/recommend/x"):
        st, ctype, raw = _raw(server.port, "GET", path if path != "/concepts" else "/concepts/x/y")
        assert st == 404 and ctype == "application/json", (path, st, ctype, raw[:200])
        assert "detail" in json.loads(raw)


def test_405_names_every_method_of_the_path(server):
    for path, want in (("/recommend", {"GET", "HEAD", "POST"}), ("/admin/policies/p1", {"GET", "HEAD", "PUT", "DELETE"})):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("OPTIONS", path, headers=AUTH)
        r = conn.getresponse()
        r.read()
        conn.close()
        assert r.status == 405 and want <= {m.strip() for m in r.getheader("allow", "").split(",")}, (
            path, r.status, r.getheader("allow"))


def test_head_is_get_without_the_body(server):
    """Load balancers, uptime checks and link checkers ask HEAD: every GET route answers it as
    GET would, status and headers (Content-Length included), without the body (RFC 9110)."""
    for path in ("/recommend?user_id=1&k=3&explain=true", "/recommend?user_id=no-such-user", "/concepts?limit=2",
                 "/concepts/3", "/bundle", "/audit", "/docs", "/readyz", "/metrics"):
        st, ctype, raw = _raw(server.port, "GET", path)
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.request("HEAD", path)
        r = conn.getresponse()
        body = r.read()
        conn.close()
        assert (r.status, r.getheader("content-type", ""), body) == (st, ctype, b""), (path, r.status, st)
        if path != "/metrics":  # (the metrics text grows between the two requests)
            assert int(r.getheader("content-length")) == len(raw), path


def test_readme_states_how_many_latents_firing_rate_exports(server):
    from service.config import Settings

    top = Settings.from_env({"RECSAE_BUNDLE": "x"}).drift_top
    c = Client(server.port)
    for i in range(60):
        c.request("POST", "/recommend", body={"history": [str(50 + i), "172"]})
    c.close()
    time.sleep(0.2)
    text = server.get("/metrics")[1]
    latents = set(re.findall(r'recsae_concept_firing_rate\{kind="live",latent="(\d+)"\}', text))
    assert 0 < len(latents) <= 2 * top, len(latents)
    line = next(l for l in (REPO / "README.md").read_text().splitlines() if "recsae_concept_firing_rate" in l)
    assert f"up to {2 * top}" in line, line


# -- item 12: policies carry their bundle hash --------------------------------------------------
def test_a_saved_policy_puts_as_is_and_is_refused_on_another_bundle(server, bundle):
    from recsae import debias as D

    served = server.get("/bundle")[1]["bundle_hash"]
    doc = {"name": "saved-p", "latents": [3, 5], "strength": 0.8, "mode": "error", "baseline": 0.2,
           "bundle_hash": served, "description": "written by recsae debias"}
    assert set(doc) == set(D.POLICY_KEYS)
    st, p = server.request("PUT", "/admin/policies/saved-p", body=json.loads(D.policy_json(doc)), headers=AUTH)
    assert st == 200 and p["latents"] == [3, 5] and p["bundle_hash"] == served, p
    other = {**doc, "name": "other-p", "bundle_hash": "ab" * 32}
    st, resp = server.request("PUT", "/admin/policies/other-p", body=other, headers=AUTH)
    assert st == 422 and resp["detail"][0]["loc"] == ["body", "bundle_hash"], resp
    assert "recsae debias" in resp["detail"][0]["msg"] and "force=true" in resp["detail"][0]["msg"]
    assert server.get("/admin/policies/other-p", headers=AUTH)[0] == 404
    st, p = server.request("PUT", "/admin/policies/other-p", params={"force": "true"}, body=other, headers=AUTH)
    assert st == 200 and p["latents"] == [3, 5] and p["bundle_hash"] == served, p
    # query-based: re-resolved against this bundle's concepts, the other bundle's ids dropped
    word = server.get("/concepts/1")[1]["description"].split()[0].strip(",")
    st, p = server.request("PUT", "/admin/policies/query-p", body={**other, "name": "query-p", "query": word},
                           headers=AUTH)
    assert st == 200 and p["explicit"] == [] and p["query"] == word and 1 in p["latents"], p
    st, resp = server.request("PUT", "/admin/policies/x-p", body={**doc, "name": "y-p"}, headers=AUTH)
    assert st == 422 and resp["detail"][0]["loc"] == ["body", "name"], resp


# -- item 13: offline docs ------------------------------------------------------------------------
def test_docs_pages_load_only_local_assets(server):
    st, ctype, raw = _raw(server.port, "GET", "/")
    assert st in (302, 307) or b"googletagmanager" not in raw, (st, raw[:300])
    seen = 0
    for page in ("/", "/docs", "/audit"):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("GET", page)
        r = conn.getresponse()
        while r.status in (301, 302, 307, 308):
            loc = r.getheader("location")
            r.read()
            conn.request("GET", loc)
            r = conn.getresponse()
        html = r.read().decode()
        conn.close()
        assert r.status == 200, (page, r.status)
        assert "googletagmanager" not in html and "cdn.jsdelivr" not in html, page
        for url in re.findall(r'(?:src|href)\s*=\s*["\']([^"\']+)["\']', html) + re.findall(r'url:\s*["\']([^"\']+)', html):
            assert not re.match(r"^(https?:)?//", url), (page, url)
            if url.startswith("/"):
                assert server.get(url)[0] == 200, (page, url)
                seen += 1
    assert seen >= 3


# -- item 14 and 11 (make serve): serve never trains; local Redis when one answers -------------
def test_recsae_serve_on_a_missing_bundle_names_recsae_train_and_trains_nothing(tmp_path):
    typo = tmp_path / "prod" / "bundels" / "v7"
    t0 = time.monotonic()
    r = subprocess.run([str(Path(sys.executable).with_name("recsae")), "serve", "--bundle", str(typo)],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "no bundle at" in r.stderr and f"recsae train --out {typo}" in r.stderr, r.stderr
    assert not (tmp_path / "prod").exists() and time.monotonic() - t0 < 60


@needs_redis
def test_serve_redis_auto_uses_a_local_redis_when_one_answers():
    from recsae.cli import pick_redis

    with RedisServer() as r:
        url, line = pick_redis("auto", {}, local=r.url)
        assert url == r.url and "local Redis answers" in line
    closed = f"redis://127.0.0.1:{free_port()}/0"
    url, line = pick_redis("auto", {}, local=closed)
    assert url is None and "in-process" in line
    assert pick_redis("auto", {"REDIS_URL": "redis://h:1/0"}, local=closed)[0] == "redis://h:1/0"
    assert pick_redis("off", {"REDIS_URL": "redis://h:1/0"})[0] is None
    make = subprocess.run(["make", "-n", "serve"], capture_output=True, text=True, cwd=REPO, timeout=60).stdout
    assert "--redis auto" in make
