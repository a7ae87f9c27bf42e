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

import csv
import gzip
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from recsae import ConfigError, DataError
from recsae.data.core import Dataset, FeatureTable

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

PathLike = str | os.PathLike

#: Names accepted by :func:`load_dataset`, mapped to their folder under the data directory.
DATASET_NAMES: dict[str, str | None] = {
    "ml-100k": "ml-100k",
    "ml-1m": "ml-1m",
    "ml-latest-small": "ml-latest-small",
    "ml-latest": "ml-latest",
    "grocery": "recsae-reference/Grocery_and_Gourmet_Food",
    "synthetic": None,
}
_FETCHABLE = {"ml-100k", "ml-1m", "ml-latest-small"}

POPULARITY_BUCKETS: tuple[tuple[str, float], ...] = (("head", 0.10), ("mid", 0.50), ("tail", 1.0))

ML1M_AGES = {
    "1": "Under 18",
    "18": "18-24",
    "25": "25-34",
    "35": "35-44",
    "45": "45-49",
    "50": "50-55",
    "56": "56+",
}
ML1M_OCCUPATIONS = [
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
]  # fmt: skip
ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
]  # fmt: skip
_NO_GENRE = {"unknown", "(no genres listed)", ""}
_TITLE_YEAR = re.compile(r"\((\d{4})(?:\s*[-\u2013]\s*\d{4})?\)\s*$")
_DATE_YEAR = re.compile(r"(\d{4})\s*$")


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
# Low-level reading with errors that name file and line
# --------------------------------------------------------------------------------------------


def _require(path: Path, dataset: str | None = None) -> Path:
    if not path.is_file():
        hint = "pass --data-dir pointing at the folder that holds it"
        if dataset in _FETCHABLE:
            hint += f", or run `recsae fetch {dataset}`"
        raise DataError(f"missing file {path}: {hint}")
    return path


def _lines(path: Path, encoding: str, keepends: bool = False) -> Iterator[tuple[int, str]]:
    """Decode line by line so an undecodable byte is reported with its line number (gzip too)."""
    with _open_binary(path) as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode(encoding)
            except UnicodeDecodeError as e:
                raise DataError(
                    f"{path}, line {lineno}: byte 0x{raw[e.start]:02x} at column {e.start + 1} is "
                    f"not valid {encoding}; is this the right file, or was it re-encoded?"
                ) from None
            if lineno == 1:
                line = line.lstrip("\ufeff")
            yield lineno, (line if keepends else line.rstrip("\r\n"))


def _magic(path: Path, n: int = 4) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def _open_binary(path: Path):
    """The file's bytes, transparently gunzipped when it starts with the gzip magic."""
    return gzip.open(path, "rb") if _magic(path, 2) == b"\x1f\x8b" else open(path, "rb")


def _sep_name(sep: str) -> str:
    return {"\t": "tab", ",": "comma", "|": "'|'", "::": "'::'", ";": "semicolon"}.get(
        sep, repr(sep)
    )


def _field_error(
    path: Path, lineno: int, line: str, sep: str, expected: str, got: int
) -> DataError:
    guesses = [s for s in ("\t", ",", ";", "::", "|") if s != sep and s in line]
    hint = f" It looks {_sep_name(guesses[0])}-separated." if guesses else ""
    return DataError(
        f"{path}, line {lineno}: expected {expected} {_sep_name(sep)}-separated fields, "
        f"found {got}: {line[:80]!r}.{hint}"
    )


def _rows(path: Path, sep: str, n_fields: int, encoding: str = "utf-8", exact: bool = True):
    """Yield ``(lineno, fields)`` of an unquoted delimited file; blank lines are skipped."""
    for lineno, line in _lines(path, encoding):
        if not line.strip():
            continue
        fields = line.split(sep)
        if (len(fields) != n_fields) if exact else (len(fields) < n_fields):
            raise _field_error(path, lineno, line, sep, str(n_fields), len(fields))
        yield lineno, fields


def _csv_rows(
    path: Path, sep: str = ",", encoding: str = "utf-8"
) -> Iterator[tuple[int, list[str]]]:
    """Quoted CSV (titles with commas) through :mod:`csv`, still reporting the line number."""
    reader = csv.reader((line for _, line in _lines(path, encoding, keepends=True)), delimiter=sep)
    try:
        for row in reader:
            if row:
                yield reader.line_num, row
    except csv.Error as e:
        raise DataError(f"{path}, line {reader.line_num}: {e}") from None


