"""Is there a cheaper popularity direction than the reserved latent's? (issue 5, supporting table)

For several unit directions p in representation space, projects a share s of each user's
representation onto p out (``x - s * (x . p) p``, what suppressing a reserved latent along p does
at strength s), finds by bisection the s that cuts the stage's top-20% share of top-10 lists by a
third, and prints the relative NDCG@10 loss there, on the dev and on the test stage. The
``log(1+pop)`` re-ranking baseline is bisected the same way. Also prints the share of each
stage's held-out targets that are head items (why the stages disagree).

    .venv/bin/python benchmarks/debias_directions.py --bundle bundles/ml100k
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def directions(emb: np.ndarray, head: np.ndarray, popularity: np.ndarray, x_dev: np.ndarray) -> dict[str, np.ndarray]:
    """Candidate popularity directions, each a unit vector."""
    eh, et = emb[head], emb[~head]
    within = (np.cov(eh.T) * len(eh) + np.cov(et.T) * len(et)) / len(emb)
    ridge = np.trace(within) / len(within)
    centred = emb - emb.mean(0)
    y = np.log1p(popularity)
    gram = centred.T @ centred
    out = {
        "head mean - catalogue mean (the reserved latent's)": eh.mean(0) - emb.mean(0),
        "LDA head vs tail items": np.linalg.solve(within + ridge * np.eye(len(within)), eh.mean(0) - et.mean(0)),
        "ridge regression on log(1+pop)": np.linalg.solve(gram + 0.1 * np.trace(gram) / len(gram) * np.eye(len(gram)),
                                                          centred.T @ (y - y.mean())),
        "popularity-weighted item mean - catalogue mean": (popularity[:, None] * emb).sum(0) / popularity.sum() - emb.mean(0),
        "mean user representation (dev)": x_dev.mean(0),
    }
    return {k: (v / np.linalg.norm(v)).astype(np.float32) for k, v in out.items()}


def loss_at_cut(evaluate, cut: float = 1 / 3, hi: float = 3.0, steps: int = 18) -> tuple[float, float, float]:
    """Bisect the knob of ``evaluate(knob) -> (cut, ndcg_loss)`` (cut rising with the knob) to
    ``cut``; returns (knob, cut, ndcg_loss) there."""
    lo = 0.0
    if evaluate(hi)[0] < cut:
        return float("nan"), *evaluate(hi)
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if evaluate(mid)[0] < cut else (lo, mid)
    return hi, *evaluate(hi)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default=str(ROOT / "bundles" / "ml100k"))
    p.add_argument("--data-dir", default=os.environ.get("RECSAE_DATA_DIR", str(ROOT.parent / "shared" / "data")))
    a = p.parse_args(argv)

    from recsae import debias as D

    data = D.load_data(a.bundle, a.data_dir)
    measure = data.measure("popularity")
    stages = (data.select, data.test)
    base = {st.stage: D._summarise(data, st, measure, *D._list_stats(data, st, st.x)) for st in stages}

    def result(st, ids, ranks) -> tuple[float, float]:
        r = D._summarise(data, st, measure, ids, ranks)
        b = base[st.stage]
        return 1 - r["bias"] / b["bias"], 1 - r["ndcg"] / b["ndcg"]

    print(f"bundle {data.source['bundle']} ({data.source['version']}); held-out targets that are head items: "
          + ", ".join(f"{st.stage} {measure.head[st.targets].mean():.1%}" for st in stages))
    print(f"| direction | cos with the reserved | " + " | ".join(
        f"{st.stage}: strength, NDCG@10 loss at a 1/3 cut" for st in stages) + " |")
    print("|---|---:|" + "---:|" * len(stages))
    dirs = directions(data.item_emb, measure.head, data.popularity, data.select.x)
    ref = next(iter(dirs.values()))
    for name, d in dirs.items():
        cells = []
        for st in stages:
            proj = st.x @ d

            def ev(s: float, st=st, proj=proj) -> tuple[float, float]:
                return result(st, *D._list_stats(data, st, st.x - s * proj[:, None] * d[None]))

            s, c, loss = loss_at_cut(ev)
            cells.append(f"{s:.2f}, {loss:+.1%}")
        print(f"| {name} | {float(d @ ref):+.2f} | " + " | ".join(cells) + " |")
    cells = []
    for st in stages:
        scores = st.x @ data.item_emb.T
        pen = np.log1p(data.popularity).astype(np.float32)
        scale = float(scores.std() / pen.std())

        def ev(c: float, st=st, scores=scores, pen=pen, scale=scale) -> tuple[float, float]:
            return result(st, *D._list_stats(data, st, st.x, scores=scores - c * scale * pen))

        c, _, loss = loss_at_cut(ev)
        cells.append(f"λ {c:.2f}, {loss:+.1%}")
    print("| re-ranking score − λ·log(1+pop) | – | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
