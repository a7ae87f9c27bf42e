"""Your own interaction log: CSV/TSV (separator sniffed), gzip or Parquet with a header row, an
optional item file, ratings or counts binarised at a stated threshold."""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from recsae import ConfigError, DataError
from recsae.data.core import Dataset
from recsae.data.features import _assemble, _meta, rating_threshold
from recsae.data.readers import PathLike, _csv_table, _header_index, _lines, _magic, _number, _require, _sep_name

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


def log_name(path: str | Path) -> str:
    """A log file's dataset name: its file name before the first dot (``plays.csv.gz`` -> ``plays``)."""
    return Path(path).name.split(".")[0]


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
    return _assemble(log_name(file), keep_users, keep_items, keep_times, titles, feats, None, meta)


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