def _header_index(
    path: Path, header: list[str], required: Iterable[str], sep: str
) -> dict[str, int]:
    idx = {name.strip(): i for i, name in enumerate(header)}
    missing = [c for c in required if c not in idx]
    if missing:
        raw = sep.join(header)
        guesses = [s for s in ("\t", ",", ";", "::", "|") if s != sep and s in raw]
        hint = f" The header looks {_sep_name(guesses[0])}-separated." if guesses else ""
        raise DataError(
            f"{path}, line 1: missing column(s) {missing}; header has {list(idx)} "
            f"(read as {_sep_name(sep)}-separated).{hint}"
        )
    return idx


def _csv_table(
    path: Path, required: Iterable[str], sep: str = ",", encoding: str = "utf-8"
) -> tuple[dict[str, int], Iterator[tuple[int, list[str]]]]:
    """Header index plus the data rows of a quoted CSV, each checked to have the header's width."""
    rows = _csv_rows(path, sep, encoding)
    _, header = next(rows, (1, []))
    idx = _header_index(path, header, required, sep)

    def checked() -> Iterator[tuple[int, list[str]]]:
        for lineno, row in rows:
            if len(row) != len(header):
                raise _field_error(path, lineno, sep.join(row), sep, str(len(header)), len(row))
            yield lineno, row

    return idx, checked()


def _number(path: Path, lineno: int | str, what: str, text: str, kind=float):
    try:
        return kind(float(text)) if kind is int else kind(text)
    except ValueError:
        where = lineno if isinstance(lineno, str) else f"line {lineno}"
        raise DataError(f"{path}, {where}: {what} {text!r} is not a number") from None


# --------------------------------------------------------------------------------------------
# Assembly: raw ids -> dense indices, features, meta
# --------------------------------------------------------------------------------------------


