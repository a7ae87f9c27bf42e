"""De-biasing by latent suppression (recsae.debias): measures, latent ranking, sweep, CLI policy."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recsae import ConfigError
from recsae import debias as D
from recsae.kernel import SAEKernel


# -- bias measures on hand-built lists ---------------------------------------------------------
def test_head_items_takes_the_top_fraction_ties_to_lower_ids():
    pop = np.array([5, 1, 9, 3, 9, 0, 2, 7, 4, 6])
    head = D.head_items(pop, 0.2)
    assert head.tolist() == [False, False, True, False, True, False, False, False, False, False]
    assert D.head_items(np.array([3, 3, 3, 3, 3]), 0.2).tolist() == [True, False, False, False, False]
    assert D.head_items(pop, 0.25).sum() == 3  # ceil(2.5)
    with pytest.raises(ConfigError):
        D.head_items(pop, 0.0)


def test_popularity_share_and_mean_popularity():
    pop = np.array([100, 50, 10, 1, 0], dtype=float)
    head = np.array([True, True, False, False, False])
    lists = np.array([[0, 1, 2, 3], [2, 3, 4, 0]])
    assert D.head_share_per_user(lists, head).tolist() == [0.5, 0.25]
    assert D.popularity_share(lists, head) == pytest.approx(0.375)
    assert D.mean_popularity(lists, pop) == pytest.approx((161 + 111) / 8)
    m = D.PopularityBias(pop, fraction=0.4)
    assert m.value(m.per_user(lists), np.arange(2)) == pytest.approx(0.375)
    assert m.extras(lists, np.arange(2))["mean_popularity"] == pytest.approx(34.0)


def test_stereotyped_genres_gap_and_auc():
    # genres: 0 Romance, 1 Drama, 2 Comedy, 3 Action, 4 Sci-Fi; items 0-4 one genre each,
    # item 5 both Romance and Action (counts as neither side)
    names = ["Romance", "Drama", "Comedy", "Action", "Sci-Fi"]
    g = np.zeros((6, 5), dtype=bool)
    for i in range(5):
        g[i, i] = True
    g[5, [0, 3]] = True
    hist = [np.array([0, 0, 1, 2]), np.array([0, 1, 1, 2]), np.array([3, 4, 4, 2]), np.array([3, 3, 4, 2])]
    female = np.array([True, True, False, False])
    male = ~female
    st = D.stereotyped_genres(hist, female, male, g, names, per_side=2)
    assert set(st.female) == {"Romance", "Drama"} and set(st.male) == {"Action", "Sci-Fi"}
    sign = st.item_sign(g, names)
    assert sign.tolist() == [1, 1, 0, -1, -1, 0]
    lists = np.array([[0, 1, 2, 5], [0, 2, 2, 2], [3, 4, 2, 0], [2, 2, 2, 2]])
    per = D.stereotype_per_user(lists, sign)
    assert per.tolist() == [0.5, 0.25, -0.25, 0.0]
    assert D.gender_gap(lists, sign, female, male) == pytest.approx(0.375 - (-0.125))
    gb = D.GenderBias(np.array([1, 1, 0, 0]), hist, g, names)
    assert gb.value(gb.per_user(lists), np.arange(4)) == pytest.approx(0.5)
    assert gb.history_gap > 0

    assert D.auc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == 1.0
    assert D.auc(np.array([0.9, 0.8, 0.2, 0.1]), np.array([0, 0, 1, 1])) == 0.0
    assert D.auc(np.ones(4), np.array([0, 1, 0, 1])) == 0.5
    # gender perfectly readable from the lists' genre mix -> out-of-fold AUC ~ 1
    rng = np.random.default_rng(0)
    fem = rng.random(200) < 0.4
    lists = np.where(fem[:, None], rng.choice([0, 1, 2], (200, 10)), rng.choice([2, 3, 4], (200, 10)))
    assert D.gender_auc(lists, g, fem, ~fem) > 0.95
    noise = rng.choice(5, (200, 10))
    assert abs(D.gender_auc(noise, g, fem, ~fem) - 0.5) < 0.15


def test_matched_bias_interpolates_and_takes_the_best_point_at_that_accuracy():
    curve = [{"ndcg": 0.10, "bias": 0.70}, {"ndcg": 0.105, "bias": 0.65}, {"ndcg": 0.09, "bias": 0.40}]
    # between the 2nd and 3rd point, below the 1st (a more accurate point can be less biased)
    assert D.matched_bias(curve, 0.104) == pytest.approx(0.65 - 0.25 / 15)
    assert D.matched_bias(curve, 0.1) == pytest.approx(0.65 - 0.25 / 3)
    assert D.matched_bias(curve, 0.0975) == pytest.approx(0.40 + 0.5 * 0.25)
    assert D.matched_bias(curve, 0.08) == pytest.approx(0.40)
    assert np.isnan(D.matched_bias(curve, 0.2))


# -- a planted popularity latent ---------------------------------------------------------------
def planted(n_items=60, d=16, m=12, b=300, seed=0):
    """Latent 0's decoder direction is the axis along which head items stick out."""
    rng = np.random.default_rng(seed)
    pop = np.concatenate([rng.integers(80, 120, 12), rng.integers(1, 20, n_items - 12)]).astype(float)
    emb = rng.normal(0, 0.3, (n_items, d)).astype(np.float32)
    emb[:12, 0] += 1.5  # head items (top 20%) along axis 0
    w = rng.standard_normal((m, d)).astype(np.float32)
    w[:, 0] = 0.0
    w[0] = 0.0
    w[0, 0] = 1.0
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    kern = SAEKernel(w.copy(), np.zeros(m, np.float32), w, np.zeros(d, np.float32), k=2)
    on = rng.random(b) < 0.5
    other = rng.integers(1, m, b)
    x = 1.5 * w[other] + np.where(on, 2.0, 0.0)[:, None] * w[0]
    x += rng.normal(0, 0.05, x.shape)
    x = x.astype(np.float32)

    def stage(name):
        return D.StageInputs(name, np.arange(b), x, kern.encode(x), [np.zeros(0, np.int64)] * b,
                             rng.integers(0, n_items, b))

    return D.DebiasData(kern, emb, pop, np.zeros((n_items, 0), bool), [], [], stage("dev"), stage("test")), on


