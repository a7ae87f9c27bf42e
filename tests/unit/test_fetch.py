"""fetch_movielens against a loopback HTTP server serving a zip built here (no real network)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from recsae import DataError
from recsae.data import load_ml100k
from recsae.data.fetch import KNOWN_SHA256, MARKER, fetch_movielens

U_ITEM = "1|Toy Story (1995)|01-Jan-1995||http://x|" + "|".join(
    ["0", "0", "0", "1", "1", "1"] + ["0"] * 13
)
U_ITEM2 = "2|Misérables, Les (1995)|01-Jan-1995||http://x|" + "|".join(
    ["0"] * 8 + ["1"] + ["0"] * 10
)


class _Server:
    def __init__(self, root: Path) -> None:
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                outer.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args) -> None:  # keep test output clean
                pass

        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(root))
        )
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/datasets/"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[_Server]:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    root = tmp_path / "srv"
    (root / "datasets").mkdir(parents=True)
    srv = _Server(root)
    yield srv
    srv.close()


def _build_zip(srv_root: Path, name: str = "ml-100k") -> str:
    """A tiny ML-100K-shaped zip (synthetic content) under the served folder; returns its sha256."""
    path = srv_root / "datasets" / f"{name}.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(
            f"{name}/u.data", "1\t1\t5\t881250949\n1\t2\t4\t881250950\n2\t1\t3\t881250951\n"
        )
        zf.writestr(f"{name}/u.item", (U_ITEM + "\n" + U_ITEM2 + "\n").encode("latin-1"))
        zf.writestr(f"{name}/u.user", "1|24|M|technician|85711\n2|53|F|other|94043\n")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fetch_verifies_extracts_and_is_idempotent(server: _Server, tmp_path: Path) -> None:
    sha = _build_zip(tmp_path / "srv")
    dest = tmp_path / "data"
    out = fetch_movielens("ml-100k", dest, base_url=server.url, expected_sha256=sha, progress=False)
    assert out == dest / "ml-100k" and (out / "u.data").is_file()
    assert server.requests == ["/datasets/ml-100k.zip"]
    assert sorted(p.name for p in dest.iterdir()) == ["ml-100k"]  # no temp files or folders left
    ds = load_ml100k(out)
    assert ds.n_interactions == 3 and ds.item_titles == [
        "Toy Story (1995)",
        "Misérables, Les (1995)",
    ]
    assert sha in (out / MARKER).read_text()

    # second call: already there and verified -> no request at all
    again = fetch_movielens(
        "ml-100k", dest, base_url=server.url, expected_sha256=sha, progress=True
    )
    assert again == out and len(server.requests) == 1

    # a different expected checksum does not silently reuse or overwrite the folder
    with pytest.raises(DataError, match="already exists.*force"):
        fetch_movielens("ml-100k", dest, base_url=server.url, expected_sha256="0" * 64)
    assert len(server.requests) == 1
    # force re-downloads and replaces atomically
    (out / "stale.txt").write_text("x")
    fetch_movielens(
        "ml-100k", dest, base_url=server.url, expected_sha256=sha, force=True, progress=False
    )
    assert (
        len(server.requests) == 2
        and not (out / "stale.txt").exists()
        and (out / "u.item").is_file()
    )


def test_checksum_mismatch_removes_partial_file(server: _Server, tmp_path: Path) -> None:
    _build_zip(tmp_path / "srv")
    dest = tmp_path / "data"
    with pytest.raises(
        DataError, match=r"checksum mismatch .*expected sha256 0{64}, got [0-9a-f]{64}"
    ):
        fetch_movielens(
            "ml-100k", dest, base_url=server.url, expected_sha256="0" * 64, progress=False
        )
    assert not dest.exists()  # neither the partial download nor a dataset folder, nor the folder itself


def test_default_checksum_is_the_known_one(server: _Server, tmp_path: Path) -> None:
    _build_zip(tmp_path / "srv")  # our zip is not the GroupLens one, so the known sha256 rejects it
    with pytest.raises(DataError, match=KNOWN_SHA256["ml-100k"]):
        fetch_movielens("ml-100k", tmp_path / "data", base_url=server.url, progress=False)
    assert not (tmp_path / "data").exists()  # nothing left behind, not even the folder


def test_http_404(server: _Server, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"ml-1m\.zip failed: HTTP 404"):
        fetch_movielens("ml-1m", tmp_path / "data", base_url=server.url, progress=False)
    assert server.requests == ["/datasets/ml-1m.zip"]
    assert not (tmp_path / "data").exists()  # nothing left behind, not even the folder


def test_unreachable_server_suggests_manual_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    srv = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    port = srv.server_address[1]
    srv.server_close()  # nothing listens on that port any more
    with pytest.raises(DataError, match=r"cannot download .*--data-dir"):
        fetch_movielens(
            "ml-100k", tmp_path, base_url=f"http://127.0.0.1:{port}/", progress=False, timeout=5
        )


def test_not_a_zip(server: _Server, tmp_path: Path) -> None:
    bogus = tmp_path / "srv" / "datasets" / "ml-latest-small.zip"
    bogus.write_bytes(b"<html>proxy login</html>")
    sha = hashlib.sha256(bogus.read_bytes()).hexdigest()
    with pytest.raises(DataError, match="not a valid zip"):
        fetch_movielens(
            "ml-latest-small",
            tmp_path / "data",
            base_url=server.url,
            expected_sha256=sha,
            progress=False,
        )
    assert not (tmp_path / "data").exists()  # nothing left behind, not even the folder


def test_unknown_name_needs_a_checksum(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no known checksum for 'ml-25m'"):
        fetch_movielens("ml-25m", tmp_path)
    with pytest.raises(DataError, match="invalid dataset name"):
        fetch_movielens("../evil", tmp_path, expected_sha256="0" * 64)
