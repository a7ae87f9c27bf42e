"""Generated example logs in the shapes teams bring (README, "Bring your own data"); no licensed data.

``write_examples(folder)`` writes three logs, each with planted taste groups so a recommender has
something to learn and a popularity baseline something to lose to:

* ``ratings.csv`` + ``movies.csv``: MovieLens-like ratings (1-5) with unix timestamps; users rate
  films of their genres high and others low, so the rating threshold matters.
* ``plays.tsv`` + ``artists.csv``: a music log, user / artist / play count, **no time**; artist
  names with accents in a **latin-1** item file (``artist_id;name;tags``, tags ``|``-separated).
  A few rows have 0 plays (a skipped track: not a positive interaction).
* ``clicks.parquet``: a click log (``session_user``, ``sku``, ``clicked_at`` as a timestamp) with
  repeated clicks, browsed within one category at a time, so the order carries signal.

``python -m recsae.data.examples FOLDER`` writes them (the README examples run on these).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

__all__ = ["MUSIC_GENRES", "write_examples", "write_music", "write_ratings", "write_clicks"]

MUSIC_GENRES = ("pop", "rock", "metal", "jazz", "electronic", "folk")
_EXTRA_TAGS = ("dance", "indie", "80s", "female vocalists", "instrumental", "live")
_SYLLABLES = ("ma", "rö", "li", "sé", "na", "ko", "ñu", "ta", "bé", "ri", "ø", "vo", "lu", "dé", "ka", "sol")
_FILM_GENRES = ("Drama", "Comedy", "Horror", "Sci-Fi", "Romance")


def _name(rng: np.random.Generator, used: set[str]) -> str:
    while True:
        words = ["".join(rng.choice(_SYLLABLES, rng.integers(2, 4))).capitalize() for _ in range(rng.integers(1, 3))]
        name = " ".join(words)
        if name not in used:
            used.add(name)
            return name


def _taste_walk(rng, groups: np.ndarray, pop: np.ndarray, liked: list[int], n: int, p_noise: float = 0.15) -> list[int]:
    """``n`` distinct items: mostly popular members of the liked groups, some by global popularity."""
    chosen: list[int] = []
    while len(chosen) < n:
        if rng.random() < p_noise:
            cand = np.arange(len(groups))
        else:
            cand = np.flatnonzero(groups == liked[int(rng.integers(len(liked)))])
        cand = np.setdiff1d(cand, chosen)
        if not len(cand):
            break
        w = pop[cand] / pop[cand].sum()
        chosen.append(int(rng.choice(cand, p=w)))
    return chosen


def write_music(folder: Path, n_users: int = 600, n_artists: int = 150, seed: int = 0) -> dict[str, Path]:
    """``plays.tsv`` (no time) and the latin-1 ``artists.csv``; returns their paths."""
    rng = np.random.default_rng(seed)
    genre = rng.integers(len(MUSIC_GENRES), size=n_artists)
    pop = 1.0 / np.arange(1, n_artists + 1) ** 0.8
    rng.shuffle(pop)
    used: set[str] = set()
    artists = folder / "artists.csv"
    lines = ["artist_id;name;tags"]
    for a in range(n_artists):
        tags = [MUSIC_GENRES[genre[a]], *rng.choice(_EXTRA_TAGS, rng.integers(0, 3), replace=False)]
        lines.append(f"a{a:03d};{_name(rng, used)};{'|'.join(tags)}")
    artists.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    plays = folder / "plays.tsv"
    rows = ["user_id\tartist_id\tplays"]
    for u in range(n_users):
        liked = list(rng.choice(len(MUSIC_GENRES), rng.integers(1, 3), replace=False))
        for a in _taste_walk(rng, genre, pop, liked, int(rng.integers(8, 25))):
            count = 0 if rng.random() < 0.03 else int(np.ceil(rng.lognormal(2.0 if genre[a] in liked else 0.5, 1.0)))
            rows.append(f"u{u}\ta{a:03d}\t{count}")
    plays.write_text("\n".join(rows) + "\n")
    return {"log": plays, "items": artists}


def write_ratings(folder: Path, n_users: int = 300, n_movies: int = 120, seed: int = 1) -> dict[str, Path]:
    """``ratings.csv`` (userId,movieId,rating,timestamp) and ``movies.csv`` (movieId,title,genres)."""
    rng = np.random.default_rng(seed)
    genre = rng.integers(len(_FILM_GENRES), size=n_movies)
    pop = 1.0 / np.arange(1, n_movies + 1) ** 0.7
    rng.shuffle(pop)
    movies = folder / "movies.csv"
    used: set[str] = set()
    lines = ["movieId,title,genres"]
    for m in range(n_movies):
        lines.append(f'{m + 1},"{_name(rng, used)}, The ({1950 + int(rng.integers(70))})",{_FILM_GENRES[genre[m]]}')
    movies.write_text("\n".join(lines) + "\n")
    ratings = folder / "ratings.csv"
    rows = ["userId,movieId,rating,timestamp"]
    for u in range(n_users):
        liked = list(rng.choice(len(_FILM_GENRES), 2, replace=False))
        t = 1_000_000_000 + int(rng.integers(10**7))
        for m in _taste_walk(rng, genre, pop, liked, int(rng.integers(10, 30)), p_noise=0.3):
            r = int(rng.integers(4, 6)) if genre[m] in liked else int(rng.integers(1, 4))
            t += int(rng.integers(60, 86_400))
            rows.append(f"{u + 1},{m + 1},{r},{t}")
    ratings.write_text("\n".join(rows) + "\n")
    return {"log": ratings, "items": movies}


def write_clicks(folder: Path, n_users: int = 300, n_skus: int = 100, seed: int = 2) -> dict[str, Path]:
    """``clicks.parquet``: session_user, sku, clicked_at (timestamp); runs of clicks within a category."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    cat = rng.integers(8, size=n_skus)
    pop = 1.0 / np.arange(1, n_skus + 1) ** 0.6
    rng.shuffle(pop)
    users, skus, times = [], [], []
    t0 = np.datetime64("2024-03-01T08:00:00")
    for u in range(n_users):
        t = t0 + np.timedelta64(int(rng.integers(10**6)), "s")
        c = int(rng.integers(8))
        for _ in range(int(rng.integers(8, 30))):
            if rng.random() < 0.3:
                c = int(rng.integers(8))
            cand = np.flatnonzero(cat == c)
            s = int(rng.choice(cand, p=pop[cand] / pop[cand].sum()))
            t = t + np.timedelta64(int(rng.integers(5, 600)), "s")
            users.append(f"s{u:04d}")
            skus.append(f"SKU-{s:04d}")
            times.append(t)
    table = pa.table({"session_user": users, "sku": skus,
                      "clicked_at": pa.array(np.array(times, dtype="datetime64[s]"))})
    path = folder / "clicks.parquet"
    pq.write_table(table, path)
    return {"log": path}


def write_examples(folder: str | Path) -> dict[str, dict[str, Path]]:
    """All three example logs into ``folder`` (created)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return {"ratings": write_ratings(folder), "music": write_music(folder), "clicks": write_clicks(folder)}


if __name__ == "__main__":  # pragma: no cover - exercised through the README test
    out = write_examples(sys.argv[1] if len(sys.argv) > 1 else "examples")
    for name, paths in out.items():
        print(name, " ".join(str(p) for p in paths.values()))