def test_planted_popularity_latent_is_ranked_first_and_suppressing_it_lowers_the_head_share():
    data, on = planted()
    assert (data.select.codes.idx[on, 0] == 0).all()  # the planted latent fires where planted
    measure = data.measure("popularity")
    ev = D.latent_evidence(data, measure, min_freq=0.01)
    assert ev["association_order"][0] == 0
    assert ev["direct_effect"][0] > 0 and np.nanargmin(ev["solo_bias"]) == 0
    order, trace = D.greedy_selection(data, measure, n_max=3, max_ndcg_loss=1.0, min_freq=0.01)
    assert order[0] == 0 and trace[0]["bias"] < ev["base_select"]["bias"]
    base = D.evaluate_suppression(data, data.test, measure, [], 1.0)
    half = D.evaluate_suppression(data, data.test, measure, [0], 0.5)
    full = D.evaluate_suppression(data, data.test, measure, [0], 1.0)
    assert full["bias"] < half["bias"] < base["bias"]
    assert full["bias"] < 0.75 * base["bias"]
    # a random other latent does much less
    other = D.evaluate_suppression(data, data.test, measure, [5], 1.0)
    assert base["bias"] - other["bias"] < 0.5 * (base["bias"] - full["bias"])


def test_sweep_on_planted_case_beats_random_and_picks_the_latent():
    data, _ = planted()
    r = D.run_experiment(data, "popularity", counts=(1, 2), strengths=(1.0,), seeds=3, min_freq=0.01)
    greedy = [row for row in r["rows"] if row["method"] == "greedy"]
    assert greedy[0]["latents"] == [0]
    assert r["targets"]["greedy"]["beats_random_everywhere"]
    policy = D.choose_policy(r, "greedy", 0.5)
    assert 0 in policy["latents"] and policy["improves"]