def _index(raw: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Dense codes for raw ids; ids that are all canonical integers are ordered numerically."""
    arr = np.asarray(raw, dtype=str)
    if len(raw) and all(s.isdigit() and (s == "0" or s[0] != "0") for s in set(raw)):
        uniq, codes = np.unique(arr.astype(np.int64), return_inverse=True)
        return uniq.astype(str), codes
    uniq, codes = np.unique(arr, return_inverse=True)
    return uniq, codes


def _feature_table(per_entity: list[Iterable[str]]) -> FeatureTable:
    names = sorted({f for feats in per_entity for f in feats})
    col = {n: j for j, n in enumerate(names)}
    m = np.zeros((len(per_entity), len(names)), dtype=bool)
    for e, feats in enumerate(per_entity):
        for f in feats:
            m[e, col[f]] = True
    return FeatureTable(names, m)


def popularity_features(items: np.ndarray, n_items: int) -> FeatureTable:
    """Disjoint head/mid/tail buckets by interaction count, none empty (see module docstring)."""
    counts = np.bincount(items, minlength=n_items)
    values = np.unique(counts)[::-1]  # distinct counts, most popular first
    at_or_above = (n_items - np.searchsorted(np.sort(counts), values, side="left")) / max(1, n_items)
    names = [name for name, _ in POPULARITY_BUCKETS]
    buckets = min(len(names), len(values))
    if buckets < 2:  # every item equally popular: popularity names nothing
        return FeatureTable([], np.zeros((n_items, 0), dtype=bool))
    if buckets == 2:
        names = [names[0], names[-1]]
    targets = [share for _, share in POPULARITY_BUCKETS[:-1]][-(buckets - 1) :]
    cuts, lo = [], 0
    for b, target in enumerate(targets):
        hi = len(values) - (buckets - 1 - b)  # leave one distinct count for every later bucket
        j = lo + int(np.argmin(np.abs(at_or_above[lo:hi] - target)))
        cuts.append(values[j])
        lo = j + 1
    labels = np.full(n_items, buckets - 1)
    for b in range(buckets - 2, -1, -1):
        labels[counts >= cuts[b]] = b
    return FeatureTable([f"popularity:{n}" for n in names], labels[:, None] == np.arange(buckets)[None, :])


def _drop_empty(t: FeatureTable) -> FeatureTable:
    keep = t.matrix.any(axis=0)
    return FeatureTable([n for n, k in zip(t.names, keep, strict=True) if k], t.matrix[:, keep])


def add_popularity(static: FeatureTable, items: np.ndarray, n_items: int) -> FeatureTable:
    """Replace any ``popularity:`` columns by ones computed from ``items``; drop empty columns."""
    keep = [j for j, n in enumerate(static.names) if not n.startswith("popularity:")]
    base = _drop_empty(FeatureTable([static.names[j] for j in keep], static.matrix[:, keep]))
    pop = _drop_empty(popularity_features(items, n_items))
    return FeatureTable.concat([base, pop]) if base.names or pop.names else base


def _assemble(
    name: str,
    users: list[str],
    items: list[str],
    times: list[int] | np.ndarray,
    titles: dict[str, str],
    item_feats: dict[str, list[str]],
    user_feats: dict[str, list[str]] | None,
    meta: dict,
) -> Dataset:
    if not users:
        raise DataError(
            f"dataset {name!r} has no interactions after filtering ({meta.get('filters')}); "
            f"source {meta.get('source')}"
        )
    user_ids, ucodes = _index(users)
    item_ids, icodes = _index(items)
    static = _feature_table([item_feats.get(i, ()) for i in item_ids])
    item_features = add_popularity(static, icodes, len(item_ids))
    uf = None
    if user_feats is not None:
        uf = _drop_empty(_feature_table([user_feats.get(u, ()) for u in user_ids]))
    meta = dict(meta)
    meta["counts"] = {
        **meta.get("counts", {}),
        "interactions": len(users),
        "users": len(user_ids),
        "items": len(item_ids),
    }
    return Dataset(
        name=name,
        user_ids=user_ids,
        item_ids=item_ids,
        users=ucodes.astype(np.int32),
        items=icodes.astype(np.int32),
        times=np.asarray(times, dtype=np.int64),
        item_titles=[titles.get(i) or f"item {i}" for i in item_ids],
        item_features=item_features,
        user_features=uf,
        meta=meta,
    )


def _decade(title: str, date: str = "") -> str | None:
    """From a MovieLens title's trailing "(1995)" / "(1994-1998)", else the date; never "(1935-)"."""
    m = _TITLE_YEAR.search(title) or _DATE_YEAR.search(date)
    return f"decade:{int(m.group(1)) // 10 * 10}s" if m else None


def _movie_feats(title: str, genres: Iterable[str], date: str = "", title_years: bool = True) -> list[str]:
    """Genres, and the decade where the layout declares a year (``title_years``: MovieLens titles)."""
    feats = [f"genre:{g.strip()}" for g in genres if g.strip() not in _NO_GENRE]
    d = _decade(title if title_years else "", date)
    return feats + ([d] if d else [])


def _age_bucket(age: int) -> str:
    for hi, label in (
        (18, "Under 18"),
        (25, "18-24"),
        (35, "25-34"),
        (45, "35-44"),
        (50, "45-49"),
        (56, "50-55"),
    ):
        if age < hi:
            return label
    return "56+"


def _ml_min_rating(min_rating: float | str | None, scale: tuple[float, float]) -> float | None:
    """``"auto"`` -> the scale's midpoint (:func:`rating_threshold`); else as given."""
    if min_rating == "auto":
        return rating_threshold(*scale)
    return None if min_rating is None else float(min_rating)


def _rating_meta(meta: dict, given: float | str | None, thr: float | None, scale: tuple[float, float], kept: int) -> dict:
    """Record in ``meta["weights"]`` what the ratings did (shown in the job summary and manifest)."""
    if thr is None:
        rule = "no threshold: every rating, however low, is a positive interaction"
    elif given == "auto":
        rule = (f"rating >= {thr:g}, the midpoint of the {scale[0]:g}-{scale[1]:g} scale: lower ratings "
                "are dislikes, not positive feedback (--min-rating all keeps them)")
    else:
        rule = f"rating >= {thr:g} (given)"
    raw = meta["counts"]["raw_interactions"]
    meta["weights"] = {"column": "rating", "kind": "rating", "rule": rule,
                       "effect": "a rating is a threshold: rows at or above it are positive interactions, the rest dropped",
                       "rows": raw, "kept": kept, "dropped": raw - kept}
    return meta


def _meta(fmt: str, path: Path, min_rating: float | None, raw: int) -> dict:
    return {
        "format": fmt,
        "source": str(path),
        "filters": {"min_rating": min_rating, "kcore": 0},
        "counts": {"raw_interactions": raw},
    }


# --------------------------------------------------------------------------------------------
# MovieLens
# --------------------------------------------------------------------------------------------


def load_ml100k(path: PathLike, min_rating: float | str | None = None) -> Dataset:
    """MovieLens 100K folder (``u.data``, ``u.item``; ``u.user``/``u.genre`` optional)."""
    root = Path(path)
    data = _require(root / "u.data", "ml-100k")
    item_file = _require(root / "u.item", "ml-100k")
    given, min_rating = min_rating, _ml_min_rating(min_rating, (1, 5))
    users, items, times, raw = [], [], [], 0
    for lineno, (u, i, r, t) in _rows(data, "\t", 4):
        raw += 1
        rating = _number(data, lineno, "rating", r)
        if min_rating is not None and rating < min_rating:
            continue
        users.append(u.strip())
        items.append(i.strip())
        times.append(_number(data, lineno, "timestamp", t, int))

    genres = ML100K_GENRES
    if (root / "u.genre").is_file():
        genres = [f[0] for _, f in _rows(root / "u.genre", "|", 2, "latin-1")]
    n_fields = 5 + len(genres)
    titles: dict[str, str] = {}
    feats: dict[str, list[str]] = {}
    for lineno, f in _rows(item_file, "|", n_fields, "latin-1"):
        flags = f[5:]
        if any(x not in ("0", "1") for x in flags):
            raise DataError(f"{item_file}, line {lineno}: genre flags must be 0/1, found {flags}")
        titles[f[0]] = f[1]
        feats[f[0]] = _movie_feats(
            f[1], [g for g, x in zip(genres, flags, strict=True) if x == "1"], f[2]
        )

    user_feats = None
    if (root / "u.user").is_file():
        user_feats = {}
        ufile = root / "u.user"
        for lineno, (u, age, gender, occ, _zip) in _rows(ufile, "|", 5, "latin-1"):
            a = _number(ufile, lineno, "age", age, int)
            user_feats[u] = [f"age:{_age_bucket(a)}", f"gender:{gender}", f"occupation:{occ}"]
    return _assemble(
        "ml-100k",
        users,
        items,
        times,
        titles,
        feats,
        user_feats,
        _rating_meta(_meta("ml-100k", root, min_rating, raw), given, min_rating, (1, 5), len(users)),
    )


def load_ml1m(path: PathLike, min_rating: float | str | None = None) -> Dataset:
    """MovieLens 1M folder (``ratings.dat``, ``movies.dat``; ``users.dat`` optional)."""
    root = Path(path)
    ratings = _require(root / "ratings.dat", "ml-1m")
    movies = _require(root / "movies.dat", "ml-1m")
    given, min_rating = min_rating, _ml_min_rating(min_rating, (1, 5))
    users, items, times, raw = [], [], [], 0
    for lineno, (u, i, r, t) in _rows(ratings, "::", 4):
        raw += 1
        rating = _number(ratings, lineno, "rating", r)
        if min_rating is not None and rating < min_rating:
            continue
        users.append(u)
        items.append(i)
        times.append(_number(ratings, lineno, "timestamp", t, int))

    titles: dict[str, str] = {}
    feats: dict[str, list[str]] = {}
    for _, (i, title, genres) in _rows(movies, "::", 3, "latin-1"):
        titles[i] = title
        feats[i] = _movie_feats(title, genres.split("|"))

    user_feats = None
    ufile = root / "users.dat"
    if ufile.is_file():
        user_feats = {}
        for lineno, (u, gender, age, occ, _zip) in _rows(ufile, "::", 5, "latin-1"):
            if age not in ML1M_AGES or not occ.isdigit() or int(occ) >= len(ML1M_OCCUPATIONS):
                raise DataError(
                    f"{ufile}, line {lineno}: unknown age code {age!r} or occupation {occ!r}"
                )
            user_feats[u] = [
                f"age:{ML1M_AGES[age]}",
                f"gender:{gender}",
                f"occupation:{ML1M_OCCUPATIONS[int(occ)]}",
            ]
    return _assemble(
        "ml-1m",
        users,
        items,
        times,
        titles,
        feats,
        user_feats,
        _rating_meta(_meta("ml-1m", root, min_rating, raw), given, min_rating, (1, 5), len(users)),
    )


def load_movielens_latest(
    path: PathLike, min_rating: float | str | None = None, top_tags: int = 50
) -> Dataset:
    """MovieLens latest(-small) folder: ``ratings.csv``, ``movies.csv``, optional ``tags.csv``."""
    root = Path(path)
    name = root.name if root.name.startswith("ml-latest") else "ml-latest"
    ratings = _require(root / "ratings.csv", "ml-latest-small")
    movies = _require(root / "movies.csv", "ml-latest-small")

    given, min_rating = min_rating, _ml_min_rating(min_rating, (0.5, 5))
    idx, rows = _csv_table(ratings, ["userId", "movieId", "rating", "timestamp"])
    cu, ci, cr, ct = idx["userId"], idx["movieId"], idx["rating"], idx["timestamp"]
    users, items, times, raw = [], [], [], 0
    for lineno, row in rows:
        raw += 1
        rating = _number(ratings, lineno, "rating", row[cr])
        if min_rating is not None and rating < min_rating:
            continue
        users.append(row[cu])
        items.append(row[ci])
        times.append(_number(ratings, lineno, "timestamp", row[ct], int))

    idx, rows = _csv_table(movies, ["movieId", "title", "genres"])
    titles: dict[str, str] = {}
    feats: dict[str, list[str]] = {}
    for _, row in rows:
        i, title = row[idx["movieId"]], row[idx["title"]].strip()
        titles[i] = title
        feats[i] = _movie_feats(title, row[idx["genres"]].split("|"))

    tags_file = root / "tags.csv"
    if tags_file.is_file() and top_tags > 0:
        idx, rows = _csv_table(tags_file, ["movieId", "tag"])
        item_tags: dict[str, set[str]] = {}
        for _, row in rows:
            tag = row[idx["tag"]].strip().lower()
            if tag:
                item_tags.setdefault(row[idx["movieId"]], set()).add(tag)
        # Frequency = number of movies carrying the tag, ties broken by name for determinism.
        freq = Counter(t for ts in item_tags.values() for t in ts)
        kept = {t for t, _ in sorted(freq.items(), key=lambda kv: (-kv[1], kv[0]))[:top_tags]}
        for i, ts in item_tags.items():
            feats.setdefault(i, []).extend(f"tag:{t}" for t in sorted(ts & kept))
    meta = _rating_meta(_meta(name, root, min_rating, raw), given, min_rating, (0.5, 5), len(users))
    meta["top_tags"] = top_tags
    return _assemble(name, users, items, times, titles, feats, None, meta)


# --------------------------------------------------------------------------------------------
# ReChorus (RecSAE reference format) and plain CSV
# --------------------------------------------------------------------------------------------

_RECHORUS_SPLITS = ("train.csv", "dev.csv", "test.csv")
_RECHORUS_META = ("item_meta.csv", "item_meta_all_info.csv")


def load_rechorus(path: PathLike, max_categories: int = 100) -> Dataset:
    """ReChorus folder: tab-separated ``train.csv`` (+ ``dev.csv``/``test.csv`` when present).

    The log is the concatenation of whichever split files exist (the RecSAE reference copy of
    Grocery has only ``train.csv``). Item metadata comes from ``item_meta.csv`` or
    ``item_meta_all_info.csv``: a ``title`` column gives titles, ``genres`` gives ``genre:`` and
    ``decade:`` features, and each categorical ``i_<group>[_c]`` column with at most
    ``max_categories`` codes becomes ``<group>:<code>`` (skipped when ``<group>`` already came from
    a text column, e.g. ``i_genre_c`` next to ``genres``).
    """
    root = Path(path)
    present = [root / f for f in _RECHORUS_SPLITS if (root / f).is_file()]
    if not present:
        raise DataError(
            f"missing file {root / 'train.csv'} (ReChorus format needs train.csv, dev.csv or "
            "test.csv): pass --data-dir pointing at the folder that holds it"
        )
    users, items, times = [], [], []
    for split in present:
        rows = _rows(split, "\t", 1, exact=False)
        _, header = next(rows, (1, []))
        idx = _header_index(split, header, ["user_id", "item_id", "time"], "\t")
        cu, ci, ct, n = idx["user_id"], idx["item_id"], idx["time"], len(header)
        for lineno, f in rows:
            if len(f) != n:
                raise _field_error(split, lineno, "\t".join(f), "\t", str(n), len(f))
            users.append(f[cu])
            items.append(f[ci])
            times.append(_number(split, lineno, "time", f[ct], int))

    titles: dict[str, str] = {}
    feats: dict[str, list[str]] = {}
    meta_file = next((root / m for m in _RECHORUS_META if (root / m).is_file()), None)
    if meta_file is not None:
        rows = _rows(meta_file, "\t", 1, exact=False)
        _, header = next(rows, (1, []))
        idx = _header_index(meta_file, header, ["item_id"], "\t")
        table = []
        for lineno, f in rows:
            if len(f) != len(header):
                raise _field_error(meta_file, lineno, "\t".join(f), "\t", str(len(header)), len(f))
            table.append(f)
        ci = idx["item_id"]
        text_groups = set()
        if "title" in idx or "genres" in idx:
            # years only where the layout declares them: MovieLens meta ("Title (1995)")
            movielens = "genres" in idx or "movieId" in idx
            text_groups = {"genre", "decade"} if "genres" in idx else ({"decade"} if movielens else set())
            for f in table:
                title = f[idx["title"]] if "title" in idx else ""
                genres = f[idx["genres"]].split("|") if "genres" in idx else []
                if title:
                    titles[f[ci]] = title
                feats.setdefault(f[ci], []).extend(_movie_feats(title, genres, title_years=movielens))
        for col, j in idx.items():
            if not col.startswith("i_"):
                continue
            group = col[2:].removesuffix("_c")
            values = {f[j] for f in table}
            if group in text_groups or len(values) > max_categories:
                continue
            for f in table:
                if f[j] != "":
                    feats.setdefault(f[ci], []).append(f"{group}:{f[j]}")
    name = root.name
    meta = _meta("rechorus", root, None, len(users))
    meta["files"] = [p.name for p in present] + ([meta_file.name] if meta_file else [])
    return _assemble(name, users, items, times, titles, feats, None, meta)


_SEPARATORS = ("\t", ",", ";", "|")
WEIGHT_KINDS = ("auto", "rating", "count")


@dataclass(frozen=True)
class ItemFile:
    """An item metadata file joined to the log on ``id_col`` (CSV/TSV/Parquet, gzip allowed).

    ``name_col`` gives titles; each ``text_cols`` column one feature ``<col>:<value>`` per item
    (a category); each ``list_cols`` column several, split on ``list_sep`` (``tags`` ->
    ``tag:<value>``, ``genres`` -> ``genre:<value>``, the same form MovieLens genres take). No
    attribute is parsed out of names (no years from titles).
    """

    path: str
    id_col: str = "item_id"
    name_col: str | None = None
    text_cols: tuple[str, ...] = ()
    list_cols: tuple[str, ...] = ()
    list_sep: str = "|"
    sep: str | None = None  # None: sniffed
    encoding: str | None = None  # None: the log's
    max_values: int = 200  # per column: the most common values (by items) become features


def _sniff(path: Path, encoding: str) -> str:
    """The separator that splits the header and the next lines into the same number (> 1) of fields."""
    head: list[str] = []
    for _, line in _lines(path, encoding):
        if line.strip():
            head.append(line)
        if len(head) == 6:
            break
    if not head:
        raise DataError(f"{path} is empty: expected a header row and interactions")
    widths = {}
    for sep in _SEPARATORS:
        w = [len(next(csv.reader([line], delimiter=sep))) for line in head]
        if w[0] > 1 and all(x == w[0] for x in w):
            return sep
        widths[sep] = w[0]
    best = max(_SEPARATORS, key=lambda x: widths[x])
    if widths[best] > 1:
        return best  # ragged rows: the field-count check names the first bad line
    raise DataError(
        f"{path}, line 1: cannot find the separator: the header {head[0][:80]!r} has no tab, comma, "
        "semicolon or '|'; pass --sep"
    )


def _is_parquet(path: Path) -> bool:
    return _magic(path) == b"PAR1"


def _table(
    path: Path, required: Iterable[str], sep: str | None, encoding: str
) -> tuple[dict[str, int], Iterator[tuple[str, list[str]]], str]:
    """Header index, ``(where, fields)`` rows and the separator used, for CSV/TSV/gzip/Parquet.

    ``where`` is ``"line N"`` for text files and ``"row N"`` for Parquet, for error messages.
    """
    required = list(required)
    if _is_parquet(path):
        try:
            import pyarrow.parquet as pq
        except ImportError:  # pragma: no cover - pyarrow is in the train extra
            raise ConfigError(f"{path} is Parquet: reading it needs pyarrow (pip install 'recsae[train]')") from None
        try:
            table = pq.read_table(path)
        except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a damaged file
            raise DataError(f"{path}: not a readable Parquet file ({e})") from None
        header = list(table.column_names)
        idx = _header_index(path, header, required, "")
        cols = [table.column(i).to_pylist() for i in range(len(header))]

        def parquet_rows() -> Iterator[tuple[str, list[str]]]:
            for r in range(table.num_rows):
                yield f"row {r + 1}", ["" if c[r] is None else str(c[r]) for c in cols]

        return idx, parquet_rows(), "parquet"
    sep = sep or _sniff(path, encoding)
    idx, rows = _csv_table(path, required, sep, encoding)
    return idx, ((f"line {n}", f) for n, f in rows), sep


def _timestamp(path: Path, where: str, col: str, text: str) -> int:
    """Unix seconds from a number or an ISO date/time (naive times read as UTC)."""
    try:
        return int(float(text))
    except ValueError:
        pass
    try:
        t = datetime.fromisoformat(text.strip())
    except ValueError:
        raise DataError(
            f"{path}, {where}: column {col!r}: {text!r} is neither a number (unix time) nor an ISO "
            "date/time such as 2024-05-01 or 2024-05-01T13:45:00"
        ) from None
    return int((t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp())


def _weight_kind(weights: np.ndarray) -> tuple[str, str]:
    """``("rating" | "count", why)``: ratings are 2-20 distinct half-steps within [0, 10]."""
    lo, hi, distinct = float(weights.min()), float(weights.max()), len(np.unique(weights))
    halves = bool(np.all(np.isclose(weights * 2, np.round(weights * 2))))
    if lo >= 0 and hi <= 10 and halves and 2 <= distinct <= 20:
        return "rating", f"values {lo:g}-{hi:g} in {distinct} steps look like ratings"
    return "count", f"values {lo:g}-{hi:g} ({distinct} distinct) look like counts"


def rating_threshold(lo: float, hi: float) -> float:
    """Default positive-feedback bar of a rating scale: its midpoint (3 on 1-5, 2.75 on 0.5-5).

    Ratings below the midpoint are dislikes (1-2 stars): treating them as positive interactions
    makes a film the user disliked drive their recommendations. The midpoint keeps the neutral
    and the liked (82% of ml-100k); the stricter "4 or more" of Liang et al. (2018) also drops the
    lukewarm, 45% of ml-100k, which shortens the histories a sequential model learns from.
    """
    return (lo + hi) / 2


#: What a count does by default, and why (README, "Bring your own data").
COUNT_RULE = (
    "a count is binarised: a user-item pair with a total count > 0 (or >= --min-weight) is one "
    "positive interaction. BPR-MF, LightGCN and SASRec learn from binary implicit feedback, as "
    "their papers' play-count and click datasets are prepared; Hu, Koren & Volinsky's confidence "
    "1 + alpha*log(1 + count/eps) weights a squared loss over all pairs (WR-MF/ALS), which none of "
    "these models has, and repeating a pair would over-weight heavy listeners' favourites"
)


def _resolve_threshold(kind: str, weights: np.ndarray, min_weight: float | str | None) -> tuple[float | None, str]:
    if min_weight is None:
        return None, "no threshold: every row is a positive interaction"
    if min_weight != "auto":
        return float(min_weight), f"weight >= {float(min_weight):g} (given)"
    if kind == "rating":
        lo, hi = float(weights.min()), float(weights.max())
        thr = rating_threshold(lo, hi)
        return thr, (f"rating >= {thr:g}, the midpoint of the observed {lo:g}-{hi:g} scale: lower "
                     "ratings are dislikes, not positive feedback")
    return None, "count > 0: any play or click is positive feedback"


def load_csv(
    path: PathLike,
    user_col: str,
    item_col: str,
    time_col: str | None = None,
    rating_col: str | None = None,
    sep: str | None = None,
    min_rating: float | None = None,
    title_col: str | None = None,
    *,
    weight_col: str | None = None,
    weight_kind: str = "auto",
    min_weight: float | str | None = None,
    encoding: str = "utf-8",
    items: ItemFile | None = None,
) -> Dataset:
    """An interaction log with a header row: CSV/TSV (``sep`` sniffed when None), gzip or Parquet.

    ``weight_col`` holds a rating or a count (``weight_kind``, told apart by its values when
    "auto"); ``min_weight`` keeps rows at or above it ("auto": a rating scale's midpoint, counts
    > 0; None: every row). ``rating_col``/``min_rating`` are the rating-only spellings. Without
    ``time_col`` the row order is kept but the log has no clock (``meta["has_time"]`` False):
    repeated user-item pairs are merged (counts summed, the last rating kept) and
    :func:`~recsae.data.leave_one_out` holds out random items. Errors name the file, the line and
    the column, and list the columns that exist.
    """
    file = _require(Path(path))
    if rating_col is not None:
        if weight_col is not None and weight_col != rating_col:
            raise ConfigError("give rating_col or weight_col, not both")
        weight_col, weight_kind = rating_col, "rating"
    if min_rating is not None:
        if min_weight is not None:
            raise ConfigError("give min_rating or min_weight, not both")
        min_weight = min_rating
    if min_weight is not None and weight_col is None:
        raise ConfigError("min_rating/min_weight needs rating_col/weight_col: the file's rating or count column")
    if weight_kind not in WEIGHT_KINDS:
        raise ConfigError(f"weight_kind must be one of {list(WEIGHT_KINDS)}, not {weight_kind!r}")
    required = [c for c in (user_col, item_col, time_col, weight_col, title_col) if c]
    idx, rows, used_sep = _table(file, required, sep, encoding)
    cu, ci = idx[user_col], idx[item_col]
    users, items_, times, weights, titles, raw = [], [], [], [], {}, 0
    for where, row in rows:
        raw += 1
        u, i = row[cu].strip(), row[ci].strip()
        if not u or not i:
            col = user_col if not u else item_col
            raise DataError(f"{file}, {where}: column {col!r} is empty")
        users.append(u)
        items_.append(i)
        times.append(_timestamp(file, where, time_col, row[idx[time_col]]) if time_col else raw)
        if weight_col:
            weights.append(_number(file, where, f"column {weight_col!r}:", row[idx[weight_col]].strip()))
        if title_col:
            titles.setdefault(i, row[idx[title_col]])
    if not users:
        raise DataError(f"{file} has a header but no rows")
    meta = _meta("csv", file, None, raw)
    meta["columns"] = {"user": user_col, "item": item_col, "time": time_col, "weight": weight_col}
    meta["separator"] = _sep_name(used_sep) if used_sep != "parquet" else "parquet"
    meta["encoding"] = encoding
    meta["has_time"] = time_col is not None
    keep_users, keep_items, keep_times = users, items_, times
    if weight_col:
        w = np.asarray(weights, dtype=np.float64)
        kind, why = (weight_kind, "given") if weight_kind != "auto" else _weight_kind(w)
        if time_col is None:  # no clock: one row per user-item pair
            agg: dict[tuple[str, str], list] = {}
            for n, key in enumerate(zip(users, items_)):
                if key in agg:
                    agg[key][1] = agg[key][1] + w[n] if kind == "count" else w[n]
                else:
                    agg[key] = [n, w[n]]
            firsts = [v[0] for v in agg.values()]
            users, items_, times = [users[n] for n in firsts], [items_[n] for n in firsts], [times[n] for n in firsts]
            w = np.array([v[1] for v in agg.values()], dtype=np.float64)
        thr, rule = _resolve_threshold(kind, w, min_weight)
        keep = np.ones(len(w), bool) if thr is None else w >= thr
        if thr is None and kind == "count" and min_weight == "auto":
            keep = w > 0
        sel = np.flatnonzero(keep)
        keep_users, keep_items, keep_times = [users[n] for n in sel], [items_[n] for n in sel], [times[n] for n in sel]
        meta["filters"]["min_weight"] = thr
        if kind == "rating":
            meta["filters"]["min_rating"] = thr
        meta["weights"] = {
            "column": weight_col, "kind": kind, "kind_because": why, "rule": rule,
            "effect": COUNT_RULE if kind == "count" else
            "a rating is a threshold: rows at or above it are positive interactions, the rest dropped",
            "rows": len(w), "kept": int(keep.sum()), "dropped": int((~keep).sum()),
            "min": float(w.min()), "median": float(np.median(w)), "max": float(w.max()),
        }
        if not keep_users:
            raise DataError(
                f"{file}: no interactions left after filtering: no {weight_col!r} value passes "
                f"{rule}; values range {w.min():g}-{w.max():g}. Lower --min-weight"
            )
    elif time_col is None:
        seen = dict.fromkeys(zip(users, items_))
        keep_users, keep_items = [k[0] for k in seen], [k[1] for k in seen]
        keep_times = list(range(1, len(keep_users) + 1))
    feats: dict[str, list[str]] = {}
    if items is not None:
        item_titles, feats, meta["item_file"] = _item_file(items, encoding, set(keep_items))
        titles = {**titles, **item_titles}
    return _assemble(file.name.split(".")[0], keep_users, keep_items, keep_times, titles, feats, None, meta)


def _list_group(col: str) -> str:
    """``tags`` -> ``tag``, ``genres`` -> ``genre``, ``categories`` -> ``category``."""
    c = col.strip().lower()
    if c.endswith("ies") and len(c) > 4:
        return c[:-3] + "y"
    return c[:-1] if c.endswith("s") and not c.endswith("ss") and len(c) > 3 else c


def _item_file(spec: ItemFile, log_encoding: str, in_log: set[str]) -> tuple[dict, dict, dict]:
    """Titles and ``group:value`` features of the items the log has, from ``spec``'s file."""
    file = _require(Path(spec.path))
    cols = [c for c in (spec.id_col, spec.name_col, *spec.text_cols, *spec.list_cols) if c]
    idx, rows, _ = _table(file, cols, spec.sep, spec.encoding or log_encoding)
    titles: dict[str, str] = {}
    values: dict[str, dict[str, list[str]]] = {c: {} for c in (*spec.text_cols, *spec.list_cols)}
    n_rows = 0
    for _, row in rows:
        n_rows += 1
        i = row[idx[spec.id_col]].strip()
        if i not in in_log or i in titles:
            continue
        titles[i] = row[idx[spec.name_col]].strip() if spec.name_col else ""
        for c in spec.text_cols:
            v = row[idx[c]].strip()
            values[c][i] = [v] if v else []
        for c in spec.list_cols:
            parts = [p.strip() for p in row[idx[c]].split(spec.list_sep)] if spec.list_sep else [row[idx[c]]]
            values[c][i] = sorted({p.lower() if _list_group(c) == "tag" else p for p in parts if p})
    feats: dict[str, list[str]] = {}
    dropped = {}
    for c, per_item in values.items():
        group = _list_group(c) if c in spec.list_cols else c.strip().lower()
        freq = Counter(v for vs in per_item.values() for v in vs)
        kept = {v for v, _ in sorted(freq.items(), key=lambda kv: (-kv[1], kv[0]))[: spec.max_values]}
        dropped[c] = len(freq) - len(kept)
        for i, vs in per_item.items():
            feats.setdefault(i, []).extend(f"{group}:{v}" for v in vs if v in kept)
    meta = {
        "source": str(file), "rows": n_rows, "items_described": len(titles),
        "log_items_missing": len(in_log - set(titles)),
        "columns": {"id": spec.id_col, "name": spec.name_col, "text": list(spec.text_cols),
                    "list": list(spec.list_cols), "list_sep": spec.list_sep},
        "values_dropped_beyond_max": {c: n for c, n in dropped.items() if n},
    }
    return {i: t for i, t in titles.items() if t}, feats, meta


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
        from recsae.data.synthetic import make_synthetic

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
