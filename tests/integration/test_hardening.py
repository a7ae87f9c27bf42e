"""Hardening, over real HTTP against ``bentoml serve`` on loopback:

* bad bundles (a missing file, altered SAE weights, an ONNX encoder with the wrong input
  signature) stop the server before any worker starts, with one clear line (exit code 3);
  the altered-catalogue case is in test_service_e2e;
* ``POST /admin/reload``: a bad bundle is refused with the reason while the old one keeps
  serving (no failed request during the attempt); a good one is swapped in;
* a killed worker (``--workers 2``) is replaced while requests keep succeeding;
* security: admin token required (401), tokens never written to logs or state files,
  request bodies over 64 KiB get 413 (declared or chunked), histories over 200 items 422,
  every Redis key this deployment writes starts with ``RECSAE_REDIS_PREFIX:``.

Redis here is a private ``redis-server`` on a free port (the shared one is never touched).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from tests.devserver import REPO, Client, RedisServer, ServeProcess

pytestmark = pytest.mark.e2e

if shutil.which("redis-server") is None:
    pytest.skip("redis-server is not installed", allow_module_level=True)

TOKEN = "hard-token-" + uuid.uuid4().hex
BAD_TOKEN = "wrong-token-" + uuid.uuid4().hex
AUTH = {"Authorization": f"Bearer {TOKEN}", "X-Admin-Label": "hardening"}
PREFIX = f"hard-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def users(bundle) -> list[str]:
    return [str(u) for u in np.load(bundle / "users.npz")["user_ids"][:50]]


@pytest.fixture(scope="module")
def redis_server():
    with RedisServer() as r:
        yield r


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hard-state")


@pytest.fixture(scope="module")
def server(bundle, redis_server, state_dir, tmp_path_factory):
    env = {
        "RECSAE_BUNDLE": str(bundle),
        "REDIS_URL": redis_server.url,
        "RECSAE_REDIS_PREFIX": PREFIX,
        "RECSAE_ADMIN_TOKEN": TOKEN,
        "RECSAE_STATE_DIR": str(state_dir),
        "RECSAE_POLICY_SYNC_S": "0.5",
        "RECSAE_REDIS_TIMEOUT_S": "2",  # loopback Redis can be slower than 0.1 s on a loaded machine
    }
    with ServeProcess(env, log_dir=str(tmp_path_factory.mktemp("hard-log"))) as s:
        yield s


def _copy(bundle: Path, dst: Path) -> Path:
    shutil.copytree(bundle, dst)
    return dst


def _rehash(b: Path, name: str) -> None:
    """Make the manifest agree with a replaced file (so only the deeper checks can catch it)."""
    from recsae.bundle import sha256_file

    m = json.loads((b / "manifest.json").read_text())
    m["files"][name] = sha256_file(b / name)
    (b / "manifest.json").write_text(json.dumps(m))


def _float_input_onnx(path: Path, max_len: int, d: int) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.zeros((max_len, d), np.float32), "w")
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "wrong",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", max_len])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", d])], [w],
    )
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _break(kind: str, bundle: Path, dst: Path) -> tuple[Path, str]:
    b = _copy(bundle, dst)
    if kind == "missing-file":
        (b / "users.npz").unlink()
        return b, "users.npz is missing"
    if kind == "altered-weights":
        raw = bytearray((b / "sae" / "sae.safetensors").read_bytes())
        raw[-1] ^= 0xFF
        (b / "sae" / "sae.safetensors").write_bytes(bytes(raw))
        return b, "sae.safetensors does not match its manifest hash"
    if kind == "wrong-onnx-signature":
        model = json.loads((b / "manifest.json").read_text())["model"]
        _float_input_onnx(b / "encoder.onnx", int(model.get("max_len") or 20), int(model["d"]))
        _rehash(b, "encoder.onnx")
        return b, "input signature"
    raise ValueError(kind)


KINDS = ["missing-file", "altered-weights", "wrong-onnx-signature"]


# -- a bad bundle at start ------------------------------------------------------------------------
def test_bad_bundles_refuse_to_start_with_one_clear_message(bundle, tmp_path):
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True", "RECSAE_STATE_DIR": str(tmp_path / "state")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    bentoml = str(Path(sys.executable).with_name("bentoml"))
    procs = {}
    for kind in KINDS:  # started together: each spends most of its time importing
        b, expect = _break(kind, bundle, tmp_path / kind)
        procs[kind] = (expect, subprocess.Popen(
            [bentoml, "serve", "service.service:RecSAEService", "--port", "0", "--host", "127.0.0.1"],
            cwd=REPO, env={**env, "RECSAE_BUNDLE": str(b)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, start_new_session=True,
        ))
    for kind, (expect, p) in procs.items():
        try:
            out, err = p.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            pytest.fail(f"{kind}: bentoml serve did not stop")
        assert p.returncode == 3, (kind, err[-2000:])
        lines = [ln for ln in (out + err).splitlines() if "cannot start" in ln]
        assert len(lines) == 1, (kind, lines)
        assert expect in lines[0] and "rebuild" in lines[0], (kind, lines[0])
        assert "Traceback" not in err, (kind, err[-2000:])


def test_bad_server_settings_refuse_to_start_with_one_clear_message(bundle, tmp_path):
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True", "RECSAE_STATE_DIR": str(tmp_path / "state"),
           "RECSAE_BUNDLE": str(bundle)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    bentoml = str(Path(sys.executable).with_name("bentoml"))
    procs = {
        (name, value): subprocess.Popen(
            [bentoml, "serve", "service.service:RecSAEService", "--port", "0", "--host", "127.0.0.1"],
            cwd=REPO, env={**env, name: value}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True,
        )
        for name, value in (("RECSAE_WORKERS", "two"), ("RECSAE_ACCESS_LOG", "maybe"))
    }
    for (name, value), p in procs.items():
        try:
            out, err = p.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            pytest.fail(f"{name}={value}: bentoml serve did not stop")
        lines = [ln for ln in (out + err).splitlines() if "cannot start" in ln]
        assert p.returncode == 3 and len(lines) == 1 and name in lines[0], (name, lines, err[-2000:])
        assert "Traceback" not in err, err[-2000:]


# -- reload ---------------------------------------------------------------------------------------
class Load:
    """GET /recommend in a loop on its own connection; records every non-200."""

    def __init__(self, port: int, users: list[str], keep_alive: bool = True):
        self.port, self.users, self.keep_alive = port, users, keep_alive
        self.failures: list = []
        self.done = 0
        self.hashes: set[str] = set()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _one(self, c: Client | None, i: int) -> None:
        q = {"user_id": self.users[i % len(self.users)], "explain": "true" if i % 2 else "false"}
        own = c is None
        c = c or Client(self.port, timeout=10)
        try:
            st, body = c.request("GET", "/recommend", q)
        except (OSError, http.client.HTTPException) as e:
            self.failures.append(("connection", repr(e)))
            return
        finally:
            if own:
                c.close()
        self.done += 1
        if st != 200:
            self.failures.append((st, str(body)[:200]))
        else:
            self.hashes.add(body["bundle_hash"])

    def _run(self) -> None:
        c = Client(self.port, timeout=10) if self.keep_alive else None
        i = 0
        while not self._stop.is_set():
            self._one(c, i)
            i += 1
            time.sleep(0.005)
        if c is not None:
            c.close()

    def wait_more(self, n: int, timeout: float = 120.0) -> None:
        """Until n more requests have completed: counts, not sleeps, so a slow machine only waits
        longer (the timeout catches a hang)."""
        goal, deadline = self.done + n, time.monotonic() + timeout
        while self.done < goal and self._t.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)

    def __enter__(self) -> "Load":
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join(15)


def test_admin_routes_need_the_token(server):
    c = Client(server.port)
    for method, path, body in (("POST", "/admin/reload", {}), ("GET", "/admin/policies", None),
                               ("PUT", "/admin/policies/p1", {"latents": [1]}), ("GET", "/admin/audit", None)):
        for headers in ({}, {"Authorization": f"Bearer {BAD_TOKEN}"}, {"Authorization": BAD_TOKEN}):
            st, resp = c.request(method, path, body=body, headers=headers)
            assert st == 401, (method, path, headers, st, resp)
            assert resp["detail"] == "missing or wrong bearer token"
    c.close()


def test_reload_of_a_bad_bundle_keeps_serving_the_old_one(server, bundle, users, tmp_path):
    c = Client(server.port, timeout=60)
    before = c.request("GET", "/bundle")[1]
    with Load(server.port, users) as load:
        load.wait_more(10)
        for kind in KINDS:
            b, expect = _break(kind, bundle, tmp_path / kind)
            st, resp = c.request("POST", "/admin/reload", body={"path": str(b)}, headers=AUTH)
            assert st == 422, (kind, st, resp)
            assert expect in resp["detail"] and before["version"] in resp["detail"], resp
        st, resp = c.request("POST", "/admin/reload", body={"path": str(tmp_path / "nowhere")}, headers=AUTH)
        assert st == 422 and "no bundle at" in resp["detail"], resp
        load.wait_more(11)
    assert not load.failures, load.failures[:3]
    assert load.done > 20 and load.hashes == {before["bundle_hash"]}
    assert c.request("GET", "/bundle")[1] == before
    c.close()


def test_reload_of_a_good_bundle_swaps_it_in_without_failed_requests(server, bundle, users, tmp_path):
    c = Client(server.port, timeout=60)
    before = c.request("GET", "/bundle")[1]
    new = _copy(bundle, tmp_path / "next")
    m = json.loads((new / "manifest.json").read_text())
    m["version"], m["bundle_hash"] = "reload-test", "ab" * 32  # same files, new identity
    (new / "manifest.json").write_text(json.dumps(m))
    with Load(server.port, users) as load:
        load.wait_more(5)
        st, resp = c.request("POST", "/admin/reload", body={"path": str(new)}, headers=AUTH)
        assert st == 200, resp
        assert resp["bundle_version"] == "reload-test" and resp["previous_hash"] == before["bundle_hash"]
        load.wait_more(5)
    assert not load.failures, load.failures[:3]
    assert load.hashes == {before["bundle_hash"], "ab" * 32}, load.hashes
    assert c.request("GET", "/bundle")[1]["version"] == "reload-test"
    # and back (no body: reload RECSAE_BUNDLE? no: the path now served); restore the original
    st, resp = c.request("POST", "/admin/reload", body={"path": str(bundle)}, headers=AUTH)
    assert st == 200 and resp["bundle_hash"] == before["bundle_hash"], resp
    st, resp = c.request("POST", "/admin/reload", headers=AUTH)  # no body: reload the served path
    assert st == 200 and resp["path"] == str(bundle), resp
    c.close()


# -- request size limits --------------------------------------------------------------------------
def test_bodies_over_64_kib_get_413_and_long_histories_422(server):
    c = Client(server.port)
    big = {"history": ["50"] * 20000}  # ~120 KiB
    st, resp = c.request("POST", "/recommend", body=big)
    assert st == 413 and "larger than 65536 bytes" in resp["detail"], (st, resp)
    c.close()
    c = Client(server.port)
    st, _ = c.request("PUT", "/admin/policies/p-big", body={"latents": [1], "description": "x" * 70000}, headers=AUTH)
    assert st == 413
    c.close()
    # chunked transfer (no Content-Length): counted as it streams in
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    chunks = (b'{"history": [' + b'"50",' * 15000 + b'"50"]}',)
    conn.request("POST", "/recommend", body=iter(chunks), headers={"Content-Type": "application/json"},
                 encode_chunked=True)
    r = conn.getresponse()
    assert r.status == 413, r.read()[:300]
    conn.close()
    c = Client(server.port)
    st, resp = c.request("POST", "/recommend", body={"history": ["50"] * 201})
    assert st == 422 and resp["detail"][0]["loc"] == ["body", "history"], resp
    st, resp = c.request("POST", "/recommend", body={"history": ["50"] * 200})
    assert st == 200, resp
    c.close()


# -- worker crash ---------------------------------------------------------------------------------
def _workers(proc) -> list:
    import psutil

    root = psutil.Process(proc.pid)
    return [p for p in root.children(recursive=True)
            if "_bentoml_impl.worker.service" in p.cmdline() and p.is_running()
            and p.status() != psutil.STATUS_ZOMBIE]


def test_a_killed_worker_is_replaced_while_requests_keep_succeeding(bundle, users, tmp_path):
    env = {"RECSAE_BUNDLE": str(bundle), "RECSAE_WORKERS": "2", "RECSAE_STATE_DIR": str(tmp_path / "state")}
    with ServeProcess(env, log_dir=str(tmp_path)) as s:
        deadline = time.monotonic() + 120
        while len(_workers(s.proc)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        before = _workers(s.proc)
        assert len(before) == 2, [p.cmdline() for p in before]
        # one new connection per request: the kernel hands each to a live worker
        with Load(s.port, users, keep_alive=False) as load:
            load.wait_more(21)
            victim = before[0]
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)
            deadline = time.monotonic() + 120
            replaced = []
            while time.monotonic() < deadline:
                replaced = [p for p in _workers(s.proc) if p.pid not in {q.pid for q in before}]
                if replaced and s.get("/readyz")[0] == 200:
                    break
                time.sleep(0.2)
            done_at_replacement = load.done
            load.wait_more(5)
        assert replaced, "the killed worker was not replaced"
        assert before[1].is_running(), "the surviving worker died"
        # at most the request the killed worker held in flight is lost (clients retry idempotent GETs)
        assert len(load.failures) <= 1, load.failures[:5]
        assert all(f[0] == "connection" for f in load.failures), load.failures
        assert load.done > done_at_replacement > 20


# -- security: logs, state files and Redis keys ---------------------------------------------------
def test_tokens_never_reach_logs_or_state_and_redis_keys_carry_the_prefix(server, redis_server, state_dir, users):
    c = Client(server.port)
    for headers, want in (({"Authorization": f"Bearer {BAD_TOKEN}"}, 401), (AUTH, 200)):
        st, resp = c.request("PUT", "/admin/policies/hard-p", body={"latents": [1, 2]}, headers=headers)
        assert st == want, resp
        assert c.request("GET", "/admin/audit", headers=headers)[0] == want
    st, _ = c.request("GET", "/admin/policies/hard-p", headers=AUTH)
    assert st == 200
    for u in users[:10]:
        assert c.request("GET", "/recommend", {"user_id": u, "explain": "true", "policy": "hard-p"})[0] == 200
    time.sleep(1.0)  # at least two background policy syncs (0.5 s) before the state is read
    deadline = time.monotonic() + 60  # and the access log flushed, however slow the machine
    while "/admin/" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.2)
    c.close()
    log = server.log()
    assert "POST /admin" in log or "/admin/" in log, "access log not captured"
    for secret in (TOKEN, BAD_TOKEN):
        assert secret not in log, "a bearer token was written to the server log"
        for f in state_dir.rglob("*"):
            if f.is_file():
                assert secret not in f.read_text(errors="replace"), f"token in {f}"
    r = redis_server.client()
    keys = [k.decode() for k in r.scan_iter(count=1000)]
    assert keys, "nothing was written to Redis"
    outside = [k for k in keys if not k.startswith(PREFIX + ":")]
    assert not outside, outside[:10]
    for k in keys:
        if r.type(k) == b"stream":
            for _, fields in r.xrange(k):
                assert all(TOKEN.encode() not in v and BAD_TOKEN.encode() not in v for v in fields.values())
