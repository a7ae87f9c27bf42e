"""De-bias benchmark (issue 5, part 2): popularity and gender experiments on a real bundle.

Writes ``docs/DEBIAS.md`` (the report) and ``docs/debias/`` (PNG plots, JSON results, example
policies). Latents and baseline strengths are picked on dev-stage data only; every reported
number is test stage.

    .venv/bin/python benchmarks/debias.py                          # bundles/dev-ml100k
    .venv/bin/python benchmarks/debias.py --bundle bundles/dev-ml100k --work-dir /tmp/w1

With ``--work-dir`` the default offline job's SAE (``JobConfig`` defaults, same recommender as
the dev bundle; ``recsae.pipeline`` caches it there) is run through the same sweep.

Targets (SASRec / ml-100k): suppressing what the SAE found for popularity cuts the top-20% share
of the top-10 lists by >= 1/3 at <= 10% NDCG@10 loss, and beats random suppression at every sweep
point; the gender experiment is reported the same way whatever its outcome. Methods: latents
(association ranking, greedy selection), the SAE baseline b_dec (what all users share), and both.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


POLICY_ROWS = {"popularity": "best", "gender": "greedy"}
"""Rows each saved policy is chosen from (on the dev stage). Gender keeps latents only: the
baseline is shared by women and men alike, so it cannot carry a between-group gap."""


def default_job_sae(work_dir: Path, data_dir: str) -> Path | None:
    """The SAE folder of ``JobConfig(dataset='ml-100k', data_dir=...)`` (defaults) in the cache."""
    from recsae.pipeline import MODEL_KEYS, JobConfig
    from recsae.stages import sae_folder

    cfg = JobConfig(dataset="ml-100k", data_dir=data_dir)
    folder = sae_folder(cfg, work_dir / f"ml-100k-{cfg.model}-{cfg.key(*MODEL_KEYS)}")
    return folder if (folder / "sae.safetensors").is_file() else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default=str(ROOT / "bundles" / "dev-ml100k"))
    p.add_argument("--data-dir", default=os.environ.get("RECSAE_DATA_DIR", str(ROOT.parent / "shared" / "data")))
    p.add_argument("--work-dir", default=None, help="offline-job cache holding the default job's SAE (optional)")
    p.add_argument("--reserved-bundle", default=None,
                   help="a bundle trained with --sae-reserve popularity: its popularity experiment goes to "
                        "docs/debias-reserved/ and into the summary (policy chosen by --target-cut 1/3)")
    p.add_argument("--docs", default=str(ROOT / "docs"))
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--min-freq", type=float, default=0.005)
    p.add_argument("--max-ndcg-loss", type=float, default=0.10)
    p.add_argument("--baseline-strengths", default="0.1,0.2,0.3,0.4,0.5",
                   help="strengths of baseline (b_dec) suppression to sweep")
    a = p.parse_args(argv)
    betas = [float(v) for v in a.baseline_strengths.split(",") if v.strip()]

    from recsae import debias as D
    from recsae.kernel import SAEKernel

    docs = Path(a.docs)
    out = docs / "debias"
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = D.load_data(a.bundle, a.data_dir)
    t_load = time.perf_counter() - t0
    say = lambda s: print(f"[{time.perf_counter() - t0:6.1f}s] {s}", file=sys.stderr, flush=True)  # noqa: E731

    runs: list[tuple[str, dict, dict, float]] = []  # (key, result, policy doc, seconds)
    for bias in D.BIASES:
        t = time.perf_counter()
        r = D.run_experiment(data, bias, seeds=a.seeds, min_freq=a.min_freq, max_ndcg_loss=a.max_ndcg_loss,
                             progress=say, baseline_strengths=betas)
        secs = time.perf_counter() - t
        point = D.choose_policy(r, POLICY_ROWS[bias], a.max_ndcg_loss)
        doc = D.policy_document(f"debias-{bias}", point, r)
        runs.append((bias, r, doc, secs))

    extra = None
    if a.work_dir:
        folder = default_job_sae(Path(a.work_dir), a.data_dir)
        if folder is None:
            say(f"no default-job SAE in {a.work_dir}; skipping that comparison")
        else:
            label = f"default job ({folder.name})"
            d2 = D.with_kernel(data, SAEKernel.load(folder), label)
            t = time.perf_counter()
            r = D.run_experiment(d2, "popularity", seeds=a.seeds, min_freq=a.min_freq, max_ndcg_loss=a.max_ndcg_loss,
                                 progress=say, baseline_strengths=betas)
            extra = (folder, r, time.perf_counter() - t)

    for key, r, doc, _ in runs:
        D.plot_tradeoff(r, out / f"tradeoff-{key}.png")
        (out / f"debias-{key}.json").write_text(json.dumps(r, indent=1, default=D._json_default))
        D.save_policy(doc, out / "policies")
    if extra:
        D.plot_tradeoff(extra[1], out / "tradeoff-popularity-default-job-sae.png")
        (out / "debias-popularity-default-job-sae.json").write_text(
            json.dumps(extra[1], indent=1, default=D._json_default))

    reserved = None
    if a.reserved_bundle:
        say(f"reserved-latent bundle {a.reserved_bundle}")
        data_r = D.load_data(a.reserved_bundle, a.data_dir)
        t = time.perf_counter()
        r = D.run_experiment(data_r, "popularity", strengths=D.RESERVED_STRENGTHS, seeds=a.seeds, min_freq=a.min_freq,
                             max_ndcg_loss=a.max_ndcg_loss, progress=say, baseline_strengths=betas)
        secs = time.perf_counter() - t
        point = D.choose_policy(r, "association", a.max_ndcg_loss, target_cut=r["targets"]["min_cut"])
        doc = D.policy_document("no-popularity", point, r)
        folder = docs / "debias-reserved"
        D.write_outputs(r, folder, doc)
        D.save_policy(doc, folder / "policies")
        reserved = (r, doc, point, secs)
        print("== popularity (reserved latent)")
        print(D.targets_markdown(r))

    text = render(runs, extra, a, t_load, reserved)
    (docs / "DEBIAS.md").write_text(text)
    for key, r, _, _ in runs:
        print(f"== {key}")
        print(D.targets_markdown(r))
    say(f"wrote {docs / 'DEBIAS.md'} and {out}/")
    return 0


def reserved_summary(reserved, max_loss: float, plain: dict) -> str:
    """The summary bullet of the reserved-latent bundle's popularity experiment."""
    from recsae import debias as D

    r, doc, point, secs = reserved
    t, b0, n0 = r["targets"], r["base"]["test"]["bias"], r["base"]["test"]["ndcg"]
    x = t["association"]
    src = r["source"]
    goal = f"≥{t['min_cut']:.0%} cut at ≤{max_loss:.0%} NDCG loss"

    def pt(p, cut, loss, ci=None):
        return f"{D._point_text(p)}: {cut:+.1%} at NDCG {-loss:+.1%}" + (f" (95% CI of the loss {ci[0]:+.1%}…{ci[1]:+.1%})" if ci else "")

    def cf(rule):
        c = x["crossfit"][rule]
        return (f"{c['cut']:+.1%} at NDCG {-c['ndcg_loss']:+.1%} (losses {c['ndcg_loss_range'][0]:+.1%}…"
                f"{c['ndcg_loss_range'][1]:+.1%} over {c['splits']} halvings; {'meets' if c['cut_target_met'] else 'misses'})")

    dev, dev2 = x["dev_choice"], x.get("dev_choice_min_loss")
    heads = r.get("target_head_share", {})
    return (
        f"- **Popularity as a reserved latent** (`recsae train --sae-reserve popularity`, bundle "
        f"`{os.path.relpath(src['bundle'], ROOT) if Path(src['bundle']).resolve().is_relative_to(ROOT) else src['bundle']}`, "
        f"version `{src['version']}`; "
        + ("the same recommender as above" if (b0, n0) == (plain["base"]["test"]["bias"], plain["base"]["test"]["ndcg"])
           else f"another recommender run: top-20% share {b0:.3f}, NDCG@10 {n0:.4f}")
        + f"; {secs:.0f} s; report [debias-reserved/report-popularity.md](debias-reserved/report-popularity.md)). "
        f"Latent 0 is pinned to the direction that raises the head items' scores and kept out of every other "
        f"latent and of `b_dec`, so the association ranking finds it first. Best test point within the budget: "
        f"{pt(x['best_point'], x['best_cut_within_loss'], x['best_ndcg_loss'], x.get('best_ndcg_loss_ci95'))} — "
        f"**target ({goal}) {'met' if x['cut_target_met'] else 'not met'}**; lower |bias| than random latents at "
        f"{x['beats_random_points']} sweep points"
        f" (**{'every point' if x['beats_random_everywhere'] else 'not every point'}**); re-ranking reaches "
        f"{t['rerank']['best_cut_within_loss']:+.1%} within the budget. Chosen blind — the lowest bias within "
        f"{max_loss:.0%} loss: on dev {pt(dev, dev['test_cut'], dev['test_ndcg_loss']) if dev else 'none'}, on half the "
        f"test users {cf('max_cut')}; the least loss cutting {t['min_cut']:.0%}: on dev "
        f"{pt(dev2, dev2['test_cut'], dev2['test_ndcg_loss'], dev2.get('test_ndcg_loss_ci95')) if dev2 else 'none'}"
        f", on half the test users {cf('min_loss')}. "
        + (f"The first rule chosen on dev under-shoots: the stages differ ({heads.get('dev', float('nan')):.0%} of dev "
           f"targets are head items against {heads.get('test', float('nan')):.0%} of test targets, and SASRec was "
           "early-stopped on dev), so suppression costs more on dev. "
           if dev and dev["test_cut"] < t["min_cut"] and heads.get("dev", 0) > heads.get("test", 0) else "")
        + f"Servable policy (second rule): `docs/debias-reserved/policies/{doc['name']}.json` "
        f"({D._point_text(point)}; test {point['test']['bias'] / b0 - 1:+.1%} share at NDCG "
        f"{point['test']['ndcg'] / n0 - 1:+.1%})."
    )


