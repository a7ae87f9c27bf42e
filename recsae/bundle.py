"""The model bundle: the one interface between the offline job and the service.

A bundle is a directory::

    manifest.json          versions, settings, metrics, and the SHA-256 of every other file
    encoder.onnx           user encoder: user ids (general/graph) or histories (sequential) -> x
    item_embeddings.npy    (n_items, d) float32; score = x . item
    sae/sae.safetensors    TopK SAE weights (+ sae/cfg.json)
    reference_stats.npz    per-latent firing frequency and mean activation (the drift baseline)
    concepts.json          the concept dictionary (one entry per latent)
    catalog.json           raw item ids, titles, item features, popularity
    users.npz              raw user ids and each user's full history (what serving looks up)
    ann.faiss              optional: approximate-retrieval index (``recsae.ann``; manifest "ann")

Writing goes to a temporary sibling directory that is renamed into place at the end, so a
failed job never leaves a partial bundle. Loading verifies every hash and names the bad file.
NumPy only: the service imports this module.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from array import array
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from recsae import BundleError, __version__

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _hash_tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def files_hash(files: dict[str, str]) -> str:
    """The bundle hash: one digest of every file's name and hash (the manifest's ``files``)."""
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def write_bundle(out: str | Path, fill: Callable[[Path], dict[str, Any]]) -> Path:
    """Create a bundle atomically.

    ``fill(tmpdir)`` writes the payload files into ``tmpdir`` and returns the manifest body
    (model, dataset, sae, metrics, ...). Hashes, versions and the bundle id are added here.
    If ``out`` exists it is replaced only after the new bundle is complete.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        body = fill(tmp)
        files = _hash_tree(tmp)
        bundle_hash = files_hash(files)
        manifest = {
            "format_version": FORMAT_VERSION,
            "recsae_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "bundle_hash": bundle_hash,
            "version": f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{bundle_hash[:8]}",
            **body,
            "files": files,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=_json_default))
        publish_modes(tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def publish_modes(root: Path) -> None:
    """Directories 0755, files 0644 under ``root`` (itself included).

    A bundle is an artifact that is shipped and mounted read-only, often for another user (the
    container's uid 10001): the modes ``mkdtemp`` (0700), safetensors (0600) or a strict umask
    leave would make it unreadable there.
    """
    for p in [root, *root.rglob("*")]:
        if not p.is_symlink():
            os.chmod(p, 0o755 if p.is_dir() else 0o644)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def verify_bundle(path: str | Path) -> dict[str, Any]:
    """Check that every file listed in the manifest exists with its hash; return the manifest."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(
            f"no bundle at {path}: build one with `recsae train --out {path}` or set RECSAE_BUNDLE"
        )
    mpath = path / MANIFEST
    try:
        manifest = json.loads(mpath.read_text())
    except FileNotFoundError:
        raise BundleError(f"{mpath} is missing: {path} is not a complete bundle; rebuild it") from None
    except json.JSONDecodeError as e:
        raise BundleError(f"{mpath} is not valid JSON ({e}); rebuild the bundle") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{path} has bundle format {manifest.get('format_version')!r}; this version reads "
            f"format {FORMAT_VERSION}: rebuild it with this recsae version"
        )
    for name, expected in manifest.get("files", {}).items():
        f = path / name
        if not f.is_file():
            raise BundleError(f"bundle file {f} is missing; rebuild the bundle")
        if sha256_file(f) != expected:
            raise BundleError(
                f"bundle file {f} does not match its manifest hash (altered or corrupt); "
                "rebuild the bundle or restore the file"
            )
    return manifest


PACK_FROM = 200_000
"""Catalogues of this many items or more keep their ids, titles and features packed
(``PackedStrings``, ``PackedIntLists``; ids found by binary search over their hashes): at 10M
items ~0.4 GB instead of ~2.5 GB of Python objects (``benchmarks/catalogue_memory.py``).
Smaller ones stay lists and a dict: faster, and small."""


_hash = hash  # (a test makes every id collide)


class _Packed(Sequence):
    """A read-only sequence stored as one flat buffer and offsets (``_off``); ``_at(i)`` reads
    row i. Indexing as a list's: negative rows, slices (as lists), IndexError."""

    __slots__ = ("_off",)
    _off: array

    def __len__(self) -> int:
        return len(self._off) - 1

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self._at(j) for j in range(*i.indices(len(self)))]
        n, i = len(self._off) - 1, int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("item index out of range")
        return self._at(i)

    def __iter__(self) -> Iterator:
        for i in range(len(self._off) - 1):
            yield self._at(i)

    def _at(self, i: int) -> Any:
        raise NotImplementedError


