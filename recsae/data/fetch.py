"""Download and unpack a GroupLens MovieLens zip, verified by SHA-256.

The data may not be redistributed, so the project never ships it: users fetch it themselves
(``recsae fetch ml-100k``). The download streams to a temporary file, the checksum is checked
before anything is unpacked, and unpacking happens in a temporary folder that is renamed into
place, so an interrupted fetch never leaves a half-written dataset folder behind. A marker file
records the verified checksum, which makes a second fetch a no-op.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tqdm import tqdm

from recsae import DataError

__all__ = ["DEFAULT_BASE_URL", "KNOWN_SHA256", "MARKER", "fetch_movielens"]

DEFAULT_BASE_URL = "https://files.grouplens.org/datasets/movielens/"

#: SHA-256 of the GroupLens zips (as listed in tensorflow/datasets url_checksums/movielens.txt;
#: sizes 4,924,029 / 5,917,549 / 978,202 bytes).
KNOWN_SHA256 = {
    "ml-100k": "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
    "ml-1m": "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
    "ml-latest-small": "696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436",
}
MARKER = ".recsae-fetch.json"
_CHUNK = 1 << 16


def _marker_sha(folder: Path) -> str | None:
    try:
        return json.loads((folder / MARKER).read_text())["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _download(url: str, part: Path, name: str, timeout: float, progress: bool) -> str:
    """Stream ``url`` into ``part``; return the SHA-256 of what was written."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(part, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(
                total=total, unit="B", unit_scale=True, desc=f"{name}.zip", disable=not progress
            ) as bar:
                while chunk := resp.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as e:
        raise DataError(f"download of {url} failed: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DataError(
            f"cannot download {url}: {reason}. Without network access, download {name}.zip "
            "by hand, unzip it, and pass --data-dir pointing at the folder that holds it"
        ) from None
    return digest.hexdigest()


def _extract(archive: Path, staging: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                target = (staging / member).resolve()
                if not target.is_relative_to(staging.resolve()):
                    raise DataError(
                        f"{archive}: member {member!r} would be written outside the folder"
                    )
            zf.extractall(staging)
    except zipfile.BadZipFile as e:
        raise DataError(f"{archive} is not a valid zip file: {e}") from None


def fetch_movielens(
    name: str,
    dest_dir: str | os.PathLike | None,
    base_url: str = DEFAULT_BASE_URL,
    expected_sha256: str | None = None,
    force: bool = False,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Fetch ``<base_url><name>.zip`` into ``dest_dir/<name>`` and return that folder.

    ``dest_dir=None`` means :func:`recsae.data.loaders.default_data_dir`. ``expected_sha256``
    defaults to :data:`KNOWN_SHA256` (required for other names). If the folder already holds a
    fetch verified with the same checksum, nothing is downloaded. A folder that
    exists without that proof is left alone unless ``force`` is set.
    """
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise DataError(f"invalid dataset name {name!r}")
    expected = (expected_sha256 or KNOWN_SHA256.get(name, "")).lower()
    if not expected:
        known = ", ".join(KNOWN_SHA256)
        raise DataError(f"no known checksum for {name!r} (known: {known}); pass expected_sha256")
    if dest_dir is None:
        from recsae.data.loaders import default_data_dir

        dest_dir = default_data_dir()
    dest = Path(dest_dir).expanduser()
    target = dest / name
    if target.is_dir() and not force:
        if _marker_sha(target) == expected:
            return target
        raise DataError(
            f"{target} already exists but was not fetched with checksum {expected[:12]}...: "
            "remove it or fetch with force=True (CLI: --force) to replace it"
        )
    created = [d for d in (dest, *dest.parents) if not d.exists()]  # removed again if the fetch fails
    dest.mkdir(parents=True, exist_ok=True)
    url = base_url.rstrip("/") + f"/{name}.zip"

    fd, part_name = tempfile.mkstemp(prefix=f".{name}-", suffix=".zip.part", dir=dest)
    os.close(fd)
    part = Path(part_name)
    staging: Path | None = None
    try:
        got = _download(url, part, name, timeout, progress)
        if got != expected:
            raise DataError(
                f"checksum mismatch for {url}: expected sha256 {expected}, got {got}; the partial "
                "file was removed (a proxy page, a truncated download, or a changed upstream file)"
            )
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=dest))
        _extract(part, staging)
        entries = [p for p in staging.iterdir() if not p.name.startswith("__MACOSX")]
        root = entries[0] if len(entries) == 1 and entries[0].is_dir() else staging
        (root / MARKER).write_text(
            json.dumps(
                {"name": name, "url": url, "sha256": got, "fetched_at": int(time.time())}, indent=2
            )
        )
        if target.exists():
            shutil.rmtree(target)
        os.replace(root, target)
        created = []
        return target
    finally:
        part.unlink(missing_ok=True)
        if staging is not None and staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
        for d in created:  # a refused fetch leaves no empty data folder behind
            try:
                d.rmdir()
            except OSError:
                break