# -- a planted baseline: popularity shared by all users, in b_dec, in no latent -----------------
def planted_baseline(n_items=60, d=16, m=12, b=300, seed=1):
    """Head items stick out along axis 0, and so does b_dec (what every user shares); no latent
    direction has an axis-0 component — the situation docs/DEBIAS.md finds in the real SAE."""
    rng = np.random.default_rng(seed)
    pop = np.concatenate([rng.integers(80, 120, 12), rng.integers(1, 20, n_items - 12)]).astype(float)
    emb = rng.normal(0, 0.3, (n_items, d)).astype(np.float32)
    emb[:12, 0] += 1.5
    w = rng.standard_normal((m, d)).astype(np.float32)
    w[:, 0] = 0.0
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    b_dec = np.zeros(d, np.float32)
    b_dec[0] = 1.0
    kern = SAEKernel(w.copy(), np.zeros(m, np.float32), w, b_dec, k=2)
    x = (b_dec + 1.5 * w[rng.integers(0, m, b)] + rng.normal(0, 0.05, (b, d))).astype(np.float32)

    def stage(name):
        return D.StageInputs(name, np.arange(b), x, kern.encode(x), [np.zeros(0, np.int64)] * b,
                             rng.integers(0, n_items, b))

    return D.DebiasData(kern, emb, pop, np.zeros((n_items, 0), bool), [], [], stage("dev"), stage("test"))


def test_baseline_method_cuts_popularity_where_latents_cannot_and_beats_random_directions():
    data = planted_baseline()
    r = D.run_experiment(data, "popularity", counts=(1, 2), strengths=(1.0,), seeds=3, min_freq=0.01,
                         baseline_strengths=(0.5, 1.0), max_ndcg_loss=1.0)
    base = r["base"]["test"]["bias"]
    bl = {row["baseline"]: row for row in r["rows"] if row["method"] == "baseline"}
    rand = {row["baseline"]: row for row in r["rows"] if row["method"] == "random-direction"}
    assert set(bl) == set(rand) == {0.5, 1.0} and all(row["latents"] == [] and row["n"] == 0 for row in bl.values())
    assert bl[1.0]["test"]["bias"] < bl[0.5]["test"]["bias"] < base
    assert bl[1.0]["test"]["bias"] < 0.6 * base
    for beta in bl:  # same edit size in a random direction does (much) less
        assert base - rand[beta]["test"]["bias"] < 0.5 * (base - bl[beta]["test"]["bias"])
    t = r["targets"]
    assert t["baseline"]["comparator"] == "random-direction" and t["baseline"]["beats_random_everywhere"]
    assert t["baseline"]["best_cut_within_loss"] > t["greedy"]["best_cut_within_loss"] + 0.2
    assert t["baseline"]["dev_choice"]["baseline"] == 1.0  # chosen on the dev stage
    assert r["combined"]["baseline"] == 1.0 and "baseline+greedy" in t
    ev = r["baseline_evidence"]
    assert ev["spearman_bdec_popularity"] > 0.5 and ev["head_share_top_k_by_bdec"] == 1.0
    assert abs(ev["most_aligned_spearman"]) < ev["spearman_bdec_popularity"] and ev["direct_effect_bdec"] > 1.0
    assert ev["direct_effect_aligned_latents"] == 0.0  # no latent has a head component
    # the chosen policy carries the baseline and is a valid service policy body
    from service.schemas import PolicyIn

    point = D.choose_policy(r, "best", 1.0)
    doc = D.policy_document("no-pop", point, r)
    assert doc["baseline"] == point["baseline"] > 0 and list(doc) == list(D.POLICY_KEYS)
    body = PolicyIn.model_validate(doc)  # the file is a PUT body as is, and names its bundle
    assert body.baseline == doc["baseline"] and body.bundle_hash == r["source"].get("bundle_hash") and body.name == "no-pop"
    assert "random-direction" in D.sweep_table(r) and "baseline" in D.targets_markdown(r)


def test_random_directions_are_unit_vectors_and_strengths_are_checked():
    u = D.random_directions(16, 5)
    assert u.shape == (5, 16) and np.allclose(np.linalg.norm(u, axis=1), 1.0, atol=1e-6)
    data = planted_baseline()
    with pytest.raises(ConfigError):
        D.run_experiment(data, "popularity", counts=(1,), baseline_strengths=(1.5,), seeds=0)
    with pytest.raises(ConfigError):
        D.run_experiment(data, "popularity", counts=(1,), baseline_strengths=(), seeds=0, methods=("baseline",))


