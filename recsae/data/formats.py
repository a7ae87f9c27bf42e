"""The named public formats: MovieLens 100K, 1M and latest (CSV), and the ReChorus/RecSAE reference
layout (Grocery, ML-1M)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from recsae import DataError
from recsae.data.core import Dataset
from recsae.data.features import (
    ML1M_AGES,
    ML1M_OCCUPATIONS,
    ML100K_GENRES,
    _age_bucket,
    _assemble,
    _meta,
    _ml_min_rating,
    _movie_feats,
    _rating_meta,
)
from recsae.data.readers import PathLike, _csv_table, _field_error, _header_index, _number, _require, _rows

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
