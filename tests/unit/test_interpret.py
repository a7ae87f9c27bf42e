"""Interpretation: evidence numbers, the match predictor, the protocols, the stats describer, and
ground truth on the synthetic dataset with planted concepts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from llm_stub import names_world, tiny_world  # noqa: E402

from recsae.concepts import ConceptDictionary  # noqa: E402
from recsae.data.core import FeatureTable  # noqa: E402
from recsae.interpret import interpret_activations  # noqa: E402
from recsae.interpret import build_dictionary  # noqa: E402
from recsae.interpret.describers import Describer, Description, StatsDescriber, name_features  # noqa: E402
from recsae.interpret.evidence import (  # noqa: E402
    Attribute,
    FeatureSpace,
    SampleSet,
    best_threshold,
    build_context,
    latent_evidence,
    to_scale,
)
from recsae.interpret.scorers import Scorer, StatsScorer, auc, names_concept, planted_recovery, score_latent  # noqa: E402


@pytest.fixture(scope="module")
def world():
    return tiny_world()


@pytest.fixture(scope="module")
def sides(world):
    ds, kernel, emb, acts, _ = world
    train = SampleSet.build(acts.train, acts.train_windows, acts.train_users, kernel, emb)
    held = SampleSet.build(acts.heldout, acts.heldout_windows, acts.heldout_users, kernel, emb)
    space = FeatureSpace(ds.item_features, ds.item_titles, ds.item_ids, ds.user_features)
    return train, held, space, build_context(train, space)


@pytest.fixture(scope="module")
def dictionary(world) -> ConceptDictionary:
    ds, kernel, emb, acts, _ = world
    return interpret_activations(ds, kernel, emb, acts, describer="stats", seed=0)


# -- attributes and matching -----------------------------------------------------------------------
def test_attribute_names_round_trip():
    for name, src in [("genre:Horror", "history"), ("last:genre:Film-Noir", "last"), ("next:item:50", "next"),
                      ("user:gender:F", "user"), ("tag:sci-fi: classic", "history")]:  # fmt: skip
        a = Attribute.parse(name)
        assert a.source == src and a.name == name
    with pytest.raises(ValueError):
        Attribute.parse("nogroup")


def _toy_space() -> tuple[FeatureSpace, SampleSet]:
    names = ["genre:A", "genre:B", "decade:1990s"]
    m = np.array([[1, 0, 1], [0, 1, 1], [1, 0, 0], [0, 1, 0]], bool)  # 4 items
    users = FeatureTable(["gender:F", "gender:M"], np.array([[1, 0], [0, 1]], bool))
    space = FeatureSpace(FeatureTable(names, m), ["a90", "b90", "a", "b"], ["10", "11", "12", "13"], users)
    pad = 4
    windows = np.array([[pad, 0, 2, 1], [pad, pad, 3, 3], [0, 1, 2, 3]])
    s = SampleSet(windows, np.array([0, 1, 0]), np.array([3, 0, 1]), np.zeros((3, 1), np.float32),
                  np.zeros((3, 1), np.int64), n_items=4, n_latents=1)  # fmt: skip
    return space, s


def test_match_is_or_within_a_clause_and_mean_across_clauses():
    space, s = _toy_space()
    rows = np.arange(3)
    np.testing.assert_allclose(space.match(["genre:A"], s, rows), [2 / 3, 0, 2 / 4])
    np.testing.assert_allclose(space.match(["genre:A", "genre:B"], s, rows), [1, 1, 1])  # OR
    np.testing.assert_allclose(space.match(["last:decade:1990s"], s, rows), [1, 0, 0])
    np.testing.assert_allclose(space.match(["next:item:10"], s, rows), [0, 1, 0])
    np.testing.assert_allclose(space.match(["user:gender:F"], s, rows), [1, 0, 1])
    both = space.match(["genre:A", "last:decade:1990s"], s, rows)  # mean of two clauses
    np.testing.assert_allclose(both, [(2 / 3 + 1) / 2, 0, 0.25])
    assert not space.is_valid("genre:Nope") and not space.is_valid("item:999")
    np.testing.assert_allclose(space.match(["genre:Nope"], s, rows), [0, 0, 0])
    assert space.label("last:item:11") == "b90" and space.label("popularity:head") == "popular (head)"


def test_sample_features_agree_with_match():
    space, s = _toy_space()
    feats, names = space.sample_features(s)
    for j, n in enumerate(names):
        np.testing.assert_allclose(feats[:, j], space.match([n], s, np.arange(3)), err_msg=n)


def test_threshold_and_scale_put_exactly_the_scores_above_threshold_above_5():
    rng = np.random.default_rng(0)
    pos, neg = rng.uniform(0.4, 1.0, 300), rng.uniform(0.0, 0.6, 300)
    t, ba = best_threshold(pos, neg)
    brute = max(0.5 * ((pos > c).mean() + (neg <= c).mean()) for c in np.linspace(0, 1, 2001))
    assert ba >= brute - 1e-3 and 0.4 < t < 0.6
    s = np.linspace(0, 1, 1001)
    p = to_scale(s, t)
    assert ((p > 5) == (s > t)).all() and (np.diff(p) >= 0).all() and p.min() >= 0 and p.max() <= 10
    assert best_threshold(np.full(5, 0.3), np.full(5, 0.3))[1] == 0.5  # nothing separates


def test_auc_matches_pairwise_counting():
    rng = np.random.default_rng(1)
    pos, neg = rng.integers(0, 5, 40).astype(float), rng.integers(0, 5, 30).astype(float)
    pairs = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert auc(pos, neg) == pytest.approx(pairs)


def test_names_from_features():
    assert name_features(["decade:1990s", "genre:Horror", "genre:Thriller"]) == "1990s Horror and Thriller"
    assert name_features(["popularity:head"]) == "popular (head) titles"
    assert name_features(["category:12"]) == "Category 12 items"
    assert name_features(["genre:heist", "style:animated"]) == "animated heist"


# -- evidence --------------------------------------------------------------------------------------
def test_samples_group_codes_by_latent_and_recommend_outside_the_window(world, sides):
    _, kernel, emb, acts, _ = world
    train = sides[0]
    rows, vals, bounds = train.by_latent
    for j in range(kernel.n_latents):
        naive = np.flatnonzero(((train.idx == j) & (train.acts > 0)).any(axis=1))
        got = rows[bounds[j] : bounds[j + 1]]
        assert sorted(got) == list(naive)
        assert (np.diff(vals[bounds[j] : bounds[j + 1]]) <= 0).all()  # strongest first
    x = np.asarray(acts.train[:50])
    for r in range(50):
        sc = x[r] @ emb.T
        seen = train.windows[r][train.windows[r] < train.n_items]
        sc[seen] = -np.inf
        assert train.recs[r] == int(np.argmax(sc)) and train.recs[r] not in seen


def test_enrichment_is_share_among_activating_versus_background(sides):
    train, _, space, ctx = sides
    ev = latent_evidence(ctx, 1, seed=0)
    act = ev.rows
    assert ev.summary().n_activating == len(act) == sum(ev.histogram)
    for e in ev.enriched:
        vals = space.match([e.feature], train, np.arange(len(train)))
        assert e.share == pytest.approx(vals[act].mean(), abs=1e-4)
        assert e.background == pytest.approx(vals.mean(), abs=1e-4)
        assert e.count == int((vals[act] > 0).sum())
        assert e.lift == pytest.approx(e.share / e.background, rel=1e-3)
    assert ev.quantiles["max"] == pytest.approx(float(ev.values.max()), abs=1e-4)
    firing = set(act.tolist())
    assert not firing & set(ev.negative_rows) and len(ev.negative_rows) == 5
    users = [train.users[r] for r in ev.top_rows]
    assert len(set(users)) == len(users)  # one sample per user


# -- protocols -------------------------------------------------------------------------------------
class Oracle(Scorer):
    """Knows the truth: 10 where the latent fires, 0 elsewhere."""

    def predict(self, desc, samples, rows):
        fires = ((samples.idx[rows] == desc.latent) & (samples.acts[rows] > 0)).any(axis=1)
        return np.where(fires, 10.0, 0.0)


def test_paper_protocol_and_detection_with_an_oracle(sides):
    held = sides[1]
    desc = Description(1, "described", text="x")
    sc = score_latent(Oracle(), desc, held, seed=0, repeats=5)
    assert sc.detection.balanced_accuracy == 1.0 and sc.detection.auc == 1.0
    # random samples that happen to fire count against the paper's confidence, as in the paper
    expected = []
    for r in range(5):
        rng = np.random.default_rng([0, 1, 10 + r])
        pos_all, _ = held.firing(1)
        rng.choice(pos_all, size=5, replace=False)
        rnd = rng.choice(len(held), size=5, replace=False)
        fires = ((held.idx[rnd] == 1) & (held.acts[rnd] > 0)).any(axis=1)
        expected.append((5 + (~fires).sum()) / 10)
    assert sc.confidence == pytest.approx(np.mean(expected))
    assert score_latent(Oracle(), Description(len(held.counts) - 1, "described"), held).confidence is None


# -- the stats describer ---------------------------------------------------------------------------
def test_stats_describer_names_each_planted_concept(world, dictionary):
    _, kernel, _, _, truth = world
    assert [c.latent for c in dictionary.concepts] == list(range(kernel.n_latents))
    for j, concept in enumerate(truth.concepts):  # latent j reads concept j
        c = dictionary.concepts[j]
        feats = {Attribute.parse(a).feature for a in c.attributes}
        assert c.status == "described" and concept.features[0] in feats, (c.attributes, concept)
        assert concept.name.split(" & ")[0] in c.description
        assert c.confidence >= 0.8 and c.detection.balanced_accuracy >= 0.85, c
        assert c.match_threshold is not None and c.evidence.top_items and c.evidence.examples
    dead = dictionary.concepts[-1]
    assert dead.status == "dead" and dead.reason and dead.description is None
    s = dictionary.summary
    assert s["n_latents"] == kernel.n_latents and s["n_dead"] >= 1
    assert s["n_alive"] == s["n_described"] + s["n_undescribed"]
    for key in ("mean_confidence", "share_confidence_ge_0.8", "mean_balanced_accuracy", "mean_auc", "seconds"):
        assert isinstance(s[key], float)


def test_dictionary_is_deterministic_and_round_trips_strictly(world, dictionary):
    ds, kernel, emb, acts, _ = world
    again = interpret_activations(ds, kernel, emb, acts, describer="stats", seed=0)
    a = json.loads(dictionary.model_dump_json())
    b = json.loads(again.model_dump_json())
    a["summary"].pop("seconds"), b["summary"].pop("seconds")
    assert a == b
    back = ConceptDictionary.model_validate_json(dictionary.model_dump_json())
    assert back.concepts == dictionary.concepts
    bad = json.loads(dictionary.model_dump_json())
    bad["concepts"][0]["surprise"] = 1
    with pytest.raises(Exception, match="surprise"):
        ConceptDictionary.model_validate(bad)


def test_descriptions_never_see_held_out_activations(world, dictionary):
    """Scrambling the held-out windows changes scores only: descriptions and thresholds stay."""
    ds, kernel, emb, acts, _ = world
    from dataclasses import replace

    rng = np.random.default_rng(5)
    perm = rng.permutation(len(acts.heldout))
    scrambled = replace(acts, heldout_windows=acts.heldout_windows[perm], heldout_users=acts.heldout_users[perm])
    other = interpret_activations(ds, kernel, emb, scrambled, describer="stats", seed=0)
    for c, o in zip(dictionary.concepts, other.concepts):
        assert (c.description, c.attributes, c.match_threshold) == (o.description, o.attributes, o.match_threshold)
    before = np.mean([c.detection.balanced_accuracy for c in dictionary.concepts[:8]])
    after = np.mean([c.detection.balanced_accuracy for c in other.concepts[:8]])
    assert after < before - 0.1  # the held-out pairing of windows and activations is gone


def test_stats_scorer_uses_the_calibrated_threshold(sides):
    _, held, space, ctx = sides
    ev = latent_evidence(ctx, 0, seed=0)
    d = StatsDescriber(seed=0).describe(ev)
    rows = np.arange(len(held))
    pred = StatsScorer(space).predict(d, held, rows)
    assert ((pred > 5) == (space.match(d.attributes, held, rows) > d.threshold)).all()


# -- headlines, exemplars, duplicates --------------------------------------------------------------
def test_headline_terms_have_the_stated_support_on_the_firing_samples(world, dictionary, sides):
    train, _, space, _ = sides
    s = dictionary.summary
    assert (s["headline_min_support"], s["headline_min_count"]) == (0.3, 10)
    named = [c for c in dictionary.concepts if c.headline]
    assert len(named) >= 8
    for c in named:
        rows, _ = train.firing(c.latent)
        for h in c.headline:
            v = space.match([h], train, rows)
            assert v.mean() >= 0.3 and (v > 0).sum() >= 10, (c.latent, h, v.mean())
            assert not h.startswith("user:") and ":item:" not in f":{h}"
        # the headline leads the description
        assert c.description.split(" — ")[0] == name_features([Attribute.parse(h).feature for h in c.headline])


def test_a_term_with_lift_but_little_support_stays_out_of_the_headline(sides):
    """A feature 6x over-represented on 8% of the firing samples is no headline (issue 22)."""
    _, _, _, ctx = sides
    ev = latent_evidence(ctx, 0, seed=0)
    d = StatsDescriber(seed=0)
    col = int(np.argmax(ev.shares))
    shares, bg = ev.shares.copy(), ctx.background.copy()
    ev.shares[:] = 0.0
    ev.shares[col], ctx.background[col] = 0.08, 0.08 / 6
    try:
        assert ctx.names[col] not in d.headline(ev)
        ev.shares[col] = 0.6
        assert d.headline(ev) == [ctx.names[col]]
    finally:
        ev.shares[:], ctx.background[:] = shares, bg


@pytest.fixture(scope="module")
def names():
    ds, kernel, emb, acts, groups = names_world()
    return ds, groups, interpret_activations(ds, kernel, emb, acts, describer="stats", seed=0)


def test_items_known_by_name_and_tags_are_named_by_exemplars_and_tags(names):
    ds, groups, d = names
    all_tags = {t for _, _, tags in groups for t in tags}
    for g, (name, items, tags) in enumerate(groups):  # latent g reads group g
        c = d.concepts[g]
        titles = {ds.item_titles[i] for i in items}
        assert c.status == "described" and len(c.exemplars) == 3 and set(c.exemplars) <= titles, (name, c.exemplars)
        head = c.description.split(" — tags: ")[0]
        assert head == ", ".join(c.exemplars), c.description  # exemplars lead, not "mid-popularity titles"
        named = {Attribute.parse(h).value for h in c.headline if Attribute.parse(h).group == "tag"}
        assert named & set(tags) and not named & (all_tags - set(tags)), (name, c.headline)
        assert f"tags: {', '.join(sorted(named & set(tags)))}" in c.description or "tags: " in c.description
        # scored by the same protocol: the exemplars' item set is among the attributes
        assert any(":item:" in f":{a}" for a in c.attributes)
        assert c.confidence >= 0.8 and c.detection.auc >= 0.8, c
    assert not ds.item_features.columns("decade")  # "Charlie Parker (1920-1955)" is no film year


def test_near_duplicate_concepts_are_flagged(names):
    _, groups, d = names
    dup = d.concepts[len(groups)]  # the latent that reads group 0 again
    assert d.concepts[0].duplicates == [dup.latent] and dup.duplicates == [0]
    assert all(not c.duplicates for c in d.concepts[1 : len(groups)])
    assert d.summary["n_near_duplicates"] == 2


def test_the_llm_prompt_carries_exemplars_and_supported_tags(names):
    from recsae.interpret.describers import exemplar_lines

    ds, groups, _ = names
    ds_, kernel, emb, acts, _ = names_world()
    train = SampleSet.build(acts.train, acts.train_windows, acts.train_users, kernel, emb)
    ctx = build_context(train, FeatureSpace(ds.item_features, ds.item_titles, ds.item_ids))
    lines = "\n".join(exemplar_lines(latent_evidence(ctx, 1, seed=0)))
    _, items, tags = groups[1]
    assert "Exemplar items" in lines and any(ds.item_titles[i] in lines for i in items)
    assert "tag:post-punk" in lines or "tag:indie" in lines


def test_the_atlas_shows_exemplars_and_near_duplicates(names):
    from recsae.interpret.atlas import render_atlas

    _, groups, d = names
    html = render_atlas(d)
    card = html.split('id="latent-0"')[1].split("</section>")[0]
    assert "Exemplars:" in card and all(e.replace("&", "&amp;") in card for e in d.concepts[0].exemplars)
    assert f'near-duplicate of latent <a href="#latent-{len(groups)}">' in card
    assert '<a class="concept-page" href="/audit/concepts/0">' in card  # the served page: same entry, live data


class PopularityOnly(Describer):
    """Describes every latent as 'popular (head) titles' (what the issue saw on a music log)."""

    name = "popularity-only"

    def describe(self, ev):
        return Description(ev.latent, "described", text="popular (head) titles", attributes=["popularity:head"])


def test_a_description_that_names_nothing_is_capped_at_chance(names, world):
    ds, kernel, emb, acts, _ = world
    train = SampleSet.build(acts.train, acts.train_windows, acts.train_users, kernel, emb)
    held = SampleSet.build(acts.heldout, acts.heldout_windows, acts.heldout_users, kernel, emb)
    space = FeatureSpace(ds.item_features, ds.item_titles, ds.item_ids, ds.user_features)
    d = build_dictionary(build_context(train, space), held, PopularityOnly(), StatsScorer(space))
    scored = [c for c in d.concepts if c.confidence is not None]
    assert scored and all(c.confidence <= 0.5 for c in scored)
    capped = [c for c in scored if c.reason and "names nothing" in c.reason]
    assert capped  # some were above chance before the cap, and say so


# -- ground truth ----------------------------------------------------------------------------------
def test_naming_a_planted_concept_needs_all_its_features():
    assert names_concept(["last:genre:heist", "style:animated"], ("genre:heist", "style:animated"))
    assert not names_concept(["genre:heist", "last:item:3"], ("genre:heist", "style:animated"))
    assert names_concept(["next:genre:heist", "next:genre:western"], ("genre:heist",))


@pytest.mark.slow
def test_synthetic_ground_truth_recovery_and_precision(tmp_path):
    """SASRec -> SAE -> stats describer on the planted-concept data (through the offline job).

    Recovery: each planted concept is named by some well-scored latent (paper confidence >= 0.8).
    Precision: the share of well-scored latents that name some planted concept. A small SAE
    (64 latents, k=4) keeps this under a minute; ``benchmarks/interpret.py --dataset synthetic``
    measures larger ones (128 to 1,024 latents).
    """
    from recsae.bundle import verify_bundle
    from recsae.data import make_synthetic
    from recsae.interpret import reinterpret_bundle
    from recsae.pipeline import JobConfig, run_job

    cfg = JobConfig(dataset="synthetic", train_params={"epochs": 5}, expansion=1, k=4, sae_epochs=8,
                    describer="stats", progress=False, threads=2, quality_budget=0)  # fmt: skip
    res = run_job(cfg, tmp_path / "bundle", tmp_path / "work")
    d = ConceptDictionary.model_validate_json((res.bundle / "concepts.json").read_text())
    _, truth = make_synthetic()
    gt = planted_recovery(d.concepts, truth)
    print(f"recovery {gt['recovery']:.2f} precision {gt['precision']:.2f} of {gt['n_well_scored']} well-scored latents")
    assert gt["recovery"] >= 0.9, gt["latents_per_concept"]
    assert gt["precision"] >= 0.8, gt
    assert res.summary["concepts"]["mean_confidence"] >= 0.8
    # re-describing the finished bundle keeps it verifiable and writes the atlas
    summary = reinterpret_bundle(res.bundle, describer="stats")
    verify_bundle(res.bundle)
    assert summary["n_latents"] == len(d.concepts) and (res.bundle / "atlas.html").exists()
    again = ConceptDictionary.model_validate_json((res.bundle / "concepts.json").read_text())
    assert sum(a.attributes == b.attributes for a, b in zip(again.concepts, d.concepts)) >= 0.9 * len(d.concepts)


def test_the_detection_score_keeps_the_samples_it_judged_misjudged_first():
    """#20 item 2: the concept page shows the held-out positives and negatives behind a
    confidence; each kept sample's verdict agrees with the counts' side, misjudged ones lead."""
    from recsae.interpret.scorers import _shown

    pos, neg = np.array([10, 11, 12, 13]), np.array([20, 21, 22])
    pp, pn = np.array([9.0, 2.0, 7.0, 10.0]), np.array([0.0, 8.0, 1.0])
    shown = _shown(pos, pp, neg, pn, per_side=2)
    assert shown == [(11, True, 2.0), (13, True, 10.0), (21, False, 8.0), (20, False, 0.0)]
    ds, kernel, emb, acts, _ = tiny_world()
    d = interpret_activations(ds, kernel, emb, acts, describer="stats")
    scored = [c for c in d.concepts if c.detection is not None]
    assert scored
    for c in scored:
        s = c.detection.samples
        assert 0 < len(s) <= 6 and all(x.history and x.recommendation for x in s)
        fires = [x.fires for x in s]
        assert fires == sorted(fires, reverse=True)  # positives, then negatives
        for side in (True, False):
            wrong = [(x.predicted <= 5) if side else (x.predicted > 5) for x in s if x.fires == side]
            assert wrong == sorted(wrong, reverse=True)  # misjudged first
