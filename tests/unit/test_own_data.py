"""Logs users bring (`recsae train --data`): formats, weights, no time, item files, bad files."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from recsae import ConfigError, DataError
from recsae.cli import build_parser, data_spec, main
from recsae.data import ItemFile, leave_one_out, load_csv, split_description
from recsae.data.examples import write_music, write_ratings

LOG = [
    ("user", "song", "plays", "when"),
    ("a", "s1", "3", "2024-01-02"),
    ("a", "s2", "0", "2024-01-01"),
    ("a", "s3", "12", "2024-01-03"),
    ("b", "s1", "1", "2024-02-01"),
    ("b", "s1", "4", "2024-02-02"),  # a repeated pair
    ("b", "s3", "7", "2024-02-03"),
]


def _write(path: Path, rows, sep: str) -> Path:
    text = "\n".join(sep.join(r) for r in rows) + "\n"
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def _parquet(path: Path, rows) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    header, body = rows[0], rows[1:]
    pq.write_table(pa.table({h: [r[j] for r in body] for j, h in enumerate(header)}), path)
    return path


def _load(path: Path, **kw):
    return load_csv(path, "user", "song", weight_col="plays", min_weight="auto", **kw)


def test_csv_tsv_gzip_parquet_read_alike(tmp_path: Path) -> None:
    files = [
        _write(tmp_path / "log.csv", LOG, ","),
        _write(tmp_path / "log.tsv", LOG, "\t"),
        _write(tmp_path / "log.txt", LOG, ";"),
        _write(tmp_path / "log.tsv.gz", LOG, "\t"),
        _parquet(tmp_path / "log.parquet", LOG),
    ]
    seen = []
    for f in files:
        ds = _load(f)  # separator sniffed, gzip and Parquet recognised by their bytes
        seen.append((ds.user_ids.tolist(), ds.item_ids[ds.items].tolist(), ds.meta["weights"]["kept"]))
    assert all(s == seen[0] for s in seen), seen
    assert _load(files[3]).name == "log" and _load(files[4]).meta["separator"] == "parquet"


def test_counts_are_binarised_and_pairs_merged_without_time(tmp_path: Path) -> None:
    ds = _load(_write(tmp_path / "log.csv", LOG, ","))
    w = ds.meta["weights"]
    assert w["kind"] == "count" and w["rule"].startswith("count > 0")
    # the 0-play row is dropped; b's two rows of s1 become one pair (1 + 4 plays)
    pairs = sorted(zip(ds.user_ids[ds.users], ds.item_ids[ds.items], strict=True))
    assert pairs == [("a", "s1"), ("a", "s3"), ("b", "s1"), ("b", "s3")]
    assert (w["rows"], w["kept"], w["dropped"]) == (5, 4, 1)
    # a count threshold applies to the merged total: b/s1 has 5 plays, a/s1 only 3
    ds5 = load_csv(tmp_path / "log.csv", "user", "song", weight_col="plays", min_weight=5)
    assert sorted(zip(ds5.user_ids[ds5.users], ds5.item_ids[ds5.items], strict=True)) == [
        ("a", "s3"), ("b", "s1"), ("b", "s3")]
    assert ds.meta["has_time"] is False and "random leave-one-out" in split_description(ds)
    # with a time column every row is an event (the repeated click stays), ISO dates parsed
    timed = load_csv(tmp_path / "log.csv", "user", "song", time_col="when", weight_col="plays",
                     weight_kind="count", min_weight="auto")
    assert timed.n_interactions == 5 and timed.meta["has_time"] is True
    assert timed.item_ids[timed.sequences()[0]].tolist() == ["s1", "s3"]  # by date, s2 (0 plays) gone


def test_ratings_below_the_midpoint_are_not_positive(tmp_path: Path) -> None:
    rows = [("u", "i", "stars")] + [("a", f"i{r}", str(r)) for r in (1, 2, 3, 4, 5)] + [("b", "i9", "2.5")]
    f = _write(tmp_path / "r.csv", rows, ",")
    ds = load_csv(f, "u", "i", weight_col="stars", min_weight="auto")
    assert ds.meta["weights"]["kind"] == "rating" and ds.meta["filters"]["min_rating"] == 3.0
    assert sorted(ds.item_ids.tolist()) == ["i3", "i4", "i5"]  # 1, 2 and 2.5 are dislikes
    assert load_csv(f, "u", "i", weight_col="stars").n_interactions == 6  # library default: no threshold
    assert load_csv(f, "u", "i", weight_col="stars", weight_kind="count", min_weight="auto").n_interactions == 6


def test_ml_ratings_auto_threshold_in_the_job(tmp_path: Path) -> None:
    """22.4: where ratings exist the job's default drops dislikes (a 2.5 never drives a list)."""
    from recsae.pipeline import JobConfig, load_data

    root = tmp_path / "ml-latest-small"
    root.mkdir()
    (root / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,10,4.0,5\n1,11,2.5,9\n1,12,3.0,7\n2,10,0.5,1\n2,12,5.0,2\n")
    (root / "movies.csv").write_text("movieId,title,genres\n10,A (1999),Drama\n11,B (2001),Comedy\n12,C,Drama\n")
    assert JobConfig().min_rating == "auto"
    ds = load_data(JobConfig(dataset=str(root)))
    assert ds.n_interactions == 3 and "11" not in ds.item_ids.tolist()  # 2.5 and 0.5 dropped
    assert ds.meta["filters"]["min_rating"] == 2.75 and "midpoint" in ds.meta["weights"]["rule"]
    assert ds.item_ids[ds.sequences()[0]].tolist() == ["10", "12"]  # user 1's latest is the 3.0, not the 2.5
    assert load_data(JobConfig(dataset=str(root), min_rating=None)).n_interactions == 5


def test_random_leave_one_out_without_time(tmp_path: Path) -> None:
    paths = write_music(tmp_path, n_users=80, n_artists=40)
    ds = load_csv(paths["log"], "user_id", "artist_id", weight_col="plays", min_weight="auto")
    a, b = leave_one_out(ds), leave_one_out(ds)
    assert np.array_equal(a.test, b.test) and np.array_equal(a.dev, b.dev)  # seeded
    seqs = ds.sequences()
    last = np.array([s[-1] for s in seqs])
    evaluated = a.test >= 0
    assert (a.test[evaluated] != last[evaluated]).mean() > 0.5  # not the file's last row
    for u in np.flatnonzero(evaluated):
        whole = sorted([*a.train[u].tolist(), int(a.dev[u]), int(a.test[u])])
        assert whole == sorted(seqs[u].tolist())  # a partition of the user's items
    ds.meta["split_seed"] = 1
    assert not np.array_equal(leave_one_out(ds).test, a.test)


def test_latin1_item_file_gives_names_and_tags(tmp_path: Path) -> None:
    paths = write_music(tmp_path, n_users=50, n_artists=30)
    items = ItemFile(str(paths["items"]), "artist_id", "name", list_cols=("tags",))
    ds = load_csv(paths["log"], "user_id", "artist_id", weight_col="plays", min_weight="auto",
                  encoding="latin-1", items=items)
    raw = paths["items"].read_bytes().decode("latin-1").splitlines()[1:]
    names = {line.split(";")[0]: line.split(";")[1] for line in raw}
    assert [names[i] for i in ds.item_ids] == ds.item_titles
    assert any(ch in "".join(ds.item_titles) for ch in "éöñø")
    assert {"tag:pop", "tag:rock"} <= set(ds.item_features.names)
    assert not any(n.startswith("decade:") for n in ds.item_features.names)  # no years parsed from names
    tags = {line.split(";")[0]: set(line.split(";")[2].split("|")) for line in raw}
    for i in range(ds.n_items):
        got = {n[4:] for n in ds.item_features.of(i) if n.startswith("tag:")}
        assert got == tags[ds.item_ids[i]]
    with pytest.raises(DataError, match=r"artists\.csv, line \d+: byte 0x[0-9a-f]{2} at column \d+ is not valid utf-8"):
        load_csv(paths["log"], "user_id", "artist_id", items=items)


# ---------------------------------------------------------------- bad files: one message, nothing written

BAD = {
    "missing column": (b"user_id,item_id\nu1,i1\n", [], r"plays\.csv, line 1: missing column\(s\) \['plays'\]; header has \['user_id', 'item_id'\]"),
    "wrong separator": (b"user_id;item_id;plays\nu1;i1;3\n", ["--sep", "tab"],
                        r"line 1: missing column\(s\).*header has \['user_id;item_id;plays'\].*semicolon-separated"),
    "non-numeric weight": (b"user_id,item_id,plays\nu1,i1,3\nu1,i2,lots\n", [],
                           r"plays\.csv, line 3: column 'plays': 'lots' is not a number"),
    "empty after filtering": (b"user_id,item_id,plays\nu1,i1,0\nu2,i1,0\n", [],
                              r"plays\.csv: no interactions left after filtering: no 'plays' value passes count > 0"),
    "undecodable bytes": (b"user_id,item_id,plays\nu1,Bj\xf6rk,3\n", [],
                          r"plays\.csv, line 2: byte 0xf6 at column 6 is not valid utf-8"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_files_give_one_message_and_write_nothing(case: str, tmp_path: Path, capsys) -> None:
    body, extra, message = BAD[case]
    data = tmp_path / "plays.csv"
    data.write_bytes(body)
    out, work = tmp_path / "out" / "bundle", tmp_path / "work"
    rc = main(["train", "--data", str(data), "--weight-col", "plays", "--out", str(out),
               "--work-dir", str(work), "-q", *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), err
    import re

    assert re.search(message, err), err
    assert not out.parent.exists() and not work.exists()  # nothing written


def test_cli_flags_map_to_the_loader(tmp_path: Path) -> None:
    a = build_parser().parse_args([
        "train", "--data", str(_write(tmp_path / "log.csv", LOG, ",")), "--user-col", "user", "--item-col", "song",
        "--weight-col", "plays", "--min-weight", "2", "--sep", "comma", "--encoding", "latin-1"])
    spec = data_spec(a)
    assert spec["sep"] == "," and spec["min_weight"] == 2.0 and spec["encoding"] == "latin-1"
    assert load_csv(**spec).n_interactions == 4  # merged pairs with >= 2 plays
    a = build_parser().parse_args(["train", "--data", spec["path"], "--weight-col", "plays", "--min-weight", "all"])
    assert data_spec(a)["min_weight"] is None and a.model == "auto"
    with pytest.raises(ConfigError, match="--data FILE"):
        data_spec(build_parser().parse_args(["train", "--items", "x.csv"]))
    with pytest.raises(ConfigError, match="not both"):
        data_spec(build_parser().parse_args(["train", "--dataset", "ml-100k", "--data", spec["path"]]))


def test_model_choice_follows_the_clock(tmp_path: Path) -> None:
    from recsae.pipeline import JobConfig, choose_model

    p = write_ratings(tmp_path, n_users=20, n_movies=15)
    timed = load_csv(p["log"], "userId", "movieId", time_col="timestamp")
    untimed = load_csv(p["log"], "userId", "movieId")
    assert choose_model(JobConfig(), timed)[0] == "sasrec"
    model, why = choose_model(JobConfig(), untimed)
    assert model == "lightgcn" and "no time column" in why
    model, why = choose_model(JobConfig(model="sasrec"), untimed)
    assert model == "sasrec" and "row order" in why  # forced, with the caveat said


def test_ml100k_default_drops_dislikes(data_dir: Path) -> None:
    """22.4 on the real data: 1-2 star ratings (17,480 of 100,000) are not interactions by default."""
    from recsae.data.loaders import load_dataset
    from recsae.pipeline import JobConfig, load_data

    ds = load_data(JobConfig(dataset="ml-100k", data_dir=str(data_dir)))
    assert ds.n_interactions == 82_520 and ds.meta["filters"]["min_rating"] == 3.0
    assert ds.meta["weights"]["dropped"] == 17_480 and "midpoint of the 1-5 scale" in ds.meta["weights"]["rule"]
    assert ds.n_users == 943  # every user keeps at least one liked film
    assert load_dataset("ml-100k", data_dir=data_dir).n_interactions == 100_000  # the library's default: all