def render(runs, extra, a, t_load: float, reserved=None) -> str:
    from recsae import debias as D

    by = {k: (r, doc, s) for k, r, doc, s in runs}
    pop, pop_doc, _ = by["popularity"]
    gen, gen_doc, _ = by["gender"]
    src = dict(pop["source"])
    try:
        src["bundle"] = os.path.relpath(src["bundle"], ROOT) if Path(src["bundle"]).resolve().is_relative_to(ROOT) else src["bundle"]
    except (OSError, ValueError):
        pass
    k = pop["settings"]["top_k"]
    tp, tg = pop["targets"], gen["targets"]
    gm = gen["measure"]
    ev = pop["evidence_summary"]
    be = pop["baseline_evidence"]
    b0, n0 = pop["base"]["test"]["bias"], pop["base"]["test"]["ndcg"]
    betas = ", ".join(f"{b:g}" for b in pop["settings"]["baseline_strengths"])

    def verdict(t, m, target=True):
        if m not in t:
            return "not run"
        x = t[m]
        what = "target" if target else "yardstick"
        return (f"{x['best_cut_within_loss']:+.1%} best cut within {t['max_ndcg_loss']:.0%} NDCG loss "
                f"({'meets' if x['cut_target_met'] else 'misses'} the ≥{t['min_cut']:.0%} {what}); lower "
                f"|bias| than {x['comparator']} at {x['beats_random_points']} points")

    def chosen(t, m):
        x = t.get(m, {}).get("dev_choice")
        if not x:
            return "no point within the dev NDCG budget"
        return (f"{D._point_text(x)} → test {x['test_cut']:+.1%} at NDCG {-x['test_ndcg_loss']:+.1%}; re-ranking at the "
                f"same test NDCG {x['rerank_cut_at_matched_ndcg']:+.1%}")

    def met(t, m):
        return m in t and t[m]["cut_target_met"] and t[m]["beats_random_everywhere"]

    met_by = [m for m in D.COMPARATOR if met(tp, m)]
    dev_met = [m for m in D.COMPARATOR if m in tp and tp[m]["dev_choice"] and tp[m]["dev_choice"]["cut_target_met"]]
    pol_row = D.choose_policy(pop, POLICY_ROWS["popularity"], a.max_ndcg_loss)
    won, of = map(int, tp.get("baseline", {}).get("beats_rerank_at_matched_ndcg_points", "0/0").split("/"))
    vs_rerank = ("better at every point" if of and won == of else "worse at every point" if won == 0
                 else "mixed: neither dominates")
    pt = pol_row["test"]
    default_bundle = Path(a.bundle).resolve() == (ROOT / "bundles" / "dev-ml100k").resolve()
    cmd = ("`.venv/bin/python benchmarks/debias.py" + ("" if default_bundle else f" --bundle {src['bundle']}")
           + (f" --work-dir {a.work_dir}" if a.work_dir else "")
           + (f" --reserved-bundle {a.reserved_bundle}" if a.reserved_bundle else "") + "`")
    lines = [
        "# De-biasing recommendations by suppressing SAE concepts",
        "",
        "GitHub issue 5, part 2. Code: `recsae/debias/` (NumPy; the same kernel the service runs), CLI "
        "`recsae debias`, benchmark `benchmarks/debias.py` (which wrote this file and `docs/debias/`).",
        "",
        f"Bundle `{src['bundle']}` (version `{src['version']}`): {src['model']} on {src['dataset']}, "
        f"{pop['settings']['test_users']} test users, full-ranking leave-one-out, top-{k} lists, "
        f"steering mode `{pop['settings']['mode']}` (error-preserving). Generated by {cmd} "
        f"({t_load:.1f} s to load; popularity {by['popularity'][2]:.0f} s, gender {by['gender'][2]:.0f} s on 2 CPU cores).",
        "",
        "Two kinds of concept are suppressed: sparse SAE **latents**, and the SAE's **baseline** — its decoder "
        "bias `b_dec`, what every user's representation shares. A TopK SAE absorbs that shared part into `b_dec` "
        "(initialised at the data mean) instead of a sparse latent, and in a recommender it is chiefly popularity. "
        "The service suppresses it with `suppress_baseline=` or a policy's `baseline` (docs/SERVICE.md).",
        "",
        "## Summary",
        "",
        f"- **Popularity** (top-20% share {b0:.3f}, NDCG@{k} {n0:.4f}). Latents — association ranking: "
        f"{verdict(tp, 'association')}; greedy dev-stage selection: {verdict(tp, 'greedy')}. "
        f"Baseline (β ∈ {{{betas}}}): {verdict(tp, 'baseline')}. "
        f"Baseline + greedy latents: {verdict(tp, 'baseline+greedy')}. "
        + (f"**The target (≥1/3 cut within 10% NDCG loss, better than random at every point) is met by: "
           f"{', '.join(met_by)}.** " if met_by else "**The target is not met by any method.** ")
        + f"Chosen on the dev stage without looking at test items — baseline: {chosen(tp, 'baseline')}; "
        f"baseline + greedy: {chosen(tp, 'baseline+greedy')}"
        + (f" (the dev-chosen point meets the target for: {', '.join(dev_met)})." if dev_met
           else " (no dev-chosen point meets the target on the test stage).")
        + f" The plain re-ranking baseline (`score − λ·log(1+pop)`) reaches {tp['rerank']['best_cut_within_loss']:+.1%} "
        "within the same loss over its λ sweep. At matched test NDCG, baseline suppression has the lower head share "
        f"at {tp.get('baseline', {}).get('beats_rerank_at_matched_ndcg_points', '-')} of its β points (the table's "
        "last column): "
        + "; ".join(f"β={r['baseline']:g}: {1 - r['test']['bias'] / b0:+.1%} vs re-ranking "
                    f"{1 - r['rerank_bias_at_matched_ndcg'] / b0:+.1%}"
                    for r in sorted((r for r in pop["rows"] if r["method"] == "baseline"), key=lambda r: r["baseline"]))
        + f" — {vs_rerank}.",
        f"- **Gender** (F−M stereotype gap {gen['base']['test']['bias']:+.3f}; the same gap in the training "
        f"histories is {gm['gap_in_training_histories']:+.3f}, so the lists already halve it) — with the popularity "
        f"target's numbers as a yardstick: association: {verdict(tg, 'association', False)}; greedy: "
        f"{verdict(tg, 'greedy', False)}; baseline: {verdict(tg, 'baseline', False)} — the baseline is shared by "
        f"women and men alike, so it is not where the gap lives. Re-ranking: {tg['rerank']['best_cut_within_loss']:+.1%}. "
        f"Gender is barely predictable from the lists' genre mix (AUC {gen['base']['test']['gender_auc']:.3f}).",
        f"- **Why popularity is the baseline, not a latent**: the rank correlation between `b_dec · e_i` and item "
        f"training popularity is {be['spearman_bdec_popularity']:+.3f} over all items, and "
        f"{be['head_share_top_k_by_bdec']:.0%} of the {k} items `b_dec` scores highest are head items (chance "
        f"{be['head_fraction']:.0%}). Correlation alone is not unique — the item embeddings have a popularity axis, "
        f"so {be['latents_spearman_over_0_5']} of {be['latents_compared']} latent directions also correlate > 0.5 — "
        f"but those latents fire for {be['aligned_latents_mean_firing_rate']:.1%} of users on average, while `b_dec` "
        f"is in every representation at full weight: head-minus-tail direct effect {be['direct_effect_bdec']:+.2f} vs "
        f"{be['direct_effect_aligned_latents']:+.2f} for the aligned latents (weighted by mean activation) and, "
        f"for all latents together, "
        f"{ev['latents_total_direct_effect']:+.2f} (Σ_j mean activation_j × direct effect_j, pushing the other way): "
        f"suppressing latents moves a representation *towards* `b_dec`, i.e. towards popular items — which is why "
        f"random latent suppression raises the head share. Only {ev['latents_reducing_bias_alone']} of "
        f"{pop['pool_size']} candidate latents lower the dev-stage head share when suppressed alone, by "
        f"{ev['sum_of_negative_solo_bias']:+.4f} all together.",
        f"- **Servable**: the dev-chosen popularity policy `docs/debias/policies/{pop_doc['name']}.json` "
        f"({D._point_text(pol_row)}) gives test top-20% share {pt['bias']:.3f} ({pt['bias'] / b0 - 1:+.1%}) at "
        f"NDCG@{k} {pt['ndcg']:.4f} ({pt['ndcg'] / n0 - 1:+.1%}); PUT its body (minus `name`) to "
        "`/admin/policies/<name>`.",
        "- **Honest caveat**: in error mode, suppressing the baseline at strength β is the same as re-ranking "
        "every item by `score − β · (b_dec · e_i)` — one penalty per item for all users, which the SAE learned "
        "without popularity labels. Its advantage over the `log(1+pop)` re-ranking is that it needs no "
        "popularity counts and is the same edit of the representation the service explains; it is not "
        "personalised.",
    ]
    if extra:
        folder, r2, _ = extra
        t2 = r2["targets"]
        e2 = r2["evidence_summary"]
        lines.append(
            f"- **Default job's SAE** (`{folder}`, same recommender, 30 epochs): greedy {verdict(t2, 'greedy')}; "
            f"baseline {verdict(t2, 'baseline')} (b_dec direct effect {e2['decoder_bias_direct_effect']:+.2f}, "
            f"ρ(b_dec·e, popularity) {r2['baseline_evidence']['spearman_bdec_popularity']:+.3f})."
        )
    lines += [
        reserved_summary(reserved, a.max_ndcg_loss, pop) if reserved else
        "- **Making popularity a latent**: `recsae train --sae-reserve popularity` reserves latent 0 for the "
        "direction that raises the head items' scores and keeps that direction out of every other latent and "
        "of `b_dec`; suppressing that one latent then cuts popularity per user "
        "([debias-reserved/report-popularity.md](debias-reserved/report-popularity.md), README \"De-biasing\"; "
        "run this benchmark with `--reserved-bundle` to summarise it here). Fixing `b_dec` = 0 instead gave a far "
        "worse SAE.",
        "- **Read the NDCG losses with their intervals**: each best and dev-chosen point carries a 95% paired-"
        "bootstrap interval of its test NDCG loss; with ~1k test users it spans about ±9 points, so a point "
        "a few points either side of the 10% budget is not resolved by this data.",
        "",
        "## Method",
        "",
        "**Data separation.** Latents are chosen, baseline strengths are chosen, and the saved policy's sweep "
        "point is picked, on the *dev* stage only (each user's training history as input, the dev item as "
        "target, dev-stage top-10 lists); test items never influence a choice. Because the dev stage differs "
        "from the test stage (earlier, more popular targets; the recommender was early-stopped on it), each "
        "method is also scored by a blind choice made on the test stage itself: chosen on a random half of the "
        "test users, applied to the other half and vice versa, over 5 halvings. All tables and plots report the "
        "*test* stage (history incl. the dev item as input, the last item as target). Popularity counts and the "
        "stereotyped genres come from the training interactions. Inputs of sequential bundles are built with "
        "`history_windows(split.history(u, stage), max_len, n_items)` and run through the bundle's ONNX "
        "encoder (`Engine.encode_histories`); metrics use the evaluation module's protocol (seen items "
        "excluded, pessimistic ties) and are checked equal to `evaluate_reps` in the tests.",
        "",
        "**Bias measures** (on top-10 lists, `recsae.debias`):",
        "",
        f"- *popularity*: `popularity_share` = mean over users of the share of recommended items among the "
        f"top 20% most popular items ({pop['measure']['head_items']} items by the catalog's training counts, "
        "ties to the lower item id); `mean_popularity` = mean training count of the recommended items.",
        f"- *gender* (ml-100k `gender:F|M`): the stereotyped genres are the two genres whose share of the "
        f"training interactions is most higher for female users ({', '.join(gm['female_genres'])}) and for "
        f"male users ({', '.join(gm['male_genres'])}). A list's stereotype score = share of items in a "
        "female-leaning genre − share in a male-leaning genre (an item in both counts 0); `gender_gap` = "
        "mean score of female users' lists − male users'; 0 = no gap, |gap| is what is reduced. `gender_auc` = "
        "out-of-fold (5-fold, stratified) AUC of an L2 logistic regression predicting gender from each "
        "list's genre mix.",
        "",
        "**Candidate latents**: those firing for ≥ "
        f"{pop['settings']['min_freq']:.1%} of dev-stage users. Evidence per latent (tables below): "
        "`contrast` = Σ_u w_u a_uj with the bias's user weights (mean activation for popularity; mean "
        "activation of female − male users for gender) and the same for firing rates; `direct effect` = "
        "W_dec[j] · (mean embedding of biased items − mean of the others) (head − tail; female-genre − "
        "male-genre items); `association` = sign(bias) · contrast · direct effect — the latent's direct "
        "contribution to the bias; `solo Δ` = dev-stage change of |bias| and NDCG@10 when that latent alone "
        "is suppressed.",
        "",
        "- *association* selection: candidates by association, highest first (the simple ranking).",
        f"- *greedy* selection: forward selection on dev-stage users: each step adds the latent that leaves "
        f"the lowest dev |bias| when suppressed together with those already chosen (strength 1), among those "
        f"keeping dev NDCG@10 within {pop['settings']['max_ndcg_loss']:.0%} of the original.",
        f"- *random* (comparator of the latent methods): n latents drawn uniformly from the same candidates, mean "
        f"(± std) over {pop['settings']['seeds']} draws.",
        f"- *baseline*: `x − β·b_dec` for β ∈ {{{betas}}} (`SAEKernel.steer(..., baseline=β)`; reconstruction "
        "mode decodes with (1 − β)·b_dec).",
        f"- *random-direction* (its comparator): `x − β·|b_dec|·u` with u a random unit vector — the same edit "
        f"size at the same β — mean (± std) over {pop['settings']['seeds']} directions.",
        "- *baseline+greedy*: the baseline at the β chosen on the dev stage (lowest dev |bias| within the dev "
        "NDCG budget), plus latents selected greedily on top of it (same rule, NDCG budget relative to the "
        "original model); comparator *random-direction+latents*: a random direction of that norm plus n random "
        "latents.",
        "- *re-ranking*: rank by `score − λ·penalty` over the whole catalogue (seen items excluded). Popularity: "
        "penalty `log(1 + pop)`. Gender: a gender-blind genre-mix penalty `lean_u · sign_i` (sign_i = +1 "
        "female-leaning genre, −1 male-leaning; lean_u = the user's unpenalised stereotype score − the mean "
        "over users), which pulls each list towards the average genre mix. λ is swept in units of "
        "std(scores)/std(penalty). 're-rank bias at same NDCG' = the lowest |bias| the λ curve reaches "
        "(interpolated linearly between λ points) at a test NDCG@10 at least the row's.",
        "- Sweep: n ∈ {1, 2, 4, 8, 16, 32} × strength ∈ {0.5, 1.0} for latents, error-preserving mode (only the "
        "suppressed terms are removed; nothing suppressed = the original model). 'Best cut within 10% NDCG "
        "loss' is the best test point of a sweep (a description of the curve); the dev-chosen point is the one "
        "a policy would use.",
        "",
    ]
    for key in ("popularity", "gender"):
        r, doc, _ = by[key]
        lines.append(D.render_section(r, f"debias/tradeoff-{key}.png"))
        lines += [
            "### Policy chosen on the dev stage",
            "",
            f"The point with the lowest dev |bias| within {a.max_ndcg_loss:.0%} dev NDCG loss among the "
            + (", ".join(D.POLICY_METHODS[:-1]) + f" and {D.POLICY_METHODS[-1]} rows" if POLICY_ROWS[key] == "best" else
               f"{POLICY_ROWS[key]} rows (latents only: the baseline is shared by women and men alike)")
            + f"; saved as `docs/debias/policies/{doc['name']}.json`:",
            "",
            "```json",
            D.policy_json(doc),
            "```",
            "",
        ]
    if extra:
        folder, r2, _ = extra
        lines += [
            "## Popularity with the default job's SAE",
            "",
            f"Same recommender and users; SAE from `{folder}` (JobConfig defaults: k = 8, 16× expansion, "
            "30 epochs).",
            "",
            "### Targets",
            "",
            D.targets_markdown(r2),
            "",
            "![popularity trade-off, default-job SAE](debias/tradeoff-popularity-default-job-sae.png)",
            "",
            D.sweep_table(r2),
            "",
        ]
    lines += [
        "## Running it",
        "",
        "```bash",
        "# one bias, report + plot into --out, and the chosen suppression as a policy file",
        ".venv/bin/recsae debias bundles/dev-ml100k --bias popularity --data-dir ../shared/data \\",
        "    --out debias-report --save-policy no-popularity --policy-dir policies/",
        ".venv/bin/recsae debias bundles/dev-ml100k --bias gender --method greedy --save-policy gender-neutral",
        "# this report",
        cmd.strip("`"),
        "```",
        "",
        "Options: `--counts 1,2,4,8,16,32`, `--strengths 0.5,1.0`, `--baseline-strengths 0.1,0.2,0.3,0.4,0.5` "
        "(empty: latents only), `--mode error|reconstruction`, `--seeds 5`, `--min-freq 0.005`, "
        "`--max-ndcg-loss 0.10` (greedy constraint and policy choice, on the dev stage), "
        "`--method best|greedy|association|baseline|baseline+greedy` (which rows the saved policy is chosen from; "
        "`best` = greedy, baseline and baseline+greedy). The command prints the sweep table and writes "
        "`report-<bias>.md`, `tradeoff-<bias>.png` and `debias-<bias>.json` into `--out`.",
        "",
        "## Policy file format",
        "",
        "`--save-policy NAME` writes `<policy-dir>/NAME.json` (default `policies/`; a folder inside a bundle "
        "is refused because bundles are hash-verified). These keys (`baseline` may be absent in older files):",
        "",
        "```json",
        D.policy_json({"name": "no-popularity", "latents": [996, 800], "strength": 1.0, "mode": "error",
                       "baseline": 0.4,
                       "description": "popularity de-bias (baseline+greedy, chosen on dev-stage users): ... bundle <version> (<hash>)"}),
        "```",
        "",
        "- `name`: letters, digits, `_.-`, at most 64, starting with a letter or digit (the service's policy-name rule);",
        "- `latents`: SAE latent ids of the bundle it was computed on (ids differ between SAEs; the "
        "description names the bundle version and hash); may be empty when only the baseline is suppressed;",
        "- `strength` in [0, 1] (1 = remove the latents' terms, 0.5 = halve them); `mode`: `error` or `reconstruction`;",
        "- `baseline` in [0, 1]: how much of the SAE decoder bias (what all users share) to remove;",
        "- `description`: ≤ 500 characters, with the measured effect.",
        "",
        "The body minus `name` is a valid service `PolicyIn` (`latents`, `strength`, `mode`, `baseline`, "
        "`description`), so the service can import the file as policy `name`; `recsae.debias.load_policy(path)` "
        "reads and checks one.",
        "",
        "## Not done / caveats",
        "",
        "- Baseline suppression is one per-item penalty shared by all users (see Summary): it removes what the "
        "user base has in common — mostly popularity, but not only — and is not a per-user concept.",
        "- Latent suppression alone does not reach the popularity target on these SAEs (see Summary for why).",
        "- One recommender (SASRec) and one dataset (ml-100k); 943 test users, so NDCG@10 differences below "
        "~0.003 are within noise (one user's hit moves NDCG@10 by up to 0.001).",
        "- User-id bundles (BPR-MF, LightGCN) work through the same code, but their representation is the same at "
        "the dev and test stage.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
