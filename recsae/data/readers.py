"""Low-level reading with errors that name the file and the line (stdlib only: a malformed file
fails with a ``DataError``, never a numpy/pandas traceback)."""

from __future__ import annotations

import csv
import gzip
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from recsae import DataError

PathLike = str | os.PathLike
_FETCHABLE = {"ml-100k", "ml-1m", "ml-latest-small"}


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