def test_spearman_handles_ties_and_constant_inputs():
    assert D.spearman(np.array([1, 2, 3, 4]), np.array([10, 20, 30, 40])) == pytest.approx(1.0)
    assert D.spearman(np.array([1, 2, 3, 4]), np.array([4, 3, 2, 1])) == pytest.approx(-1.0)
    assert D.spearman(np.array([1, 1, 2, 2]), np.array([1, 1, 2, 2])) == pytest.approx(1.0)
    assert np.isnan(D.spearman(np.ones(4), np.arange(4)))


# -- the real small bundle ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def bundle_data(small_bundle, data_dir):
    return D.load_data(small_bundle, data_dir)


def test_sweep_on_small_bundle_reports_random_and_rerank(bundle_data, small_bundle, data_dir):
    from recsae.data import leave_one_out
    from recsae.data.loaders import load_dataset
    from recsae.evaluate import evaluate_reps

    r = D.run_experiment(bundle_data, "popularity", counts=(1, 2), strengths=(0.5, 1.0), seeds=2)
    methods = {row["method"] for row in r["rows"]}
    assert methods >= {"association", "greedy", "random", "baseline", "random-direction"}
    assert methods <= {*D.COMPARATOR, *D.COMPARATOR.values()}
    rand = [row for row in r["rows"] if row["method"] == "random"]
    assert len(rand) == 4 and all(row["seeds"] == 2 and "bias_std" in row["test"] for row in rand)
    assert all(0.0 <= row["test"]["bias"] <= 1.0 for row in r["rows"])
    assert r["rerank"][0]["lambda"] == 0.0 and r["rerank"][-1]["bias"] < r["rerank"][0]["bias"]
    # the base numbers are the evaluation module's (same users, exclusions, ties)
    split = leave_one_out(load_dataset("ml-100k", data_dir=data_dir, min_rating="auto"))  # the job's default
    ref = evaluate_reps(bundle_data.test.x, bundle_data.item_emb, split, bundle_data.test.users, "test")
    assert r["base"]["test"]["ndcg"] == pytest.approx(ref["NDCG@10"])
    assert r["base"]["test"]["hr"] == pytest.approx(ref["HR@10"])
    # error-preserving suppression of nothing is the original model
    none = D.evaluate_suppression(bundle_data, bundle_data.test, bundle_data.measure("popularity"), [], 1.0)
    assert none["ndcg"] == r["base"]["test"]["ndcg"] and none["bias"] == r["base"]["test"]["bias"]
    assert "random" in D.sweep_table(r)
    # latents were chosen on the dev stage
    assert r["settings"]["select_stage"] == "dev" and r["settings"]["report_stage"] == "test"
    # each best / dev-chosen point carries a bootstrap interval around its own test NDCG loss
    for method in ("association", "greedy", "baseline"):
        t = r["targets"][method]
        for loss, ci in ((t["best_ndcg_loss"], t.get("best_ndcg_loss_ci95")),
                         ((t["dev_choice"] or {}).get("test_ndcg_loss"), (t["dev_choice"] or {}).get("test_ndcg_loss_ci95"))):
            if loss is not None:
                assert ci is not None and ci[0] <= round(loss, 4) + 1e-4 and round(loss, 4) - 1e-4 <= ci[1], (method, loss, ci)
    assert "95% CI" in D.targets_markdown(r)


