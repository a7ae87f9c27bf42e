"""Loaders that turn public recommendation datasets into a typed :class:`Dataset`.

Every loader maps raw user/item ids (kept as strings) to dense 0-based indices, keeps only the
items that occur in the (filtered) log, and attaches binary item features so latents can be
interpreted. Parsing is line by line with the stdlib so that a malformed file fails with a
``DataError`` naming the file and the line, instead of a numpy/pandas traceback.

Feature naming (``"group:value"``):

* ``genre:<name>``       genres as spelled by the source (``genre:Horror``, ``genre:Sci-Fi``);
  the placeholders ``unknown`` (ML-100K) and ``(no genres listed)`` (ML-latest) are dropped.
* ``decade:<NNNN>s``     from the ``(year)`` (or ``(year-year)``) at the end of the title, else the
  release date; only for MovieLens layouts, whose titles declare the year (a ReChorus meta file
  with ``movieId`` or ``genres``). Other names are never parsed: an artist "Name (1935-)" has no
  release year.
* ``tag:<tag>``          ML-latest only: the ``top_tags`` most frequent user tags, lower-cased.
* ``<group>:<code>``     ReChorus categorical columns ``i_<group>`` / ``i_<group>_c``
  (Grocery: ``category:12``).
* ``popularity:head|mid|tail``  from the interaction log, disjoint buckets by interaction count,
  cut at count values so that ties never straddle a bucket and no bucket is empty: ``head`` aims
  at the 10% most-interacted items, ``head`` + ``mid`` at 50%, ``tail`` is the rest. Each cut is
  the count whose share of items at or above it is nearest the target (leaving at least one count
  value for every less popular bucket), so a log where 60% of the items have one user gets those
  60% as ``tail``. With two distinct counts only head/tail; with one, no popularity feature.
  Recomputed after every filter.
* user features (MovieLens): ``age:<bucket>`` (ML-1M buckets: ``Under 18``, ``18-24``, ``25-34``,
  ``35-44``, ``45-49``, ``50-55``, ``56+``), ``gender:F|M``, ``occupation:<name>``.

Feature columns that no remaining entity has are dropped.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from recsae import ConfigError, DataError
from recsae.data.core import Dataset, FeatureTable
from recsae.data.features import _drop_empty, add_popularity
from recsae.data.formats import _RECHORUS_SPLITS, load_ml1m, load_ml100k, load_movielens_latest, load_rechorus
from recsae.data.logfile import ItemFile, load_csv
from recsae.data.readers import _FETCHABLE, PathLike
from recsae.data.synthetic import make_synthetic

__all__ = [
    "DATASET_NAMES",
    "ItemFile",
    "default_data_dir",
    "kcore_filter",
    "load_csv",
    "load_dataset",
    "load_ml100k",
    "load_ml1m",
    "load_movielens_latest",
    "load_rechorus",
    "locate_dataset",
]


#: Names accepted by :func:`load_dataset`, mapped to their folder under the data directory.
DATASET_NAMES: dict[str, str | None] = {
    "ml-100k": "ml-100k",
    "ml-1m": "ml-1m",
    "ml-latest-small": "ml-latest-small",
    "ml-latest": "ml-latest",
    "grocery": "recsae-reference/Grocery_and_Gourmet_Food",
    "synthetic": None,
}


#: ``shared/data`` next to the repository checkout (licensed copies read in place, never copied in).
SHARED_DATA_DIR = Path(__file__).resolve().parents[3] / "shared" / "data"


def default_data_dir() -> Path:
    """The one folder ``recsae train``, ``recsae fetch`` and the loaders use when given none.

    ``$RECSAE_DATA_DIR`` if set; else ``../shared/data`` next to the repository if it exists
    (a shared copy of the licensed data); else the user cache, ``$XDG_CACHE_HOME/recsae/data``
    (``~/.cache/recsae/data``). Fetch writes where train reads, so neither needs a flag.
    """
    env = os.environ.get("RECSAE_DATA_DIR")
    if env:
        return Path(env).expanduser()
    if SHARED_DATA_DIR.is_dir():
        return SHARED_DATA_DIR
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "recsae" / "data"


# --------------------------------------------------------------------------------------------
# Filtering and dispatch
# --------------------------------------------------------------------------------------------


def subset(ds: Dataset, keep: np.ndarray, filters: dict | None = None) -> Dataset:
    """Keep the interactions where ``keep`` is true; re-index users/items, recompute popularity."""
    if not keep.any():
        raise DataError(f"dataset {ds.name!r}: filters {filters} removed every interaction")
    uk, ucodes = np.unique(ds.users[keep], return_inverse=True)
    ik, icodes = np.unique(ds.items[keep], return_inverse=True)
    static = FeatureTable(ds.item_features.names, ds.item_features.matrix[ik])
    uf = None
    if ds.user_features is not None:
        uf = _drop_empty(FeatureTable(ds.user_features.names, ds.user_features.matrix[uk]))
    meta = dict(ds.meta)
    meta["filters"] = {**ds.meta.get("filters", {}), **(filters or {})}
    meta["counts"] = {
        **ds.meta.get("counts", {}),
        "interactions": int(keep.sum()),
        "users": len(uk),
        "items": len(ik),
    }
    return Dataset(
        name=ds.name,
        user_ids=ds.user_ids[uk],
        item_ids=ds.item_ids[ik],
        users=ucodes.astype(np.int32),
        items=icodes.astype(np.int32),
        times=ds.times[keep],
        item_titles=[ds.item_titles[i] for i in ik],
        item_features=add_popularity(static, icodes, len(ik)),
        user_features=uf,
        meta=meta,
    )


def kcore_filter(ds: Dataset, k: int) -> Dataset:
    """Iteratively drop users and items with fewer than ``k`` interactions, then re-index.

    Dropping an item can push a user below ``k`` (and vice versa), hence the fixed point.
    """
    if k < 0:
        raise ConfigError(f"kcore must be >= 0, not {k}")
    if k <= 1:
        return ds
    keep = np.ones(ds.n_interactions, dtype=bool)
    while True:
        ucnt = np.bincount(ds.users[keep], minlength=ds.n_users)
        icnt = np.bincount(ds.items[keep], minlength=ds.n_items)
        bad = keep & ((ucnt[ds.users] < k) | (icnt[ds.items] < k))
        if not bad.any():
            break
        keep &= ~bad
    return subset(ds, keep, {"kcore": k})


_OWN_LOG_HINT = (
    "For your own interaction log, save it in a folder as a tab-separated train.csv with a header "
    "user_id, item_id, time (one interaction a line; the ReChorus format) and pass that folder"
)


def _detect(root: Path) -> str:
    if (root / "u.data").is_file():
        return "ml-100k"
    if (root / "ratings.dat").is_file():
        return "ml-1m"
    if (root / "ratings.csv").is_file():
        return "ml-latest"
    if any((root / f).is_file() for f in _RECHORUS_SPLITS):
        return "rechorus"
    if (root / "movies.dat").is_file():
        raise DataError(
            f"{root} has movies.dat but no ratings.dat (an ML-1M metadata-only copy): "
            "run `recsae fetch ml-1m` or pass --data-dir pointing at a full copy"
        )
    if not any(root.iterdir()):
        raise DataError(
            f"{root} is empty: put a dataset's files in it (u.data for ML-100K, ratings.dat for "
            "ML-1M, ratings.csv for ML-latest, train.csv for ReChorus), or run `recsae fetch "
            "ml-100k` and use --dataset ml-100k"
        )
    raise DataError(
        f"cannot tell the format of {root}: expected u.data (ML-100K), ratings.dat (ML-1M), "
        f"ratings.csv (ML-latest) or train.csv (ReChorus). {_OWN_LOG_HINT}"
    )


def locate_dataset(
    name_or_path: PathLike, data_dir: PathLike | None = None, min_rating: float | str | None = None, kcore: int = 0
) -> tuple[Path | None, str]:
    """``(folder, format)`` of a dataset name or folder, checked without reading it.

    Raises the ``DataError``/``ConfigError`` that :func:`load_dataset` would raise for a wrong
    name, a missing folder or an unknown format, so a command can refuse bad input before it
    imports torch or creates a work folder. The synthetic dataset has no folder (``None``).
    """
    if min_rating == "auto" and (os.fspath(name_or_path) in ("grocery", "synthetic")):
        min_rating = None
    if kcore < 0:
        raise ConfigError(f"kcore must be >= 0, not {kcore}")
    text = os.fspath(name_or_path)
    base = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    if text in DATASET_NAMES:
        if text == "synthetic":
            if min_rating is not None:
                raise ConfigError("the synthetic dataset has no ratings: drop min_rating")
            return None, "synthetic"
        root = base / str(DATASET_NAMES[text])
        if text == "grocery" and not root.is_dir() and (base / "Grocery_and_Gourmet_Food").is_dir():
            root = base / "Grocery_and_Gourmet_Food"
        if not root.is_dir():
            how = f", or run `recsae fetch {text}`" if text in _FETCHABLE else ""
            raise DataError(
                f"dataset {text!r} not found at {root}: pass --data-dir (or set RECSAE_DATA_DIR) "
                f"pointing at the folder that holds {Path(str(DATASET_NAMES[text])).name}/{how}"
            )
        fmt = "rechorus" if text == "grocery" else _detect(root)
    else:
        root = Path(text).expanduser()
        if not root.exists():
            known = ", ".join(DATASET_NAMES)
            looks_like_path = os.sep in text or "/" in text or text.startswith(".")
            what = f"no such folder {root}" if looks_like_path else f"unknown dataset {text!r}"
            raise DataError(f"{what}: known names are {known}, or pass a path to a dataset folder")
        if root.is_file():
            raise DataError(f"{root} is a file: pass the folder that holds the dataset. {_OWN_LOG_HINT}")
        fmt = _detect(root)
    if fmt == "rechorus" and min_rating not in (None, "auto"):
        raise ConfigError(f"{root} (ReChorus format) has no ratings: drop min_rating")
    return root, fmt


def load_dataset(
    name_or_path: PathLike,
    data_dir: PathLike | None = None,
    min_rating: float | str | None = None,
    kcore: int = 0,
) -> Dataset:
    """Load a dataset by name (see :data:`DATASET_NAMES`) or from a folder, then k-core filter it.

    ``min_rating`` keeps ratings >= the threshold (implicit feedback); it is a ConfigError for
    data without ratings (ReChorus, synthetic). ``"auto"`` (the job's default) is the rating
    scale's midpoint (:func:`rating_threshold`) where there are ratings, nothing where there are not.
    """
    text = os.fspath(name_or_path)
    root, fmt = locate_dataset(text, data_dir, min_rating, kcore)
    if fmt == "synthetic":
        return kcore_filter(make_synthetic()[0], kcore)
    if fmt == "rechorus":
        ds = load_rechorus(root)
    elif fmt == "ml-100k":
        ds = load_ml100k(root, min_rating)
    elif fmt == "ml-1m":
        ds = load_ml1m(root, min_rating)
    else:
        ds = load_movielens_latest(root, min_rating)
    if text == "grocery":
        ds.name = "grocery"
    return kcore_filter(ds, kcore)
