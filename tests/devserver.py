"""Start and stop local processes for tests and benchmarks: a private ``redis-server`` and
``bentoml serve service.service:RecSAEService``. Standard library + redis only.

Harness only (tests and ``benchmarks/`` import it; the service never does), so it lives here.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen | None, timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


class RedisServer:
    """A private, non-persistent redis-server on a free loopback port (stop/restart at will)."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed")
        self.exe = exe

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 60.0) -> "RedisServer":
        self.proc = subprocess.Popen(
            [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.client().ping():
                    return self
            except Exception:  # noqa: BLE001
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None

    def client(self):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, socket_connect_timeout=1)

    def __enter__(self) -> "RedisServer":
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class ServeProcess:
    """``bentoml serve`` for one bundle on a free loopback port; stderr/stdout go to a log file."""

    def __init__(self, env: dict[str, str], port: int | None = None, log_dir: str | None = None):
        self.port = port or free_port()
        self.env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True", **env}
        self.env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # bentoml sets its own for the workers
        self.log_path = Path(log_dir or tempfile.mkdtemp(prefix="recsae-serve-")) / f"serve-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 300.0) -> "ServeProcess":
        """Launch and wait until ready; a server that never gets ready is stopped, not leaked."""
        self.launch()
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def launch(self) -> "ServeProcess":
        """Start the process without waiting (start several, then ``wait_ready`` each)."""
        bentoml = Path(sys.executable).with_name("bentoml")
        cmd = [str(bentoml), "serve", "service.service:RecSAEService", "--port", str(self.port), "--host", "127.0.0.1"]
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        return self

    def wait_ready(self, timeout: float) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"bentoml serve exited ({self.proc.returncode}):\n{self.log()[-3000:]}")
            try:
                status, _ = self.get("/readyz", timeout=1.0)
                if status == 200:
                    return time.monotonic() - t0
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"bentoml serve not ready after {timeout} s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        try:
            return self.log_path.read_text()
        except OSError:
            return ""

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None
        if getattr(self, "_log", None):
            self._log.close()

    # -- tiny HTTP client (one connection per call; see Client for keep-alive) -----------------
    def request(self, method: str, path: str, params: dict | None = None, body: Any = None,
                headers: dict | None = None, timeout: float = 10.0) -> tuple[int, Any]:
        c = Client(self.port, timeout)
        try:
            return c.request(method, path, params, body, headers)
        finally:
            c.close()

    def get(self, path: str, params: dict | None = None, timeout: float = 10.0, **kw: Any) -> tuple[int, Any]:
        return self.request("GET", path, params, timeout=timeout, **kw)

    def __enter__(self) -> "ServeProcess":
        # ``with ServeProcess(env).start() as s`` is already started: never launch a second one
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class Client:
    """A keep-alive HTTP/1.1 client on one connection (what a load generator wants)."""

    def __init__(self, port: int, timeout: float = 10.0, host: str = "127.0.0.1"):
        self.conn = http.client.HTTPConnection(host, port, timeout=timeout)

    def request(self, method: str, path: str, params: dict | None = None, body: Any = None,
                headers: dict | None = None, parse: bool = True) -> tuple[int, Any]:
        """(status, body): JSON bodies decoded unless ``parse`` is false (then raw bytes)."""
        url = path + ("?" + urlencode(params) if params else "")
        hdrs = dict(headers or {})
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        try:
            self.conn.request(method, url, body=data, headers=hdrs)
            resp = self.conn.getresponse()
        except (http.client.HTTPException, ConnectionError):
            self.conn.close()  # reconnect once: the server may have closed an idle connection
            self.conn.request(method, url, body=data, headers=hdrs)
            resp = self.conn.getresponse()
        raw = resp.read()
        if not parse:
            return resp.status, raw
        ctype = resp.getheader("content-type", "")
        if "json" in ctype and raw:
            return resp.status, json.loads(raw)
        return resp.status, raw.decode(errors="replace")

    def close(self) -> None:
        self.conn.close()