def test_baseline_suppression_lowers_the_head_share_on_small_bundle(bundle_data):
    r = D.run_experiment(bundle_data, "popularity", counts=(1,), strengths=(1.0,), seeds=3,
                         methods=("baseline",), baseline_strengths=(0.2, 0.4))
    base = r["base"]["test"]["bias"]
    bl = sorted((row for row in r["rows"] if row["method"] == "baseline"), key=lambda row: row["baseline"])
    rand = {row["baseline"]: row for row in r["rows"] if row["method"] == "random-direction"}
    assert [row["baseline"] for row in bl] == [0.2, 0.4]
    assert bl[1]["test"]["bias"] < bl[0]["test"]["bias"] < base
    assert bl[1]["test"]["mean_popularity"] < r["base"]["test"]["mean_popularity"]
    assert all(row["test"]["bias"] < rand[row["baseline"]]["test"]["bias"] for row in bl)
    assert r["targets"]["baseline"]["beats_random_everywhere"]
    # b_dec ranks popular items first: the evidence that it is the popularity concept
    assert r["baseline_evidence"]["spearman_bdec_popularity"] > 0.3
    assert r["baseline_evidence"]["head_share_top_k_by_bdec"] > r["baseline_evidence"]["head_fraction"]
    # the rows are the serving kernel's: x - beta * b_dec
    st, m = bundle_data.test, bundle_data.measure("popularity")
    ids, ranks = D._list_stats(bundle_data, st, st.x - np.float32(0.4) * bundle_data.kernel.b_dec)
    assert D._summarise(bundle_data, st, m, ids, ranks)["bias"] == bl[1]["test"]["bias"]


def test_gender_measure_on_small_bundle(bundle_data):
    r = D.run_experiment(bundle_data, "gender", counts=(1,), strengths=(1.0,), seeds=1, methods=("association",))
    m = r["measure"]
    assert len(m["female_genres"]) == 2 and len(m["male_genres"]) == 2
    assert set(m["female_genres"]).isdisjoint(m["male_genres"])
    assert 0.0 <= r["base"]["test"]["gender_auc"] <= 1.0