class PackedStrings(_Packed):
    """Read-only strings in one UTF-8 buffer with offsets; an item decodes when read."""

    __slots__ = ("_buf", "hashes")

    def __init__(self, values: Iterable[str], keep_hashes: bool = False):
        buf, off, hashes = bytearray(), array("q", [0]), array("q")
        for v in values:
            v = str(v)
            buf += v.encode("utf-8", "surrogatepass")  # any str round-trips
            off.append(len(buf))
            if keep_hashes:
                hashes.append(_hash(v))
        self._buf, self._off = bytes(buf), off
        self.hashes = hashes if keep_hashes else None
        """each string's ``hash()`` (this process's), when kept: what ``_IdIndex`` sorts"""

    def _at(self, i: int) -> str:
        return self._buf[self._off[i] : self._off[i + 1]].decode("utf-8", "surrogatepass")


class PackedIntLists(_Packed):
    """Read-only lists of small ints (an item's feature indices) as one flat array + offsets."""

    __slots__ = ("_flat",)

    def __init__(self, values: Iterable[Sequence[int]]):
        flat, off = array("i"), array("q", [0])
        for v in values:
            flat.extend(v)
            off.append(len(flat))
        self._flat, self._off = flat, off

    def _at(self, i: int) -> list[int]:
        return self._flat[self._off[i] : self._off[i + 1]].tolist()


class _IdIndex:
    """Raw id -> row: binary search over the ids' sorted hashes, then a string comparison. 16
    bytes an item whatever the ids' length (a dict of 10M str keys is ~1 GB)."""

    def __init__(self, ids: PackedStrings):
        if ids.hashes is None:
            ids = PackedStrings(ids, keep_hashes=True)
        h = np.frombuffer(ids.hashes, dtype=np.int64)
        self.ids, self.perm = ids, np.argsort(h, kind="stable")
        self.sorted = h[self.perm]
        del h
        ids.hashes = None  # sorted here: the unsorted copy is not needed any more

    def get(self, raw: str) -> int | None:
        h = _hash(raw)
        p = int(np.searchsorted(self.sorted, h))
        while p < len(self.sorted) and self.sorted[p] == h:  # equal hashes: compare the strings
            i = int(self.perm[p])
            if self.ids[i] == raw:
                return i
            p += 1
        return None


@dataclass
class Catalog:
    """What serving needs to know about items: ids, titles, features, popularity. Large
    catalogues (``PACK_FROM``) hold them packed; either way they read as sequences."""

    item_ids: Sequence[str]
    titles: Sequence[str]
    feature_names: list[str]
    item_features: Sequence[list[int]]  # per item, indices into feature_names
    popularity: np.ndarray  # interactions per item in the training data
    _index: Any = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if len(self.item_ids) >= PACK_FROM:
            if not isinstance(self.item_ids, PackedStrings):
                self.item_ids = PackedStrings(self.item_ids, keep_hashes=True)
            if not isinstance(self.titles, PackedStrings):
                self.titles = PackedStrings(self.titles)
            if not isinstance(self.item_features, PackedIntLists):
                self.item_features = PackedIntLists(self.item_features)
            self._index = _IdIndex(self.item_ids)
        else:
            self._index = {r: i for i, r in enumerate(self.item_ids)}

    def index_of(self, raw_id: str) -> int | None:
        return self._index.get(str(raw_id))

    def features_of(self, item: int) -> list[str]:
        return [self.feature_names[f] for f in self.item_features[item]]

    def to_json(self) -> dict:
        return {
            "item_ids": list(self.item_ids),
            "titles": list(self.titles),
            "feature_names": self.feature_names,
            "item_features": [list(f) for f in self.item_features],
            "popularity": self.popularity.astype(int).tolist(),
        }

    @classmethod
    def from_json(cls, d: dict) -> "Catalog":
        """From ``to_json``'s dict, which it consumes: a large catalogue is packed field by field,
        each field's lists freed before the next is packed (a lower peak while loading)."""
        if len(d["item_ids"]) >= PACK_FROM:
            for name, pack in (("item_ids", lambda v: PackedStrings(v, keep_hashes=True)),
                               ("titles", PackedStrings), ("item_features", PackedIntLists)):
                d[name] = pack(d.pop(name))
        return cls(
            d["item_ids"], d["titles"], d["feature_names"], d["item_features"],
            np.asarray(d["popularity"], dtype=np.int64),
        )


