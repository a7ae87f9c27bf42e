"""The audit page (/audit) in real headless Chromium against a running ``bentoml serve`` with a
private redis-server: enter a user, tick a concept toggle, and the list the page shows must be
exactly the list the API returns for the same suppression. Chromium is driven over the DevTools
protocol with a small standard-library WebSocket client (no Selenium/Playwright needed).
A screenshot goes to test-artifacts/audit.png."""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import socket
import struct
import subprocess
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.devserver import REPO, Client, RedisServer, ServeProcess

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts"
TOKEN = "audit-" + uuid.uuid4().hex[:12]
AUDIT = {"Authorization": f"Bearer {TOKEN}"}
ADMIN_TOKEN = "admin-" + uuid.uuid4().hex[:12]
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is missing: apt-get install -y chromium"),
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed"),
]


# -- a minimal Chrome DevTools Protocol client (RFC 6455 client frames, text only) -------------
class CDP:
    def __init__(self, ws_url: str, timeout: float = 60.0):
        u = urlparse(ws_url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {u.path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            if not chunk:
                raise ConnectionError("DevTools closed the connection during the handshake")
            head += chunk
        assert head.startswith(b"HTTP/1.1 101"), head
        self.next_id = 0

    def _read(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("DevTools closed the connection")
            buf += chunk
        return buf

    def _recv(self) -> dict:
        data = b""
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            data += self._read(n)
            if b0 & 0x80:  # FIN (continuation frames are appended)
                return json.loads(data)

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        payload = json.dumps({"id": self.next_id, "method": method, "params": params}).encode()
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([0x81]) + (
            bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n) if n < 65536
            else bytes([0x80 | 127]) + struct.pack(">Q", n)
        )
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
        while True:
            msg = self._recv()
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def js(self, expr: str):
        r = self.call("Runtime.evaluate", expression=expr, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expr}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait(self, expr: str, timeout: float = 60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            v = self.js(expr)
            if v:
                return v
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {expr}; status: {self.js('document.body.innerText.slice(0, 1500)')}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def server(synthetic_bundle, tmp_path_factory):
    with RedisServer() as redis_server:
        env = {
            "RECSAE_BUNDLE": str(synthetic_bundle),
            "REDIS_URL": redis_server.url,
            "RECSAE_REDIS_PREFIX": "audit-test",
            "RECSAE_AUDIT_TOKEN": TOKEN,
            "RECSAE_ADMIN_TOKEN": ADMIN_TOKEN,
            "RECSAE_AUDIT_SAMPLE": "1",
            "RECSAE_STATE_DIR": str(tmp_path_factory.mktemp("state")),
        }
        proc = ServeProcess(env, log_dir=str(tmp_path_factory.mktemp("log"))).start(300)
        try:
            yield proc, redis_server
        finally:
            proc.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    profile = tmp_path_factory.mktemp("chromium-profile")
    proc = subprocess.Popen(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
         f"--user-data-dir={profile}", "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
         "--window-size=1400,1100", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 120
        while not (port_file.exists() and port_file.read_text().strip()):
            assert proc.poll() is None and time.monotonic() < deadline, "chromium did not start"
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/json/list")
        page = next(t for t in json.loads(conn.getresponse().read()) if t["type"] == "page")
        cdp = CDP(page["webSocketDebuggerUrl"])
        cdp.call("Page.enable")
        cdp.call("Runtime.enable")
        yield cdp
        cdp.close()
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(10)


def _ids(body: dict) -> list[str]:
    return [it["item_id"] for it in body["items"]]


def test_audit_routes_need_the_audit_token(server):
    proc, _ = server
    c = Client(proc.port)
    try:
        for path in ("/audit/recent", "/drift", "/audit/policies"):
            assert c.request("GET", path)[0] == 401
            assert c.request("GET", path, headers={"Authorization": "Bearer wrong"})[0] == 401
            assert c.request("GET", path, headers=AUDIT)[0] == 200
        status, html = c.request("GET", "/audit")
        assert status == 200 and "audit.js" in html  # the page itself holds no data: open
        assert c.request("GET", "/audit/static/audit.js")[0] == 200
    finally:
        c.close()


def test_toggle_reranks_exactly_like_the_api(server, browser):
    proc, redis_server = server
    c = Client(proc.port)
    user = "1"
    status, base = c.request("GET", "/recommend", {"user_id": user, "k": 10, "explain": "true"})
    assert status == 200, base
    # a concept whose suppression changes the top-10 (the strongest first)
    chosen, expected = None, None
    for a in sorted(base["active_latents"], key=lambda a: -a["activation"]):
        _, r = c.request("GET", "/recommend", {"user_id": user, "k": 10, "suppress": str(a["latent"])})
        if set(_ids(r)) != set(_ids(base)):
            chosen, expected = a["latent"], r
            break
    assert chosen is not None, "no single active concept changes this user's list"

    cdp = browser
    cdp.call("Page.navigate", url=f"{proc.base}/audit")
    cdp.wait("document.readyState === 'complete' && !!document.querySelector('#user-id')")
    # the token is typed into the page and kept in sessionStorage (this tab only)
    cdp.js(f"document.querySelector('#token').value = {json.dumps(TOKEN)}; document.querySelector('#token-save').click()")
    assert cdp.js("sessionStorage.getItem('recsae-audit-token')") == TOKEN
    # the header says how much of the ranking the concepts capture, as /bundle reports it
    keeps = c.request("GET", "/bundle")[1]["metrics"]["sae_heldout_ndcg10_ratio"]
    cdp.wait("document.querySelector('#bundle-info').textContent.includes('keep')")
    assert f"keep {100 * keeps:.1f}% of NDCG@10" in cdp.js("document.querySelector('#bundle-info').textContent")
    # quality warnings (if the offline job found any) sit next to it, in full in the tooltip
    warnings = c.request("GET", "/bundle")[1]["quality_warnings"]
    assert cdp.js("document.querySelector('#bundle-warning').hidden") is (not warnings)
    assert cdp.js("document.querySelector('#bundle-warning').title") == "\n".join(warnings)

    cdp.js(f"document.querySelector('#user-id').value = {json.dumps(user)}; document.querySelector('#show').click()")
    cdp.wait("document.querySelector('#rec-status').dataset.state === 'ready'")
    shown = cdp.js("[...document.querySelectorAll('#rec-list li')].map(li => li.dataset.itemId)")
    assert shown == _ids(base)
    assert cdp.js("document.querySelectorAll('#concept-bars .bar-row').length") == len(base["active_latents"])
    assert cdp.js("document.querySelectorAll('#rec-list .chip').length") > 0

    cdp.js(f"document.querySelector('input.suppress-toggle[data-latent=\"{chosen}\"]').click()")
    cdp.wait(f"(s => s.dataset.state === 'ready' && s.dataset.suppress === '{chosen}')(document.querySelector('#rec-status'))")
    shown = cdp.js("[...document.querySelectorAll('#rec-list li')].map(li => li.dataset.itemId)")
    assert shown == _ids(expected)  # same items, same order as the API for the same suppression
    left = cdp.js("[...document.querySelectorAll('#left-list li[data-item-id]')].map(li => li.dataset.itemId)")
    entered = cdp.js("[...document.querySelectorAll('#entered-list li[data-item-id]')].map(li => li.dataset.itemId)")
    assert left == [i for i in _ids(base) if i not in _ids(expected)]
    assert entered == [i for i in _ids(expected) if i not in _ids(base)]
    assert left and entered

    # untick: back to the unsuppressed list
    cdp.js(f"document.querySelector('input.suppress-toggle[data-latent=\"{chosen}\"]').click()")
    cdp.wait("(s => s.dataset.state === 'ready' && s.dataset.suppress === '')(document.querySelector('#rec-status'))")
    assert cdp.js("[...document.querySelectorAll('#rec-list li')].map(li => li.dataset.itemId)") == _ids(base)
    cdp.js(f"document.querySelector('input.suppress-toggle[data-latent=\"{chosen}\"]').click()")
    cdp.wait(f"document.querySelector('#rec-status').dataset.suppress === '{chosen}'")

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "audit.png"
    png = base64.b64decode(cdp.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"])
    shot.write_bytes(png)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000

    # the baseline toggle (what all users share: popularity) re-ranks through the API the same way
    assert "popularity" in cdp.js("document.querySelector('#baseline-row').textContent")
    cdp.js("document.querySelector('#baseline-toggle').click()")
    cdp.wait("(s => s.dataset.state === 'ready' && s.dataset.baseline === '0.4')(document.querySelector('#rec-status'))")
    _, with_base = c.request("GET", "/recommend", {"user_id": user, "k": 10, "suppress": str(chosen),
                                                   "suppress_baseline": "0.4"})
    assert with_base["baseline"] == {"strength": 0.4, "source": "request"}
    assert cdp.js("[...document.querySelectorAll('#rec-list li')].map(li => li.dataset.itemId)") == _ids(with_base)
    cdp.js("document.querySelector('#baseline-toggle').click()")
    cdp.wait("(s => s.dataset.state === 'ready' && s.dataset.baseline === '0')(document.querySelector('#rec-status'))")
    assert cdp.js("[...document.querySelectorAll('#rec-list li')].map(li => li.dataset.itemId)") == _ids(expected)

    # a partial strength for the ticked concept: the page asks for it and shows what the API says
    cdp.js("(e => { e.value = '0.5'; e.dispatchEvent(new Event('change')); })(document.querySelector('#suppress-strength'))")
    cdp.wait("(s => s.dataset.state === 'ready' && s.dataset.strength === '0.5')(document.querySelector('#rec-status'))")
    _, half = c.request("GET", "/recommend", {"user_id": user, "k": 10, "suppress": str(chosen), "suppress_strength": "0.5"})
    assert half["suppressed"][0]["strength"] == 0.5
    assert cdp.js("[...document.querySelectorAll('#rec-list li')].map(li => li.dataset.itemId)") == _ids(half)
    assert "at 0.5" in cdp.js("document.querySelector('#rec-status').textContent")

    # the dictionary, the drift panel and the recent traffic (served from the Redis stream)
    cdp.js("document.querySelector('.tab[data-view=\"dict\"]').click()")
    cdp.wait("document.querySelector('#dict-status').dataset.state === 'ready'")
    cdp.wait("document.querySelector('#drift-summary').dataset.state === 'ready'")
    _, drift = c.request("GET", "/drift", {"top": 15}, headers=AUDIT)
    assert drift["window_requests"] > 0 and drift["latents"]
    fired = [x for x in drift["latents"] if x["live_rate"] > 0]
    assert fired and all(x["live_mean_activation"] > 0 for x in fired)
    assert all(x["live_mean_activation"] is None for x in drift["latents"] if x["live_rate"] == 0)
    assert cdp.js("document.querySelectorAll('#drift-table tbody tr').length") == len(drift["latents"])
    # ranked by drift in strength instead: the page lists what the API lists, in its order
    cdp.js("(e => { e.value = 'strength'; e.dispatchEvent(new Event('change')); })(document.querySelector('#drift-sort'))")
    cdp.wait("document.querySelector('#drift-summary').dataset.state === 'ready'")
    _, by_strength = c.request("GET", "/drift", {"top": 15, "sort": "strength"}, headers=AUDIT)
    cdp.wait(f"[...document.querySelectorAll('#drift-table tbody tr')].map(r => +r.dataset.latent).join(',') === "
             f"{json.dumps(','.join(str(x['latent']) for x in by_strength['latents']))}")
    _, top_conf = c.request("GET", "/concepts", {"sort": "-confidence", "limit": 100})
    rows = cdp.js("[...document.querySelectorAll('#dict-table tbody tr')].map(r => +r.dataset.latent)")
    assert rows == [x["latent"] for x in top_conf["concepts"]]
    word = next((x["description"].split()[0].strip(",;.") for x in top_conf["concepts"] if x.get("description")), None)
    if word:
        cdp.js(f"(q => {{ q.value = {json.dumps(word)}; q.dispatchEvent(new Event('input')); }})(document.querySelector('#dict-q'))")
        _, found = c.request("GET", "/concepts", {"q": word, "sort": "-confidence", "limit": 100})
        want = [x["latent"] for x in found["concepts"]]
        cdp.wait(f"JSON.stringify([...document.querySelectorAll('#dict-table tbody tr')].map(r => +r.dataset.latent)) === {json.dumps(json.dumps(want, separators=(',', ':')))}")

    (ARTIFACTS / "audit-dictionary.png").write_bytes(
        base64.b64decode(cdp.call("Page.captureScreenshot", format="png")["data"]))

    cdp.js("document.querySelector('.tab[data-view=\"recent\"]').click()")
    cdp.wait("document.querySelector('#recent-status').dataset.state === 'ready'")
    _, recent = c.request("GET", "/audit/recent", {"limit": 50}, headers=AUDIT)
    assert recent["entries"] and recent["entries"][0]["id"] != "" and not recent["entries"][0]["id"].startswith("local-")
    assert redis_server.client().xlen("audit-test:recent") >= 3
    assert cdp.js("document.querySelectorAll('#recent-table tbody tr').length") >= 3
    c.close()


def test_policy_picker_applies_a_stored_policy_exactly_like_the_api(server, browser):
    """A stored policy (what ``recsae debias --save-policy`` writes) is listed read-only with the
    audit token, picked on the page, and the page's list, left/entered items and policy-marked
    concepts are what ``/recommend?policy=`` answers; the choice stays on for the next user."""
    proc, _ = server
    c = Client(proc.port)
    user = "3"
    _, base = c.request("GET", "/recommend", {"user_id": user, "k": 10, "explain": "true"})
    latent = next(a["latent"] for a in sorted(base["active_latents"], key=lambda a: -a["activation"])
                  if set(_ids(c.request("GET", "/recommend", {"user_id": user, "k": 10, "suppress": str(a["latent"])})[1]))
                  != set(_ids(base)))
    body = {"latents": [latent], "strength": 0.8, "baseline": 0.2, "description": "browser-test policy"}
    status, stored = c.request("PUT", "/admin/policies/audit-pick", body=body, headers=ADMIN)
    assert status == 200, stored
    try:
        assert c.request("PUT", "/admin/policies/x", body=body, headers=AUDIT)[0] == 401  # the audit token can't write
        status, listed = c.request("GET", "/audit/policies", headers=AUDIT)
        assert status == 200 and "audit-pick" in [p["name"] for p in listed["policies"]]
        _, want = c.request("GET", "/recommend", {"user_id": user, "k": 10, "explain": "true", "policy": "audit-pick"})
        assert {"latent": latent, "strength": 0.8, "source": "policy:audit-pick", "active": True} in want["suppressed"]

        cdp = browser
        cdp.call("Page.navigate", url=f"{proc.base}/audit")
        cdp.wait("document.readyState === 'complete' && !!document.querySelector('#policy')")
        cdp.js(f"document.querySelector('#token').value = {json.dumps(TOKEN)}; document.querySelector('#token-save').click()")
        cdp.wait("document.querySelector('#policy').dataset.state === 'ready' && "
                 "[...document.querySelector('#policy').options].some(o => o.value === 'audit-pick')")
        cdp.js(f"document.querySelector('#user-id').value = {json.dumps(user)}; document.querySelector('#show').click()")
        cdp.wait("(s => s.dataset.state === 'ready' && s.dataset.policy === '')(document.querySelector('#rec-status'))")
        assert cdp.js("[...document.querySelectorAll('#rec-list li')].map(li => li.dataset.itemId)") == _ids(base)
        cdp.js("(e => { e.value = 'audit-pick'; e.dispatchEvent(new Event('change')); })(document.querySelector('#policy'))")
        cdp.wait("(s => s.dataset.state === 'ready' && s.dataset.policy === 'audit-pick')(document.querySelector('#rec-status'))")
        assert cdp.js("[...document.querySelectorAll('#rec-list li')].map(li => li.dataset.itemId)") == _ids(want)
        left = cdp.js("[...document.querySelectorAll('#left-list li[data-item-id]')].map(li => li.dataset.itemId)")
        assert left == [i for i in _ids(base) if i not in _ids(want)] and left
        assert cdp.js("[...document.querySelectorAll('#concept-bars .bar-row.by-policy')].map(r => +r.dataset.latent)") == [latent]
        # marked as the policy's, not ticked as the request's; the policy's baseline shows on its row
        assert cdp.js(f"document.querySelector('input.suppress-toggle[data-latent=\"{latent}\"]').checked") is False
        assert cdp.js("document.querySelector('#baseline-row').dataset.policyStrength") == "0.2"
        assert "browser-test policy" in cdp.js("document.querySelector('#policy-desc').textContent")
        assert "policy audit-pick" in cdp.js("document.querySelector('#rec-status').textContent")
        (ARTIFACTS / "audit-policy.png").write_bytes(
            base64.b64decode(cdp.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]))
        # the next user is shown with the policy still on, as the API answers for them
        _, other = c.request("GET", "/recommend", {"user_id": "4", "k": 10, "explain": "true", "policy": "audit-pick"})
        cdp.js("document.querySelector('#user-id').value = '4'; document.querySelector('#show').click()")
        cdp.wait("(s => s.dataset.state === 'ready' && s.dataset.policy === 'audit-pick' && "
                 "s.textContent.includes('policy'))(document.querySelector('#rec-status'))")
        cdp.wait(f"[...document.querySelectorAll('#rec-list li')].map(li => li.dataset.itemId).join(',') === "
                 f"{json.dumps(','.join(_ids(other)))}")
    finally:
        c.request("DELETE", "/admin/policies/audit-pick", headers=ADMIN)
        c.close()