# -- CLI and policy files ----------------------------------------------------------------------
def test_cli_writes_policy_report_and_plot(small_bundle, data_dir, tmp_path, capsys):
    from recsae.cli import main

    out, pol = tmp_path / "report", tmp_path / "policies"
    rc = main(["debias", str(small_bundle), "--bias", "popularity", "--data-dir", str(data_dir),
               "--counts", "1,2", "--strengths", "1", "--seeds", "1", "--out", str(out), "--method", "greedy",
               "--save-policy", "no-pop_1", "--policy-dir", str(pol), "-q"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| random |" in printed and "policy written to" in printed
    doc = json.loads((pol / "no-pop_1.json").read_text())
    assert list(doc) == list(D.POLICY_KEYS)
    assert doc["name"] == "no-pop_1" and doc["mode"] == "error" and doc["strength"] == 1.0
    assert doc["latents"] and all(isinstance(j, int) for j in doc["latents"])
    assert len(doc["description"]) <= D.MAX_DESCRIPTION
    assert D.load_policy(pol / "no-pop_1.json") == doc
    assert (out / "report-popularity.md").is_file() and (out / "tradeoff-popularity.png").stat().st_size > 1000
    assert json.loads((out / "debias-popularity.json").read_text())["bias"] == "popularity"
    assert "| baseline |" in printed and "random-direction" in printed
    # a policy that only suppresses the baseline is a valid file; files without 'baseline' still load
    only = {"name": "base_only", "latents": [], "strength": 1.0, "mode": "error", "baseline": 0.4, "description": "d"}
    assert D.load_policy(D.save_policy(only, pol)) == only
    old = {k: v for k, v in only.items() if k != "baseline"}
    (pol / "old.json").write_text(json.dumps({**old, "name": "old", "latents": [1]}))
    assert "baseline" not in D.load_policy(pol / "old.json")
    (pol / "bad.json").write_text(json.dumps({**only, "baseline": 1.5}))
    with pytest.raises(ConfigError, match="baseline"):
        D.load_policy(pol / "bad.json")


def test_policies_never_go_into_a_bundle_and_names_are_checked(small_bundle, tmp_path):
    from recsae.cli import main

    doc = {"name": "x", "latents": [1], "strength": 1.0, "mode": "error", "description": "d"}
    with pytest.raises(ConfigError, match="inside bundle"):
        D.save_policy(doc, small_bundle / "policies")
    with pytest.raises(ConfigError):
        D.save_policy({**doc, "name": "../evil"}, tmp_path)
    with pytest.raises(ConfigError):
        D.save_policy({**doc, "extra": 1}, tmp_path)
    assert D.save_policy(doc, tmp_path).name == "x.json"
    rc = main(["debias", str(small_bundle), "--save-policy", "p", "--policy-dir", str(small_bundle / "policies")])
    assert rc == 2 and not (small_bundle / "policies").exists()
    assert main(["debias", str(small_bundle), "--save-policy", "bad name"]) == 2
    assert main(["debias", str(small_bundle), "--target-cut", "1.5"]) == 2


def test_crossfit_chooses_on_test_halves_where_the_dev_stage_misleads():
    """Dev targets are each user's unsuppressed top item (suppression costs NDCG there), test
    targets the top item with latent 0 suppressed (it helps there): a dev-chosen point keeps
    the bias, the cross-fitted one (chosen on test halves) cuts it, and every number it pools is
    what that half's users get under the point the other half chose."""
    from dataclasses import replace

    data, on = planted()
    st = data.test
    top = lambda xs: D._list_stats(data, st, xs)[0][:, 0]  # noqa: E731
    dev = replace(data.select, targets=top(data.select.x))
    test = replace(st, targets=top(data.kernel.steer(st.x, st.codes, {0: 1.0}, "error")))
    data = replace(data, select=dev, test=test)
    r = D.run_experiment(data, "popularity", counts=(1,), strengths=(0.5, 1.0), seeds=2, min_freq=0.01,
                         methods=("association",))
    t = r["targets"]["association"]
    assert t["dev_choice"]["strength"] == 0.5 and t["dev_choice"]["test_cut"] < 0.2  # dev: full strength costs NDCG
    cf = t["crossfit"]["max_cut"]
    assert cf["cut"] > 0.5 and cf["ndcg_loss"] < 0 and cf["cut_target_met"]
    assert all(p["strength"] == 1.0 for rec in cf["repeats"] for p in rec["points"])
    measure = data.measure("popularity")
    users = test.users
    for rep, rec in zip(range(cf["splits"]), cf["repeats"]):
        perm = np.random.default_rng(rep).permutation(len(users))
        halves = (perm[: len(perm) // 2], perm[len(perm) // 2 :])
        pu = np.zeros(len(users))
        gain = np.zeros(len(users))
        for out, point in zip(halves, rec["points"]):
            lat = [0] if point and point["n"] else []
            ids, ranks = D.steered_lists(data, test, lat, point["strength"] if point else 0.0)
            pu[out], gain[out] = measure.per_user(ids)[out], D._gain(ranks, data.top_k)[out]
        ids0, ranks0 = D._list_stats(data, test, test.x)
        b0 = measure.value(measure.per_user(ids0), users)
        assert rec["cut"] == pytest.approx(1 - measure.value(pu, users) / b0)
        assert rec["ndcg_loss"] == pytest.approx(1 - gain.mean() / D._gain(ranks0, data.top_k).mean())
    # the other rule: only full strength cuts a third on a half, so it is chosen everywhere too
    assert [p["strength"] for p in t["crossfit"]["min_loss"]["repeats"][0]["points"]] == [1.0, 1.0]
    # --target-cut: the cheapest dev point reaching the cut, even at a dev NDCG cost; unreachable -> clear error
    cheap = D.choose_policy(r, "association", target_cut=0.3)
    assert cheap["strength"] == 1.0 and 1 - cheap["dev"]["bias"] / r["base"]["dev"]["bias"] >= 0.3
    assert t["dev_choice_min_loss"]["strength"] == 1.0
    with pytest.raises(ConfigError, match="no association point cuts the dev-stage bias by 100%"):
        D.choose_policy(r, "association", target_cut=1.0)



def test_budget_edge_warning_flags_a_policy_that_used_most_of_the_ndcg_budget():
    result = {"settings": {"select_stage": "dev", "top_k": 10}, "base": {"dev": {"ndcg": 0.10}}}
    near = {"dev": {"ndcg": 0.0915}}  # 8.5% of a 10% budget
    far = {"dev": {"ndcg": 0.0960}}  # 4%
    assert "at the edge of the 10% budget" in D.budget_edge_warning(result, near, 0.10)
    assert "--target-cut" in D.budget_edge_warning(result, near, 0.10)
    assert D.budget_edge_warning(result, far, 0.10) is None
    assert D.budget_edge_warning(result, near, 0.20) is None
