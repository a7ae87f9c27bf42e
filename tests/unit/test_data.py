"""Loaders, filters and the chronological split, on the real shared files and on hand-built ones."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from recsae import ConfigError, DataError
from recsae.data import (
    Dataset,
    FeatureTable,
    kcore_filter,
    leave_one_out,
    load_csv,
    load_dataset,
    load_ml1m,
    load_ml100k,
    load_movielens_latest,
    load_rechorus,
)
from recsae.data.features import popularity_features


def _sub(data_dir: Path, rel: str) -> Path:
    path = data_dir / rel
    if not path.is_dir():
        pytest.skip(f"{path} is absent from the shared data folder")
    return path


@pytest.fixture(scope="module")
def ml100k(data_dir: Path) -> Dataset:
    return load_ml100k(_sub(data_dir, "ml-100k"))


def _item(ds: Dataset, raw: str) -> int:
    return int(np.flatnonzero(ds.item_ids == raw)[0])


def _user(ds: Dataset, raw: str) -> int:
    return int(np.flatnonzero(ds.user_ids == raw)[0])


# ---------------------------------------------------------------- ML-100K (real files)


def test_ml100k_counts_and_order(ml100k: Dataset) -> None:
    assert (ml100k.n_users, ml100k.n_items, ml100k.n_interactions) == (943, 1682, 100_000)
    assert ml100k.item_ids[0] == "1" and ml100k.item_ids[-1] == "1682"  # numeric, not "1","10",..
    assert ml100k.user_ids[9] == "10"
    order = np.lexsort((ml100k.items, ml100k.times, ml100k.users))
    assert np.array_equal(order, np.arange(ml100k.n_interactions))
    assert ml100k.meta["counts"]["raw_interactions"] == 100_000
    assert ml100k.meta["source"].endswith("ml-100k")
    # u.data: user 196 rated item 242 with rating 3 at 881250949.
    rows = np.flatnonzero(
        (ml100k.users == _user(ml100k, "196")) & (ml100k.items == _item(ml100k, "242"))
    )
    assert ml100k.times[rows].tolist() == [881250949]


def test_ml100k_titles_genres_decades(ml100k: Dataset) -> None:
    assert ml100k.item_titles[_item(ml100k, "1")] == "Toy Story (1995)"
    goldeneye = _item(ml100k, "2")
    assert ml100k.item_titles[goldeneye] == "GoldenEye (1995)"
    feats = set(ml100k.item_features.of(goldeneye))
    assert {f for f in feats if f.startswith("genre:")} == {
        "genre:Action",
        "genre:Adventure",
        "genre:Thriller",
    }
    assert "decade:1990s" in feats
    # latin-1 titles decode to the right characters
    assert ml100k.item_titles[_item(ml100k, "543")] == "Misérables, Les (1995)"
    assert ml100k.item_titles[_item(ml100k, "1633")].startswith("Á köldum klaka")
    # item 267 is the "unknown" placeholder: no year, and the "unknown" genre flag is dropped
    assert ml100k.item_titles[_item(ml100k, "267")] == "unknown"
    assert [
        f for f in ml100k.item_features.of(_item(ml100k, "267")) if not f.startswith("popularity:")
    ] == []
    # 1412 "... (1995) (V)" has no trailing year: the decade comes from its release date
    assert "decade:1990s" in ml100k.item_features.of(_item(ml100k, "1412"))
    genres = ml100k.item_features.columns("genre")
    assert len(genres) == 18 and "genre:unknown" not in ml100k.item_features.names
    assert (
        ml100k.item_features.matrix[:, ml100k.item_features.names.index("genre:Drama")].sum() == 725
    )


def test_ml100k_user_features(ml100k: Dataset) -> None:
    uf = ml100k.user_features
    assert uf is not None and uf.matrix.shape[0] == 943
    assert set(uf.of(_user(ml100k, "1"))) == {"age:18-24", "gender:M", "occupation:technician"}
    assert set(uf.of(_user(ml100k, "2"))) == {"age:50-55", "gender:F", "occupation:other"}
    assert uf.groups == ["age", "gender", "occupation"]
    assert uf.matrix[:, uf.columns("gender")].sum(axis=1).tolist() == [1] * 943


def test_popularity_buckets_are_disjoint_and_ordered(ml100k: Dataset) -> None:
    cols = ml100k.item_features.columns("popularity")
    names = [ml100k.item_features.names[c] for c in cols]
    assert names == ["popularity:head", "popularity:mid", "popularity:tail"]
    m = ml100k.item_features.matrix[:, cols]
    assert (m.sum(axis=1) == 1).all()
    pop = ml100k.item_popularity()
    head, mid, tail = (pop[m[:, j]] for j in range(3))
    assert head.min() > mid.max() and mid.min() > tail.max()
    assert 160 <= len(head) <= 176  # the count cut nearest 10% of 1,682 (ties on one side)
    assert pop[_item(ml100k, "50")] == 583 and m[_item(ml100k, "50"), 0]  # Star Wars is head


def test_popularity_ties_join_the_more_popular_bucket() -> None:
    counts = [5, 5, 4, 3, 3, 2, 1, 1, 0, 0]
    t = popularity_features(np.repeat(np.arange(10), counts), 10)
    # head = top 1 item (10%) plus its tie; mid = down to rank 5 (50%) plus ties; tail = rest
    assert [t.of(i)[0].split(":")[1] for i in range(10)] == ["head"] * 2 + ["mid"] * 3 + [
        "tail"
    ] * 5


def test_popularity_buckets_never_empty_when_most_items_have_one_user() -> None:
    # a play-count log: 60% of the items have one user; the old rank cut put them all in "mid"
    counts = [50, 40, 30, 20, 10, 8, 5, 3] + [2] * 12 + [1] * 30
    t = popularity_features(np.repeat(np.arange(len(counts)), counts), len(counts))
    assert t.names == ["popularity:head", "popularity:mid", "popularity:tail"]
    m = t.matrix
    assert (m.sum(axis=0) > 0).all() and (m.sum(axis=1) == 1).all()
    assert m[-30:, 2].all() and m[:, 2].sum() == 30  # the single-user items are the tail
    c = np.asarray(counts)
    assert c[m[:, 0]].min() > c[m[:, 1]].max() and c[m[:, 1]].min() > c[m[:, 2]].max()


def test_popularity_with_two_or_one_distinct_counts() -> None:
    two = popularity_features(np.repeat(np.arange(6), [3, 3, 1, 1, 1, 1]), 6)
    assert two.names == ["popularity:head", "popularity:tail"] and two.matrix[:2, 0].all()
    one = popularity_features(np.repeat(np.arange(5), 2), 5)
    assert one.names == [] and one.matrix.shape == (5, 0)


def test_rechorus_names_are_not_parsed_for_years(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("user_id\titem_id\ttime\n1\t1\t1\n1\t2\t2\n2\t1\t3\n")
    (tmp_path / "item_meta.csv").write_text(
        "item_id\ttitle\ti_kind\n1\tBillie Holiday (1915-1959)\t0\n2\tRobert Johnson (1911-)\t1\n"
    )
    ds = load_rechorus(tmp_path)
    assert ds.item_titles == ["Billie Holiday (1915-1959)", "Robert Johnson (1911-)"]
    assert not ds.item_features.columns("decade")  # an artist's life is no release year
    assert "kind:0" in ds.item_features.of(0)


def test_movielens_open_year_range_is_no_year(tmp_path: Path) -> None:
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4,1\n1,2,4,2\n")
    (tmp_path / "movies.csv").write_text(
        "movieId,title,genres\n1,Some Series (1994-1998),Drama\n2,A Person (1935-),Drama\n"
    )
    ds = load_movielens_latest(tmp_path)
    assert "decade:1990s" in ds.item_features.of(0)
    assert not [f for f in ds.item_features.of(1) if f.startswith("decade:")]


def test_ml100k_min_rating(data_dir: Path) -> None:
    ds = load_ml100k(_sub(data_dir, "ml-100k"), min_rating=4)
    assert (ds.n_interactions, ds.n_users, ds.n_items) == (34_174 + 21_201, 942, 1447)
    assert ds.meta["filters"]["min_rating"] == 4
    assert ds.meta["counts"]["raw_interactions"] == 100_000
    assert ds.item_features.matrix.shape[0] == ds.n_items
    assert ds.item_titles[_item(ds, "1")] == "Toy Story (1995)"


@pytest.mark.parametrize("k", [5, 20])
def test_kcore_invariant_and_maximal(ml100k: Dataset, k: int) -> None:
    base = kcore_filter(load_ml100k(Path(ml100k.meta["source"]), min_rating=4), 1)
    ds = kcore_filter(base, k)
    assert np.bincount(ds.users).min() >= k and np.bincount(ds.items).min() >= k
    assert ds.n_items < base.n_items
    # maximal: nothing between surviving users and items was dropped
    kept_u, kept_i = set(ds.user_ids.tolist()), set(ds.item_ids.tolist())
    inside = sum(
        1
        for u, i in zip(base.user_ids[base.users], base.item_ids[base.items], strict=True)
        if u in kept_u and i in kept_i
    )
    assert inside == ds.n_interactions
    assert ds.meta["filters"] == {"min_rating": 4, "kcore": k}
    assert ds.meta["counts"]["items"] == ds.n_items
    # titles, features and popularity follow the re-indexing
    assert ds.item_titles[_item(ds, "1")] == "Toy Story (1995)"
    assert "genre:Animation" in ds.item_features.of(_item(ds, "1"))
    assert (
        ds.item_features.matrix[:, ds.item_features.columns("popularity")].sum(axis=1) == 1
    ).all()
    assert ds.user_features is not None and ds.user_features.matrix.shape[0] == ds.n_users


def test_kcore_rejects_negative_and_too_strict(ml100k: Dataset) -> None:
    with pytest.raises(ConfigError):
        kcore_filter(ml100k, -1)
    with pytest.raises(DataError, match="removed every interaction"):
        kcore_filter(ml100k, 10_000)
    assert kcore_filter(ml100k, 0) is ml100k


def test_empty_after_rating_filter(data_dir: Path) -> None:
    with pytest.raises(DataError, match="no interactions"):
        load_ml100k(_sub(data_dir, "ml-100k"), min_rating=6)


# ---------------------------------------------------------------- ML-1M parser (real metadata)


def _ml1m_folder(data_dir: Path, tmp_path: Path, ratings: bytes) -> Path:
    src = _sub(data_dir, "ml-1m")
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    for f in ("movies.dat", "users.dat"):  # linked, not copied: the data stays in shared/
        os.symlink(src / f, folder / f)
    (folder / "ratings.dat").write_bytes(ratings)
    return folder


RATINGS_DAT = (
    b"1::1193::5::978300760\n1::661::3::978302109\n1::1::4::978301968\n"
    b"2::1::2::978298413\n2::3::5::978298000\n6040::2::4::956703977\n"
)


def test_ml1m_parser_with_real_metadata(data_dir: Path, tmp_path: Path) -> None:
    ds = load_ml1m(_ml1m_folder(data_dir, tmp_path, RATINGS_DAT))
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (3, 5, 6)
    assert ds.item_ids.tolist() == ["1", "2", "3", "661", "1193"]
    assert ds.item_titles[0] == "Toy Story (1995)"
    assert ds.item_titles[-1] == "One Flew Over the Cuckoo's Nest (1975)"
    assert {"genre:Animation", "genre:Children's", "genre:Comedy", "decade:1990s"} <= set(
        ds.item_features.of(0)
    )
    assert "decade:1970s" in ds.item_features.of(4)
    uf = ds.user_features
    assert uf is not None
    assert set(uf.of(0)) == {"gender:F", "age:Under 18", "occupation:K-12 student"}
    assert set(uf.of(1)) == {"gender:M", "age:56+", "occupation:self-employed"}
    # user 1's chronological order: 1193 (978300760), 1 (978301968), 661 (978302109)
    assert ds.item_ids[ds.sequences()[0]].tolist() == ["1193", "1", "661"]
    kept = load_ml1m(tmp_path / "ml-1m", min_rating=4)
    assert kept.n_interactions == 4 and kept.meta["filters"]["min_rating"] == 4


def test_ml1m_undecodable_byte_names_file_and_line(data_dir: Path, tmp_path: Path) -> None:
    folder = _ml1m_folder(data_dir, tmp_path, b"1::1::5::978300760\n1::2\xff::3::978302109\n")
    with pytest.raises(DataError, match=r"ratings\.dat, line 2: byte 0xff"):
        load_ml1m(folder)


def test_ml1m_metadata_only_folder_is_explained(data_dir: Path) -> None:
    with pytest.raises(DataError, match=r"no ratings\.dat.*recsae fetch ml-1m"):
        load_dataset(_sub(data_dir, "ml-1m"))
    with pytest.raises(
        DataError, match=r"missing file .*ratings\.dat.*--data-dir.*recsae fetch ml-1m"
    ):
        load_ml1m(_sub(data_dir, "ml-1m"))


# ---------------------------------------------------------------- ML-latest (generated files)


def _write_latest(folder: Path, tags: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n"
        "1,1,4.0,964982703\n1,3,4.5,964981247\n1,6,2.0,964982224\n"
        "2,1,5.0,1445714835\n2,11,3.5,1445714996\n3,6,0.5,1306463578\n"
    )
    (folder / "movies.csv").write_text(
        "movieId,title,genres\n"
        "1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy\n"
        '3,"American President, The (1995)",Comedy|Drama|Romance\n'
        "6,Heat (1995) ,Action|Crime|Thriller\n"
        "11,Some Series (2006–2007),(no genres listed)\n"
        "12,No Year Here,Drama\n"
    )
    if tags:
        (folder / "tags.csv").write_text(
            "userId,movieId,tag,timestamp\n"
            "1,1,pixar,1\n2,1,Pixar,2\n1,6,heist,3\n2,6,pacino,4\n3,3,politics,5\n1,11, pixar ,6\n"
        )
    return folder


def test_movielens_latest(tmp_path: Path) -> None:
    ds = load_movielens_latest(_write_latest(tmp_path / "ml-latest-small"), top_tags=2)
    assert ds.name == "ml-latest-small"
    assert ds.item_ids.tolist() == ["1", "3", "6", "11"]
    assert ds.item_titles[1] == "American President, The (1995)"
    assert set(ds.item_features.of(1)) >= {
        "genre:Comedy",
        "genre:Drama",
        "genre:Romance",
        "decade:1990s",
    }
    assert "decade:2000s" in ds.item_features.of(3)
    assert not [f for f in ds.item_features.of(3) if f.startswith("genre:")]
    # pixar is on 2 movies, heist/pacino/politics on 1: top-2 keeps pixar and (by name) heist
    tags = [n for n in ds.item_features.names if n.startswith("tag:")]
    assert tags == ["tag:heist", "tag:pixar"]
    assert "tag:pixar" in ds.item_features.of(0) and "tag:pixar" in ds.item_features.of(3)
    implicit = load_movielens_latest(tmp_path / "ml-latest-small", min_rating=3.5)
    assert implicit.n_interactions == 4 and implicit.item_ids.tolist() == ["1", "3", "11"]
    assert load_dataset(tmp_path / "ml-latest-small").n_interactions == 6


def test_movielens_latest_bad_header(tmp_path: Path) -> None:
    folder = _write_latest(tmp_path / "x", tags=False)
    (folder / "ratings.csv").write_text(
        "userId\tmovieId\trating\ttimestamp\n1\t1\t4.0\t964982703\n"
    )
    with pytest.raises(DataError, match=r"ratings\.csv, line 1: missing column.*tab-separated"):
        load_movielens_latest(folder)


# ---------------------------------------------------------------- ReChorus (real reference files)


def test_grocery_rechorus(data_dir: Path) -> None:
    root = _sub(data_dir, "recsae-reference/Grocery_and_Gourmet_Food")
    ds = load_dataset("grocery", data_dir=data_dir)
    assert ds.name == "grocery"
    assert (ds.n_interactions, ds.n_users, ds.n_items) == (121_892, 14_681, 8_687)
    assert ds.meta["files"] == ["train.csv", "item_meta.csv"]
    cats = ds.item_features.columns("category")
    assert 2 <= len(cats) <= 57
    assert (ds.item_features.matrix[:, cats].sum(axis=1) == 1).all()  # one category per item
    # compare with item_meta.csv read independently
    expected = {}
    with open(root / "item_meta.csv", encoding="utf-8") as f:
        next(f)
        for line in f:
            item_id, cat = line.split("\t", 2)[:2]
            expected[item_id] = f"category:{cat}"
    for i in (0, 1, 500, ds.n_items - 1):
        assert expected[ds.item_ids[i]] in ds.item_features.of(i)
    assert ds.item_titles[0] == f"item {ds.item_ids[0]}"  # Grocery has no titles
    assert "r_complement" not in " ".join(ds.item_features.names)


def test_rechorus_ml1m_topk_titles_and_genres(data_dir: Path) -> None:
    ds = load_rechorus(_sub(data_dir, "recsae-reference/MovieLens_1M/ML_1MTOPK"))
    assert ds.meta["files"] == ["dev.csv", "test.csv", "item_meta_all_info.csv"]
    assert ds.n_interactions == 2562 + 2874
    assert ds.item_features.groups == [
        "decade",
        "genre",
        "popularity",
    ]  # i_genre_c/i_title_c skipped
    if "1" in ds.item_ids:
        assert ds.item_titles[_item(ds, "1")] == "Toy Story (1995)"
    assert all(not t.startswith("item ") for t in ds.item_titles)


def test_rechorus_comma_header_is_explained(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("user_id,item_id,time\n1,2,3\n")
    with pytest.raises(DataError, match=r"train\.csv, line 1: missing column.*comma-separated"):
        load_rechorus(tmp_path)


def test_rechorus_row_with_wrong_field_count(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("user_id\titem_id\ttime\n1\t2\t3\n4\t5,6\n")
    with pytest.raises(
        DataError, match=r"train\.csv, line 3: expected 3 tab-separated fields, found 2"
    ):
        load_rechorus(tmp_path)


# ---------------------------------------------------------------- plain CSV


def test_load_csv(tmp_path: Path) -> None:
    f = tmp_path / "clicks.csv"
    f.write_text('uid;sku;ts;stars;name\na;x;30;5;"X, the item"\na;y;10;1;Y\nb;x;20;4;X again\n')
    ds = load_csv(f, "uid", "sku", time_col="ts", rating_col="stars", sep=";", title_col="name")
    assert ds.name == "clicks" and ds.user_ids.tolist() == ["a", "b"]
    assert ds.item_ids[ds.sequences()[0]].tolist() == ["y", "x"]
    assert ds.item_titles[0] == "X, the item"
    assert load_csv(f, "uid", "sku", rating_col="stars", sep=";", min_rating=4).n_interactions == 2
    # without a time column the row order is the clock
    assert ds.item_ids[load_csv(f, "uid", "sku", sep=";").sequences()[0]].tolist() == ["x", "y"]
    with pytest.raises(ConfigError, match="rating_col"):
        load_csv(f, "uid", "sku", sep=";", min_rating=4)
    with pytest.raises(DataError, match=r"missing column\(s\) \['user'\]"):
        load_csv(f, "user", "sku", sep=";")
    with pytest.raises(DataError, match=r"line 1: missing column.*semicolon-separated"):
        load_csv(f, "uid", "sku", sep=",")  # a wrong separator given; None sniffs it
    assert load_csv(f, "uid", "sku").n_interactions == 3


# ---------------------------------------------------------------- dispatch and bad input


def test_load_dataset_by_name_and_path(data_dir: Path) -> None:
    _sub(data_dir, "ml-100k")
    by_name = load_dataset("ml-100k", data_dir=data_dir, min_rating=4, kcore=5)
    by_path = load_dataset(data_dir / "ml-100k", min_rating=4, kcore=5)
    assert by_name.summary() == by_path.summary()
    assert by_name.meta["filters"] == {"min_rating": 4, "kcore": 5}
    with pytest.raises(ConfigError, match="no ratings"):
        load_dataset("grocery", data_dir=data_dir, min_rating=4)


def test_load_dataset_env_var(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _sub(data_dir, "ml-100k")
    monkeypatch.setenv("RECSAE_DATA_DIR", str(data_dir))
    assert load_dataset("ml-100k").n_interactions == 100_000


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(
        DataError, match=r"unknown dataset 'movielens'.*ml-100k.*grocery.*synthetic"
    ):
        load_dataset("movielens")


def test_missing_dataset_suggests_data_dir_and_fetch(tmp_path: Path) -> None:
    with pytest.raises(
        DataError, match=r"not found at .*ml-100k.*--data-dir.*recsae fetch ml-100k"
    ):
        load_dataset("ml-100k", data_dir=tmp_path)
    (tmp_path / "ml-100k").mkdir()
    (tmp_path / "ml-100k" / "u.data").write_text("1\t1\t5\t1\n")
    with pytest.raises(
        DataError, match=r"missing file .*u\.item.*--data-dir.*recsae fetch ml-100k"
    ):
        load_dataset("ml-100k", data_dir=tmp_path)
    with pytest.raises(DataError, match="cannot tell the format"):
        load_dataset(tmp_path)


def test_comma_file_where_tabs_expected(data_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    os.symlink(_sub(data_dir, "ml-100k") / "u.item", folder / "u.item")
    (folder / "u.data").write_text("196\t242\t3\t881250949\n186,302,3,891717742\n")
    with pytest.raises(
        DataError, match=r"u\.data, line 2: expected 4 tab-separated fields, found 1.*comma"
    ):
        load_ml100k(folder)
    (folder / "u.data").write_text("196\t242\tthree\t881250949\n")
    with pytest.raises(DataError, match=r"u\.data, line 1: rating 'three' is not a number"):
        load_ml100k(folder)
    (folder / "u.data").write_bytes("196\t242\t3\t881250949\n".encode("utf-16"))
    with pytest.raises(DataError, match=r"u\.data, line 1: byte 0xff"):
        load_ml100k(folder)


def test_synthetic_by_name() -> None:
    ds = load_dataset("synthetic", kcore=5)
    assert ds.name == "synthetic" and np.bincount(ds.items).min() >= 5
    with pytest.raises(ConfigError):
        load_dataset("synthetic", min_rating=3)


# ---------------------------------------------------------------- leave-one-out on hand-built logs


def _hand_built(rows: list[tuple[int, int, int]], n_items: int = 6) -> Dataset:
    users, items, times = (np.array(c) for c in zip(*rows, strict=True))
    n_users = int(users.max()) + 1
    return Dataset(
        name="hand",
        user_ids=np.array([f"u{u}" for u in range(n_users)]),
        item_ids=np.array([f"i{i}" for i in range(n_items)]),
        users=users,
        items=items,
        times=times,
        item_titles=[f"t{i}" for i in range(n_items)],
        item_features=FeatureTable.empty(n_items),
    )


def test_leave_one_out_chronological_with_ties() -> None:
    ds = _hand_built(
        [
            (0, 5, 40), (0, 1, 10), (0, 4, 30), (0, 2, 20),  # user 0: 1, 2, 4, 5 by time
            (1, 3, 7), (1, 0, 7), (1, 2, 5), (1, 5, 9),  # user 1: tie at t=7 -> item 0 before 3
            (2, 4, 1), (2, 1, 2),  # user 2: too short to evaluate
            (3, 2, 5), (3, 0, 5), (3, 1, 5),  # user 3: all tied -> 0, 1, 2
        ]
    )  # fmt: skip
    split = leave_one_out(ds)
    assert split.train[0].tolist() == [1, 2] and (split.dev[0], split.test[0]) == (4, 5)
    assert split.train[1].tolist() == [2, 0] and (split.dev[1], split.test[1]) == (3, 5)
    assert split.train[2].tolist() == [4, 1] and (split.dev[2], split.test[2]) == (-1, -1)
    assert split.train[3].tolist() == [0] and (split.dev[3], split.test[3]) == (1, 2)
    assert split.history(0, "test").tolist() == [1, 2, 4]
    assert split.full_history(1).tolist() == [2, 0, 3, 5]
    assert split.full_history(2).tolist() == [4, 1]
    # the same log in another row order gives the same split
    shuffled = _hand_built(
        [
            (3, 1, 5), (1, 5, 9), (0, 2, 20), (2, 1, 2), (1, 0, 7), (0, 5, 40), (3, 0, 5),
            (1, 3, 7), (0, 1, 10), (2, 4, 1), (0, 4, 30), (1, 2, 5), (3, 2, 5),
        ]
    )  # fmt: skip
    other = leave_one_out(shuffled)
    assert np.array_equal(other.dev, split.dev) and np.array_equal(other.test, split.test)
    assert all(np.array_equal(a, b) for a, b in zip(other.train, split.train, strict=True))


def test_leave_one_out_on_ml100k(ml100k: Dataset) -> None:
    split = leave_one_out(ml100k)
    assert (split.dev >= 0).all() and (split.test >= 0).all()  # every ML-100K user has >= 20
    seqs = ml100k.sequences()
    u = _user(ml100k, "1")
    assert split.full_history(u).tolist() == seqs[u].tolist()
    assert sum(len(t) for t in split.train) == 100_000 - 2 * 943


def test_quoted_csv_row_with_wrong_width(tmp_path: Path) -> None:
    folder = _write_latest(tmp_path / "ml-latest-small", tags=False)
    with open(folder / "movies.csv", "a") as f:
        f.write("13,Unquoted, The (1999),Drama\n")
    with pytest.raises(
        DataError, match=r"movies\.csv, line 7: expected 3 comma-separated fields, found 4"
    ):
        load_movielens_latest(folder)
