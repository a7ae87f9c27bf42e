"""Concept quality, scored by script: do headlines hold on held-out rows, are concepts distinct?

For each dataset the offline job's stages run through ``recsae.pipeline`` with a work directory
(recommender, activations and SAE are cached and reused), then the stats describer describes and
scores every latent and this script judges the dictionary without a person:

* headline terms: the attributes a concept's headline names (``Concept.headline``; for
  dictionaries from before that field, the old rule: the first 3 enriched non-user features with
  lift >= 1.3). Support of a term = mean of its sample feature over the latent's firing rows
  (history terms: share of window items; last/next/user terms: share of rows), on the SAE
  *training* rows (what the describer saw) and on the *held-out* rows (precision);
* headline holds: every clause (terms of one source and group, read as OR) has held-out support
  >= 50%;
* names nothing: a described concept whose headline is empty or only popularity and that names
  no item (no exemplar, no item attribute);
* near-duplicates: described concepts whose description text equals another's, or whose
  attribute sets overlap (Jaccard >= 0.8);
* confidence: the paper protocol's mean and share >= 0.8 (and of the concepts that name nothing);
* synthetic data: recovery / precision of the planted concepts.

    .venv/bin/python benchmarks/concept_quality.py --threads 1 --work-dir runs/cq      # all three
    .venv/bin/python benchmarks/concept_quality.py --threads 1 --dataset grocery --work-dir runs/cq

Model / SAE settings per dataset are fixed (modest epochs: the point is the describer, run on
the same cached SAE before and after a change).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SETTINGS = {  # dataset -> (SASRec epochs, SAE epochs): modest, the machine is shared
    "synthetic": (5, 8),
    "ml-100k": (3, 20),
    "grocery": (2, 20),
}
OLD_HEADLINE_LIFT, OLD_HEADLINE_TERMS = 1.3, 3


def headline_terms(c) -> list[str]:
    """The attributes (with source) a concept's headline names."""
    from recsae.interpret.evidence import Attribute

    h = getattr(c, "headline", None)
    if h is not None:
        return list(h)
    out, seen = [], set()  # main's StatsDescriber.text rule, for dictionaries without the field
    for e in c.evidence.enriched:
        a = Attribute.parse(e.feature)
        if a.source != "user" and e.lift >= OLD_HEADLINE_LIFT and a.feature not in seen:
            seen.add(a.feature)
            out.append(e.feature)
        if len(out) == OLD_HEADLINE_TERMS:
            break
    return out


def names_nothing(c, terms: list[str]) -> bool:
    from recsae.interpret.evidence import Attribute

    specific = [t for t in terms if Attribute.parse(t).group != "popularity"]
    items = [a for a in c.attributes if Attribute.parse(a).group == "item"]
    named = [e for e in getattr(c, "exemplars", []) if e in (c.description or "")]
    return not specific and not items and not named


def near_duplicates(concepts) -> set[int]:
    """Latents whose description equals another's or whose attributes overlap (Jaccard >= 0.8)."""
    desc = [c for c in concepts if c.status == "described"]
    dup: set[int] = set()
    by_text: dict[str, list[int]] = {}
    for c in desc:
        by_text.setdefault(" ".join((c.description or "").lower().split()), []).append(c.latent)
    for ls in by_text.values():
        if len(ls) > 1:
            dup.update(ls)
    sets = [(c.latent, frozenset(c.attributes)) for c in desc if c.attributes]
    for i, (li, a) in enumerate(sets):
        for lj, b in sets[i + 1 :]:
            if len(a & b) / len(a | b) >= 0.8:
                dup.update((li, lj))
    return dup


