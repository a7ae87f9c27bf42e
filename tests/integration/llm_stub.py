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
Every chat request is recorded in ``requests`` (kind, latent, prompt hash, fault, arrival time
``t``). With ``retry_after`` set, 429 answers carry that ``Retry-After`` header.

The Batch API is served too: ``POST /v1/files`` (multipart upload), ``GET /v1/files/<id>/content``,
``POST /v1/batches``, ``GET /v1/batches/<id>``, ``POST /v1/batches/<id>/cancel``. A batch is
``in_progress`` for its first ``batch_polls`` retrieves, then its JSONL is answered line by line by
the same logic and the same fault scripts as chat requests (a 4xx/5xx fault -> a line in the error
file, ``invalid_json``/``empty`` -> a bad answer in the output file, ``timeout`` -> the line is
missing). ``batch_fail = True`` makes the next batch end ``failed``. Lines answered are recorded in
``batch_lines``, API calls in ``api_calls`` ("create_batch", "retrieve <id>", ...).
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
        self.retry_after: float | None = None
        self.batch_polls = 1
        self.by_exemplars = False  # describe by the prompt's first exemplar item instead of an attribute
        self.batch_fail = False
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.batch_lines: list[dict] = []
        self.api_calls: list[str] = []
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
        path = h.path.split("?")[0].rstrip("/")
        if method == "GET" and path.endswith("/models"):
            self._record("models", None, body, None)
            return self._send(h, 200, {"object": "list", "data": [{"id": "stub-model", "object": "model", "created": 0, "owned_by": "stub"}]})  # fmt: skip
        if "/files" in path or "/batches" in path:
            return self.batch_api(h, method, path, body)
        if method != "POST" or not path.endswith("/chat/completions"):
            return self._send(h, 404, {"error": {"message": "not found"}})
        status, obj, headers = self.respond(body, wait=True)
        self._send(h, status, obj, headers)

    def respond(self, body: bytes, wait: bool) -> tuple[int, dict | None, dict]:
        """(HTTP status, JSON body, headers) for one chat request; None body = no answer (timeout)."""
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
        if wait:
            self._record(kind, latent, body, fault)
        else:
            with self.lock:
                self.batch_lines.append({"kind": kind, "latent": latent, "hash": hashlib.sha256(body).hexdigest(), "fault": fault})
        if fault == "401":
            return 401, {"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}}, {}
        if fault == "429":
            headers = {"Retry-After": f"{self.retry_after:g}"} if self.retry_after is not None else {}
            return 429, {"error": {"message": "Rate limit reached", "type": "requests"}}, headers
        if fault == "500":
            return 500, {"error": {"message": "internal error"}}, {}
        if fault == "timeout":
            if not wait:
                return 0, None, {}
            time.sleep(self.timeout_sleep)
        if fault == "invalid_json":
            content = "Sure! Here is the JSON you asked for: {description: oops"
        elif fault == "empty":
            content = json.dumps({"description": "  ", "attributes": []})
        else:
            content = json.dumps(answer(kind, latent, prompt, self.by_exemplars))
        return 200, {
            "id": "chatcmpl-stub", "object": "chat.completion", "created": int(time.time()), "model": req.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": len(prompt) // 4, "completion_tokens": len(content) // 4,
                      "total_tokens": len(prompt) // 4 + len(content) // 4},
        }, {}  # fmt: skip

    # -- Batch API -----------------------------------------------------------------------------
    def batch_api(self, h: BaseHTTPRequestHandler, method: str, path: str, body: bytes) -> None:
        parts = path.split("/")
        if method == "POST" and parts[-1] == "files":
            fields = parse_multipart(h.headers.get("Content-Type", ""), body)
            with self.lock:
                fid = f"file-{len(self.files) + 1}"
                self.files[fid] = fields["file"][1]
                self.api_calls.append("upload")
            return self._send(h, 200, self._file(fid, fields["file"][0] or "input.jsonl", fields.get("purpose", (None, b"batch"))[1].decode()))  # fmt: skip
        if method == "GET" and parts[-1] == "content" and parts[-3] == "files":
            fid = parts[-2]
            with self.lock:
                self.api_calls.append(f"content {fid}")
            if fid not in self.files:
                return self._send(h, 404, {"error": {"message": f"no file {fid}"}})
            return self._send_raw(h, 200, self.files[fid], "application/octet-stream")
        if method == "POST" and parts[-1] == "batches":
            req = json.loads(body)
            with self.lock:
                bid = f"batch_{len(self.batches) + 1}"
                self.api_calls.append("create_batch")
                self.batches[bid] = {
                    "id": bid, "object": "batch", "endpoint": req["endpoint"], "input_file_id": req["input_file_id"],
                    "completion_window": req["completion_window"], "status": "validating", "created_at": int(time.time()),
                    "metadata": req.get("metadata"), "request_counts": {"total": 0, "completed": 0, "failed": 0},
                    "polls": 0, "fail": self.batch_fail,
                }  # fmt: skip
                self.batch_fail = False
            return self._send(h, 200, self._public(bid))
        if parts[-2] == "batches" or (parts[-3] == "batches" and parts[-1] == "cancel"):
            bid = parts[-1] if parts[-2] == "batches" else parts[-2]
            if bid not in self.batches:
                return self._send(h, 404, {"error": {"message": f"no batch {bid}"}})
            if parts[-1] == "cancel":
                with self.lock:
                    self.api_calls.append(f"cancel {bid}")
                    self.batches[bid]["status"] = "cancelled"
                return self._send(h, 200, self._public(bid))
            with self.lock:
                self.api_calls.append(f"retrieve {bid}")
                b = self.batches[bid]
                b["polls"] += 1
                due = b["status"] in ("validating", "in_progress") and b["polls"] > self.batch_polls
                if b["status"] == "validating":
                    b["status"] = "in_progress"
            if due:
                self._run_batch(bid)
            return self._send(h, 200, self._public(bid))
        return self._send(h, 404, {"error": {"message": "not found"}})

    def _run_batch(self, bid: str) -> None:
        b = self.batches[bid]
        if b["fail"]:
            b.update(status="failed", errors={"object": "list", "data": [{"code": "stub_failure", "message": "the stub failed this batch"}]})  # fmt: skip
            return
        out, err = [], []
        lines = self.files[b["input_file_id"]].decode().splitlines()
        for i, line in enumerate(lines):
            rec = json.loads(line)
            status, obj, _ = self.respond(json.dumps(rec["body"]).encode(), wait=False)
            if obj is None:  # "timeout": the line is simply missing from the output
                continue
            row = {"id": f"batch_req_{i}", "custom_id": rec["custom_id"], "response": {"status_code": status, "request_id": f"req_{i}", "body": obj}, "error": None}  # fmt: skip
            (out if status == 200 else err).append(json.dumps(row))
        with self.lock:
            for name, rows in (("output_file_id", out), ("error_file_id", err)):
                if rows:
                    fid = f"file-{len(self.files) + 1}"
                    self.files[fid] = ("\n".join(rows) + "\n").encode()
                    b[name] = fid
            b["status"] = "completed"
            b["request_counts"] = {"total": len(lines), "completed": len(out), "failed": len(err)}

    def _public(self, bid: str) -> dict:
        return {k: v for k, v in self.batches[bid].items() if k not in ("polls", "fail")}

    @staticmethod
    def _file(fid: str, name: str, purpose: str) -> dict:
        return {"id": fid, "object": "file", "bytes": 0, "created_at": int(time.time()), "filename": name, "purpose": purpose, "status": "processed"}  # fmt: skip

    def _record(self, kind: str, latent: int | None, body: bytes, fault: str | None) -> None:
        with self.lock:
            self.requests.append({"kind": kind, "latent": latent, "hash": hashlib.sha256(body).hexdigest(), "fault": fault, "t": time.monotonic()})  # fmt: skip

    @classmethod
    def _send(cls, h: BaseHTTPRequestHandler, status: int, obj: dict, headers: dict | None = None) -> None:
        cls._send_raw(h, status, json.dumps(obj).encode(), "application/json", headers)

    @staticmethod
    def _send_raw(h: BaseHTTPRequestHandler, status: int, data: bytes, ctype: str, headers: dict | None = None) -> None:
        try:
            h.send_response(status)
            h.send_header("Content-Type", ctype)
            h.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
            pass


def parse_multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """{field: (filename, bytes)} of a multipart/form-data body."""
    from email.parser import BytesParser
    from email.policy import HTTP

    msg = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    out = {}
    for part in msg.iter_parts():
        out[part.get_param("name", header="content-disposition")] = (part.get_filename(), part.get_payload(decode=True))
    return out


def classify(prompt: str) -> tuple[str, int | None]:
    m = re.search(r"^Latent (\d+) of the SAE", prompt, re.M)
    if m:
        return "describe", int(m.group(1))
    m = re.search(r'described as: "Stub (\d+):', prompt)
    return "score", int(m.group(1)) if m else None


def answer(kind: str, latent: int | None, prompt: str, by_exemplars: bool = False) -> dict:
    if kind == "describe" and by_exemplars:
        m = re.search(r"^Exemplar items \(.*?\): (.+?) \((\S+?)\)(?:;|$)", prompt, re.M)
        if m:
            return {"description": f"Stub {latent}: {m.group(1)}", "attributes": [m.group(2)]}
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
    from recsae.stages import Activations

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


# -- a names-and-tags world --------------------------------------------------------------------------
NAMES_GROUPS = (  # (group, artists, the tags that separate the group)
    ("teen pop", ["Britney Spears", "Christina Aguilera", "Rihanna", "Jessica Simpson", "Mandy Moore",
                  "Hilary Duff", "Ashlee Simpson", "JoJo", "Ciara", "Cassie"], ["pop", "dance"]),
    ("post-punk", ["Joy Division", "Interpol", "The Cure", "Bauhaus", "Siouxsie and the Banshees", "Editors",
                   "Wire", "Gang of Four", "Echo & the Bunnymen", "The Fall"], ["post-punk", "indie"]),
    ("outlaw country", ["Willie Nelson", "Waylon Jennings", "Johnny Cash", "Merle Haggard", "Kris Kristofferson",
                        "David Allan Coe", "Billy Joe Shaver", "Townes Van Zandt", "Guy Clark", "Steve Earle"],
     ["country", "americana"]),
    ("bebop", ["Charlie Parker (1920-1955)", "Dizzy Gillespie", "Thelonious Monk", "Bud Powell (1924-)", "Max Roach",
               "Sonny Stitt", "Fats Navarro", "Kenny Clarke", "Tadd Dameron", "Dexter Gordon"], ["jazz", "bebop"]),
)  # fmt: skip


def names_world(seed: int = 0):
    """(Dataset, SAEKernel, item_emb, Activations, groups): items known only by a name and free
    tags, no torch. Users listen within one group (popular artists more often); a group's items
    carry its two tags 80% of the time, every item the noise tags "seen live"/"favorites" half the
    time. Latent g reads "share of the last 5 items in group g"; latent G duplicates latent 0;
    two latents read noise; the last never fires. ``groups``: (name, item indices, tags) per group.
    """
    from recsae.data import leave_one_out
    from recsae.data.core import Dataset
    from recsae.data.features import _feature_table, add_popularity
    from recsae.kernel import SAEKernel, history_windows
    from recsae.stages import Activations

    rng = np.random.default_rng(seed)
    titles, feats, groups = [], [], []
    for name, artists, tags in NAMES_GROUPS:
        start = len(titles)
        for a in artists:
            titles.append(a)
            feats.append([f"tag:{t}" for t in tags if rng.random() < 0.8]
                         + [f"tag:{t}" for t in ("seen live", "favorites") if rng.random() < 0.5])  # fmt: skip
        groups.append((name, np.arange(start, len(titles)), tags))
    n_items, G = len(titles), len(groups)
    weights = 1.0 / np.arange(1, 11) ** 0.8  # popular artists first within a group
    users, items = [], []
    for u in range(240):
        members = groups[u % G][1]
        for _ in range(int(rng.integers(15, 26))):
            pick = rng.integers(n_items) if rng.random() < 0.1 else rng.choice(members, p=weights / weights.sum())
            users.append(u)
            items.append(int(pick))
    users, items = np.asarray(users), np.asarray(items)
    ds = Dataset(
        name="names", user_ids=np.array([f"u{u}" for u in range(240)]), item_ids=np.array([str(i) for i in range(n_items)]),
        users=users, items=items, times=np.arange(len(users)), item_titles=titles,
        item_features=add_popularity(_feature_table(feats), items, n_items),
    )  # fmt: skip
    split = leave_one_out(ds)
    member = np.zeros((n_items + 1, G), np.float32)
    for g, (_, idx, _) in enumerate(groups):
        member[idx, g] = 1
    us, hists = [], []
    for u, seq in enumerate(split.train):
        for t in range(1, len(seq)):
            us.append(u)
            hists.append(seq[:t])
    us = np.asarray(us)
    win = history_windows(hists, 20, n_items)
    d = G + 3
    x = np.zeros((len(win), d), np.float32)
    x[:, :G] = member[win[:, -5:]].mean(axis=1)
    x[:, G:] = 0.1 * rng.standard_normal((len(win), d - G)).astype(np.float32)
    m = G + 1 + 2 + 1
    W = np.zeros((m, d), np.float32)
    W[:G, :G] = np.eye(G)
    W[G, 0] = 1.0  # a near-duplicate of latent 0
    W[G + 1 : G + 3, G:] = rng.standard_normal((2, d - G))
    b = np.full(m, -0.4, np.float32)
    b[G] = -0.45
    b[-1] = -100.0
    kernel = SAEKernel(W, b, W.copy(), np.zeros(d, np.float32), k=3)
    item_emb = 0.3 * rng.standard_normal((n_items, d)).astype(np.float32)
    item_emb[:, :G] += 2 * member[:-1]
    hold = rng.random(len(win)) < 0.25
    acts = Activations(x[~hold], x[hold], us[~hold], us[hold], win[~hold], win[hold])
    return ds, kernel, item_emb, acts, groups