@dataclass
class UserTable:
    """Raw user ids and their full histories (CSR layout), for serving ``?user_id=``."""

    user_ids: np.ndarray  # str
    offsets: np.ndarray  # (n_users + 1,) int64
    items: np.ndarray  # int32
    # user attributes where the dataset has them (MovieLens: "gender:F", "age:25-34", ...), for the
    # audit page's segments; absent (None) in bundles of data without them and in older bundles
    feature_names: np.ndarray | None = None  # str (n_features,)
    features: np.ndarray | None = None  # bool (n_users, n_features)
    _index: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._index = {str(r): i for i, r in enumerate(self.user_ids)}

    def index_of(self, raw_id: str) -> int | None:
        return self._index.get(str(raw_id))

    def history(self, user: int) -> np.ndarray:
        return self.items[self.offsets[user] : self.offsets[user + 1]]

    def save(self, path: Path) -> None:
        extra = {}
        if self.feature_names is not None and self.features is not None:
            extra = {"feature_names": np.asarray(self.feature_names).astype(str),
                     "features": np.asarray(self.features, dtype=bool)}
        np.savez(path, user_ids=self.user_ids.astype(str), offsets=self.offsets, items=self.items, **extra)

    def with_features(self, names: list[str], matrix: np.ndarray) -> "UserTable":
        m = np.asarray(matrix, dtype=bool)
        if m.shape != (len(self.user_ids), len(names)):
            raise ValueError(f"user features {m.shape} do not match {len(self.user_ids)} users x {len(names)} names")
        return UserTable(self.user_ids, self.offsets, self.items, np.asarray(names).astype(str), m)

    @classmethod
    def from_histories(cls, user_ids: np.ndarray, histories: list[np.ndarray]) -> "UserTable":
        offsets = np.zeros(len(histories) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(h) for h in histories])
        items = np.concatenate(histories).astype(np.int32) if histories else np.zeros(0, np.int32)
        return cls(np.asarray(user_ids).astype(str), offsets, items)

    @classmethod
    def load(cls, path: Path) -> "UserTable":
        z = np.load(path, allow_pickle=False)
        if "feature_names" in z.files and "features" in z.files:
            return cls(z["user_ids"], z["offsets"], z["items"], z["feature_names"], z["features"].astype(bool))
        return cls(z["user_ids"], z["offsets"], z["items"])


@dataclass
class Bundle:
    """A verified bundle in memory (the ONNX encoder stays a path: see ``recsae.engine``)."""

    path: Path
    manifest: dict[str, Any]
    item_emb: np.ndarray
    catalog: Catalog
    users: UserTable
    concepts: list[dict]
    firing_frequency: np.ndarray
    mean_activation: np.ndarray

    @property
    def encoder_path(self) -> Path:
        return self.path / "encoder.onnx"

    @property
    def sae_path(self) -> Path:
        return self.path / "sae"

    @property
    def bundle_hash(self) -> str:
        return self.manifest["bundle_hash"]

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def model(self) -> dict[str, Any]:
        return self.manifest["model"]


def load_bundle(path: str | Path, verify: bool = True) -> Bundle:
    path = Path(path)
    manifest = verify_bundle(path) if verify else json.loads((path / MANIFEST).read_text())
    try:
        item_emb = np.load(path / "item_embeddings.npy", allow_pickle=False).astype(np.float32, copy=False)
        catalog = Catalog.from_json(json.loads((path / "catalog.json").read_text()))
        users = UserTable.load(path / "users.npz")
        concepts = json.loads((path / "concepts.json").read_text())["concepts"]
        ref = np.load(path / "reference_stats.npz", allow_pickle=False)
        freq, mean_act = ref["firing_frequency"], ref["mean_activation"]
    except (OSError, ValueError, KeyError) as e:
        raise BundleError(f"bundle {path} cannot be read ({e}); rebuild it") from e
    n_items = manifest["model"]["n_items"]
    if item_emb.shape[0] != n_items or len(catalog.item_ids) != n_items:
        raise BundleError(
            f"bundle {path}: item embeddings {item_emb.shape} and catalog "
            f"({len(catalog.item_ids)} items) disagree with the manifest's {n_items} items"
        )
    return Bundle(path, manifest, item_emb, catalog, users, concepts, freq, mean_act)