def judge(d, space, train, heldout) -> dict:
    import numpy as np

    from recsae.interpret.evidence import Attribute

    desc = [c for c in d.concepts if c.status == "described"]
    rows: list[dict] = []
    for c in desc:
        terms = headline_terms(c)
        tr, _ = train.firing(c.latent)
        ho, _ = heldout.firing(c.latent)
        sup_tr = [float(space.match([t], train, tr).mean()) if len(tr) else 0.0 for t in terms]
        sup_ho = [float(space.match([t], heldout, ho).mean()) if len(ho) else float("nan") for t in terms]
        clauses = space.clauses(terms)
        holds = bool(clauses) and len(ho) > 0 and all(
            float(space.clause_values(cl, heldout, ho).mean()) >= 0.5 for cl in clauses
        )
        rows.append(dict(latent=c.latent, terms=terms, sup_tr=sup_tr, sup_ho=sup_ho, holds=holds,
                         nothing=names_nothing(c, terms), conf=c.confidence))  # fmt: skip
    terms_tr = np.array([s for r in rows for s in r["sup_tr"]])
    terms_ho = np.array([s for r in rows for s in r["sup_ho"] if s == s])
    with_head = [r for r in rows if r["terms"]]
    nothing = [r for r in rows if r["nothing"]]
    dups = near_duplicates(d.concepts)
    flagged = {c.latent for c in desc if getattr(c, "duplicates", None)}
    mean = lambda xs: round(float(np.mean(xs)), 4) if len(xs) else None  # noqa: E731
    s = d.summary
    worst = sorted(
        ((min(r["sup_tr"]), r) for r in with_head), key=lambda x: x[0]
    )[:3]
    by_latent = d.by_latent()
    return {
        "n_alive": s["n_alive"],
        "n_described": len(desc),
        "mean_confidence": s["mean_confidence"],
        "share_confidence_ge_0.8": s["share_confidence_ge_0.8"],
        "concepts_with_headline": round(len(with_head) / max(1, len(desc)), 4),
        "headline_terms": int(len(terms_tr)),
        "term_support_train_mean": mean(terms_tr),
        "terms_support_train_lt_0.2": round(float((terms_tr < 0.2).mean()), 4) if len(terms_tr) else 0.0,
        "terms_support_train_lt_0.5": round(float((terms_tr < 0.5).mean()), 4) if len(terms_tr) else 0.0,
        "term_precision_heldout_mean": mean(terms_ho),
        "terms_precision_heldout_lt_0.2": round(float((terms_ho < 0.2).mean()), 4) if len(terms_ho) else 0.0,
        "headline_holds_heldout": round(sum(r["holds"] for r in with_head) / max(1, len(desc)), 4),
        "names_nothing": round(len(nothing) / max(1, len(desc)), 4),
        "names_nothing_mean_confidence": mean([r["conf"] for r in nothing if r["conf"] is not None]),
        "near_duplicates": round(len(dups) / max(1, len(desc)), 4),
        "near_duplicates_flagged": round(len(dups & flagged) / max(1, len(dups)), 4) if dups else None,
        "weakest_headlines": [
            f"latent {r['latent']}: {min(r['sup_tr']):.2f} support — {(by_latent[r['latent']].description or '')[:110]}"
            for _, r in worst
        ],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", action="append", default=None, choices=sorted(SETTINGS), help="repeatable (default: all)")
    p.add_argument("--data-dir", default=os.environ.get("RECSAE_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data")))
    p.add_argument("--work-dir", default="runs/concept-quality", help="cache of finished stages (reused)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the results here")
    a = p.parse_args(argv)

    import numpy as np
    import torch

    from recsae.data import leave_one_out, make_synthetic
    from recsae.interpret import interpret_activations
    from recsae.interpret.evidence import FeatureSpace, SampleSet
    from recsae.interpret.scorers import planted_recovery
    from recsae.pipeline import (
        JobConfig, capture_activations, fit_sae, item_embeddings, kernel_of, load_data, train_recommender,
        work_dir_for,
    )  # fmt: skip

    torch.set_num_threads(a.threads)
    results = {}
    for name in a.dataset or list(SETTINGS):
        epochs, sae_epochs = SETTINGS[name]
        cfg = JobConfig(
            dataset=name, data_dir=a.data_dir, seed=a.seed, threads=a.threads, progress=False,
            sae_epochs=sae_epochs, train_params={"epochs": epochs},
        )  # fmt: skip
        if name == "synthetic":
            cfg = replace(cfg, data_dir=None)
        work = work_dir_for(cfg, Path(a.work_dir))
        ds = load_data(cfg)
        split = leave_one_out(ds)
        model, _ = train_recommender(cfg, split, work)
        acts = capture_activations(model, split, cfg, work)
        sae, _ = fit_sae(cfg, acts, work)
        kernel, emb = kernel_of(sae), item_embeddings(model)
        t = time.perf_counter()
        d = interpret_activations(ds, kernel, emb, acts, describer="stats", seed=cfg.seed)
        seconds = time.perf_counter() - t
        train = SampleSet.build(acts.train, acts.train_windows, acts.train_users, kernel, np.asarray(emb, np.float32))
        heldout = SampleSet.build(acts.heldout, acts.heldout_windows, acts.heldout_users, kernel, np.asarray(emb, np.float32))
        space = FeatureSpace(ds.item_features, ds.item_titles, ds.item_ids, ds.user_features)
        r = judge(d, space, train, heldout)
        r["describe_seconds"] = round(seconds, 1)
        if name == "synthetic":
            gt = planted_recovery(d.concepts, make_synthetic()[1])
            r["planted_recovery"], r["planted_precision"] = gt["recovery"], gt["precision"]
        r["dictionary_rules"] = {k: v for k, v in d.summary.items() if k.startswith("headline_")}
        results[name] = r
        print(f"\n== {name} ({kernel.n_latents} latents, k={kernel.k}) ==")
        w = max(len(k) for k in r)
        for k, v in r.items():
            if k == "weakest_headlines":
                print(f"{k:<{w}}")
                for line in v:
                    print(f"  {line}")
            else:
                print(f"{k:<{w}}  {v}")
        sys.stdout.flush()
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
