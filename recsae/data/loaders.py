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
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from recsae import ConfigError, DataError
from recsae.data.core import Dataset, FeatureTable

__all__ = [
    "DATASET_NAMES",
    "default_data_dir",
    "kcore_filter",
    "load_csv",
    "load_dataset",
    "load_ml100k",
    "load_ml1m",
    "load_movielens_latest",
    "load_rechorus",
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


def default_data_dir() -> Path:
    """``$RECSAE_DATA_DIR`` if set, else ``~/.cache/recsae/data`` (where fetch writes)."""
    env = os.environ.get("RECSAE_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "recsae" / "data"


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
    """Decode line by line so an undecodable byte is reported with its line number."""
    with open(path, "rb") as f:
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
    path: Path, required: Iterable[str], sep: str = ","
) -> tuple[dict[str, int], Iterator[tuple[int, list[str]]]]:
    """Header index plus the data rows of a quoted CSV, each checked to have the header's width."""
    rows = _csv_rows(path, sep)
    _, header = next(rows, (1, []))
    idx = _header_index(path, header, required, sep)

    def checked() -> Iterator[tuple[int, list[str]]]:
        for lineno, row in rows:
            if len(row) != len(header):
                raise _field_error(path, lineno, sep.join(row), sep, str(len(header)), len(row))
            yield lineno, row

    return idx, checked()


def _number(path: Path, lineno: int, what: str, text: str, kind=float):
    try:
        return kind(float(text)) if kind is int else kind(text)
    except ValueError:
        raise DataError(f"{path}, line {lineno}: {what} {text!r} is not a number") from None


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


def load_ml100k(path: PathLike, min_rating: float | None = None) -> Dataset:
    """MovieLens 100K folder (``u.data``, ``u.item``; ``u.user``/``u.genre`` optional)."""
    root = Path(path)
    data = _require(root / "u.data", "ml-100k")
    item_file = _require(root / "u.item", "ml-100k")
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
        _meta("ml-100k", root, min_rating, raw),
    )


def load_ml1m(path: PathLike, min_rating: float | None = None) -> Dataset:
    """MovieLens 1M folder (``ratings.dat``, ``movies.dat``; ``users.dat`` optional)."""
    root = Path(path)
    ratings = _require(root / "ratings.dat", "ml-1m")
    movies = _require(root / "movies.dat", "ml-1m")
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
        _meta("ml-1m", root, min_rating, raw),
    )


def load_movielens_latest(
    path: PathLike, min_rating: float | None = None, top_tags: int = 50
) -> Dataset:
    """MovieLens latest(-small) folder: ``ratings.csv``, ``movies.csv``, optional ``tags.csv``."""
    root = Path(path)
    name = root.name if root.name.startswith("ml-latest") else "ml-latest"
    ratings = _require(root / "ratings.csv", "ml-latest-small")
    movies = _require(root / "movies.csv", "ml-latest-small")

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
    meta = _meta(name, root, min_rating, raw)
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


def load_csv(
    path: PathLike,
    user_col: str,
    item_col: str,
    time_col: str | None = None,
    rating_col: str | None = None,
    sep: str = ",",
    min_rating: float | None = None,
    title_col: str | None = None,
) -> Dataset:
    """A plain delimited file with a header row. Without ``time_col`` the row order is the clock."""
    file = _require(Path(path))
    if min_rating is not None and rating_col is None:
        raise ConfigError("min_rating needs rating_col: the file's rating column")
    required = [c for c in (user_col, item_col, time_col, rating_col, title_col) if c]
    idx, rows = _csv_table(file, required, sep)
    users, items, times, titles, raw = [], [], [], {}, 0
    for lineno, row in rows:
        raw += 1
        rating = _number(file, lineno, "rating", row[idx[rating_col]]) if rating_col else None
        if min_rating is not None and rating < min_rating:
            continue
        u, i = row[idx[user_col]], row[idx[item_col]]
        users.append(u)
        items.append(i)
        times.append(_number(file, lineno, "time", row[idx[time_col]], int) if time_col else lineno)
        if title_col:
            titles.setdefault(i, row[idx[title_col]])
    meta = _meta("csv", file, min_rating, raw)
    meta["columns"] = {"user": user_col, "item": item_col, "time": time_col, "rating": rating_col}
    return _assemble(file.stem, users, items, times, titles, {}, None, meta)


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
    raise DataError(
        f"cannot tell the format of {root}: expected u.data (ML-100K), ratings.dat (ML-1M), "
        "ratings.csv (ML-latest) or train.csv (ReChorus); for another CSV use load_csv"
    )


def load_dataset(
    name_or_path: PathLike,
    data_dir: PathLike | None = None,
    min_rating: float | None = None,
    kcore: int = 0,
) -> Dataset:
    """Load a dataset by name (see :data:`DATASET_NAMES`) or from a folder, then k-core filter it.

    ``min_rating`` keeps ratings >= the threshold (implicit feedback); it is a ConfigError for
    data without ratings (ReChorus, synthetic).
    """
    if kcore < 0:
        raise ConfigError(f"kcore must be >= 0, not {kcore}")
    text = os.fspath(name_or_path)
    base = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    if text in DATASET_NAMES:
        if text == "synthetic":
            if min_rating is not None:
                raise ConfigError("the synthetic dataset has no ratings: drop min_rating")
            from recsae.data.synthetic import make_synthetic

            return kcore_filter(make_synthetic()[0], kcore)
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
            raise DataError(f"{root} is a file: pass its folder, or use load_csv for a plain CSV")
        fmt = _detect(root)

    if fmt == "rechorus":
        if min_rating is not None:
            raise ConfigError(f"{root} (ReChorus format) has no ratings: drop min_rating")
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
