"""A scriptable OpenAI-compatible chat server on 127.0.0.1, and a tiny world to describe.

``StubLLM`` answers ``GET /v1/models`` and ``POST /v1/chat/completions`` over real HTTP (the
``openai`` client talks to it unchanged). Answers are deterministic functions of the prompt:

* describe prompts ("Latent <j> of the SAE ...") -> ``{"description": "Stub <j>: <label>",
  "attributes": [<first enriched attribute>]}``;
* scoring prompts -> 8 for each sample line that mentions the label, else 2.

Faults are scripted per latent: ``faults[j] = ["429", "500"]`` are served (in order) to latent
j's next requests, ``always[j] = "timeout"`` to every one (keys ``("describe", j)`` /
``("score", j)`` target one kind of request); ``fail_after = n`` answers 401 from
the (n+1)-th chat request on. Fault kinds: timeout, 429, 500, invalid_json, empty, 401.
Every request is recorded in ``requests`` (kind, latent, prompt hash, fault).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

KEY = "stub-key"


class StubLLM:
    def __init__(self, api_key: str = KEY, timeout_sleep: float = 1.5) -> None:
        self.api_key = api_key
        self.timeout_sleep = timeout_sleep
        self.faults: dict[int | tuple[str, int], list[str]] = {}
        self.always: dict[int | tuple[str, int], str] = {}
        self.fail_after: int | None = None
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def __enter__(self) -> "StubLLM":
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                stub.handle(self, "GET")

            def do_POST(self) -> None:
                stub.handle(self, "POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)  # port 0: a free port
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def chat_requests(self, kind: str | None = None) -> list[dict]:
        with self.lock:
            return [r for r in self.requests if r["kind"] != "models" and (kind is None or r["kind"] == kind)]

    # -- behaviour -----------------------------------------------------------------------------
    def handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        body = b""
        if method == "POST":
            body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        if h.headers.get("Authorization") != f"Bearer {self.api_key}":
            self._record("models" if method == "GET" else "chat", None, body, "401")
            return self._send(h, 401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "code": "invalid_api_key"}})  # fmt: skip
        if method == "GET" and h.path.rstrip("/").endswith("/models"):
            self._record("models", None, body, None)
            return self._send(h, 200, {"object": "list", "data": [{"id": "stub-model", "object": "model", "created": 0, "owned_by": "stub"}]})  # fmt: skip
        if method != "POST" or not h.path.endswith("/chat/completions"):
            return self._send(h, 404, {"error": {"message": "not found"}})
        req = json.loads(body)
        prompt = req["messages"][-1]["content"]
        kind, latent = classify(prompt)
        with self.lock:
            n_chat = sum(r["kind"] != "models" for r in self.requests)
            fault = None
            if self.fail_after is not None and n_chat >= self.fail_after:
                fault = "401"
            else:
                for key in ((kind, latent), latent):  # ("score", 5) scripts only latent 5's scoring
                    if key in self.always:
                        fault = self.always[key]
                        break
                    if self.faults.get(key):
                        fault = self.faults[key].pop(0)
                        break
        self._record(kind, latent, body, fault)
        if fault == "401":
            return self._send(h, 401, {"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}})
        if fault == "429":
            return self._send(h, 429, {"error": {"message": "Rate limit reached", "type": "requests"}})
        if fault == "500":
            return self._send(h, 500, {"error": {"message": "internal error"}})
        if fault == "timeout":
            time.sleep(self.timeout_sleep)
        if fault == "invalid_json":
            content = "Sure! Here is the JSON you asked for: {description: oops"
        elif fault == "empty":
            content = json.dumps({"description": "  ", "attributes": []})
        else:
            content = json.dumps(answer(kind, latent, prompt))
        self._send(h, 200, {
            "id": "chatcmpl-stub", "object": "chat.completion", "created": int(time.time()), "model": req.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": len(prompt) // 4, "completion_tokens": len(content) // 4,
                      "total_tokens": len(prompt) // 4 + len(content) // 4},
        })  # fmt: skip

    def _record(self, kind: str, latent: int | None, body: bytes, fault: str | None) -> None:
        with self.lock:
            self.requests.append({"kind": kind, "latent": latent, "hash": hashlib.sha256(body).hexdigest(), "fault": fault})

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, obj: dict) -> None:
        data = json.dumps(obj).encode()
        try:
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
            pass


def classify(prompt: str) -> tuple[str, int | None]:
    m = re.search(r"^Latent (\d+) of the SAE", prompt, re.M)
    if m:
        return "describe", int(m.group(1))
    m = re.search(r'described as: "Stub (\d+):', prompt)
    return "score", int(m.group(1)) if m else None


def answer(kind: str, latent: int | None, prompt: str) -> dict:
    if kind == "describe":
        attrs = re.findall(r"^- (\S+?)(?: \(.*?\))?: ", prompt, re.M)
        attr = attrs[0] if attrs else "genre:unknown"
        return {"description": f"Stub {latent}: {attr.rsplit(':', 1)[-1]}", "attributes": [attr, "no-such:attribute"]}
    label = re.search(r'described as: "Stub \d+: (.*?)"', prompt).group(1).lower()
    lines = re.findall(r"^\d+\. (.*)$", prompt, re.M)
    return {"scores": [8 if label in ln.lower() else 2 for ln in lines]}


# -- a tiny world ------------------------------------------------------------------------------------
def tiny_world(n_latents_extra: int = 4, seed: int = 0):
    """(Dataset, SAEKernel, item_emb, Activations, PlantedTruth) in well under a second, no torch.

    The "representation" of a window is the share of its last 5 items in each planted concept
    (+ noise); latent c of the kernel reads concept c, a few extra latents read noise, and one
    latent can never fire. So latent c should be described by concept c's features.
    """
    from recsae.data import leave_one_out, make_synthetic
    from recsae.kernel import SAEKernel, history_windows
    from recsae.pipeline import Activations

    ds, truth = make_synthetic(n_users=200, n_items=200, n_concepts=8, seed=seed, min_len=20, max_len=30)
    split = leave_one_out(ds)
    rng = np.random.default_rng(seed)
    member = truth.membership(ds.n_items).astype(np.float32)  # (n_items, C)
    member = np.vstack([member, np.zeros((1, member.shape[1]), np.float32)])  # pad row
    C, d = truth.n_concepts, truth.n_concepts + 4
    users, hists = [], []
    for u, seq in enumerate(split.train):
        for t in range(1, len(seq)):
            users.append(u)
            hists.append(seq[:t])
    users = np.asarray(users)
    win = history_windows(hists, 20, ds.n_items)
    x = np.zeros((len(win), d), np.float32)
    x[:, :C] = member[win[:, -5:]].mean(axis=1)
    x[:, C:] = 0.1 * rng.standard_normal((len(win), d - C)).astype(np.float32)
    m = C + n_latents_extra + 1
    W = np.zeros((m, d), np.float32)
    W[:C, :C] = np.eye(C)
    W[C : C + n_latents_extra, C:] = rng.standard_normal((n_latents_extra, d - C))
    b = np.full(m, -0.4, np.float32)
    b[-1] = -100.0  # a latent that never fires: "dead"
    kernel = SAEKernel(W, b, W.copy(), np.zeros(d, np.float32), k=2)
    item_emb = rng.standard_normal((ds.n_items, d)).astype(np.float32)
    item_emb[:, :C] += 2 * member[:-1]
    hold = rng.random(len(win)) < 0.25
    acts = Activations(x[~hold], x[hold], users[~hold], users[hold], win[~hold], win[hold])
    return ds, kernel, item_emb, acts, truth
