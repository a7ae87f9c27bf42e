"""De-bias benchmark (issue 5, part 2): popularity and gender experiments on a real bundle.

Writes ``docs/DEBIAS.md`` (the report) and ``docs/debias/`` (PNG plots, JSON results, example
policies). Latents are picked on dev-stage data only; every reported number is test stage.

    .venv/bin/python benchmarks/debias.py                          # bundles/dev-ml100k
    .venv/bin/python benchmarks/debias.py --bundle bundles/dev-ml100k --work-dir /tmp/w1

With ``--work-dir`` the default offline job's SAE (``JobConfig`` defaults, same recommender as
the dev bundle; ``recsae.pipeline`` caches it there) is run through the same sweep.

Targets (SASRec / ml-100k): suppressing the popularity latents cuts the top-20% share of the
top-10 lists by >= 1/3 at <= 10% NDCG@10 loss, and beats random suppression at every sweep
point; the gender experiment is reported the same way whatever its outcome.
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


def default_job_sae(work_dir: Path, data_dir: str) -> Path | None:
    """The SAE folder of ``JobConfig(dataset='ml-100k', data_dir=...)`` (defaults) in the cache."""
    from recsae.pipeline import MODEL_KEYS, SAE_KEYS, JobConfig

    cfg = JobConfig(dataset="ml-100k", data_dir=data_dir)
    folder = work_dir / f"ml-100k-{cfg.model}-{cfg.key(*MODEL_KEYS)}" / f"sae-{cfg.key(*SAE_KEYS)}"
    return folder if (folder / "sae.safetensors").is_file() else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default=str(ROOT / "bundles" / "dev-ml100k"))
    p.add_argument("--data-dir", default=os.environ.get("RECSAE_DATA_DIR", str(ROOT.parent / "shared" / "data")))
    p.add_argument("--work-dir", default=None, help="offline-job cache holding the default job's SAE (optional)")
    p.add_argument("--docs", default=str(ROOT / "docs"))
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--min-freq", type=float, default=0.005)
    p.add_argument("--max-ndcg-loss", type=float, default=0.10)
    a = p.parse_args(argv)

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
        r = D.run_experiment(data, bias, seeds=a.seeds, min_freq=a.min_freq, max_ndcg_loss=a.max_ndcg_loss, progress=say)
        secs = time.perf_counter() - t
        point = D.choose_policy(r, "greedy", a.max_ndcg_loss)
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
                                 progress=say)
            extra = (folder, r, time.perf_counter() - t)

    for key, r, doc, _ in runs:
        D.plot_tradeoff(r, out / f"tradeoff-{key}.png")
        (out / f"debias-{key}.json").write_text(json.dumps(r, indent=1, default=D._json_default))
        D.save_policy(doc, out / "policies")
    if extra:
        D.plot_tradeoff(extra[1], out / "tradeoff-popularity-default-job-sae.png")
        (out / "debias-popularity-default-job-sae.json").write_text(
            json.dumps(extra[1], indent=1, default=D._json_default))

    text = render(runs, extra, a, t_load)
    (docs / "DEBIAS.md").write_text(text)
    for key, r, _, _ in runs:
        print(f"== {key}")
        print(D.targets_markdown(r))
    say(f"wrote {docs / 'DEBIAS.md'} and {out}/")
    return 0


def render(runs, extra, a, t_load: float) -> str:
    from recsae import debias as D

    by = {k: (r, doc, s) for k, r, doc, s in runs}
    pop, _, _ = by["popularity"]
    gen, _, _ = by["gender"]
    src = dict(pop["source"])
    try:
        src["bundle"] = os.path.relpath(src["bundle"], ROOT) if Path(src["bundle"]).resolve().is_relative_to(ROOT) else src["bundle"]
    except (OSError, ValueError):
        pass
    k = pop["settings"]["top_k"]
    tp, tg = pop["targets"], gen["targets"]
    gm = gen["measure"]
    ev = pop["evidence_summary"]
    db = {round(p["alpha"], 2): p for p in pop["decoder_bias"]}
    b0, n0 = pop["base"]["test"]["bias"], pop["base"]["test"]["ndcg"]
    dbp = db.get(0.4) or pop["decoder_bias"][-1]

    def verdict(t, m, target=True):
        x = t[m]
        what = "target" if target else "yardstick"
        return (f"{x['best_cut_within_loss']:+.1%} best cut within {t['max_ndcg_loss']:.0%} NDCG loss "
                f"({'meets' if x['cut_target_met'] else 'misses'} the ≥{t['min_cut']:.0%} {what}); lower "
                f"|bias| than random at {x['beats_random_points']} points")

    cmd = "`.venv/bin/python benchmarks/debias.py" + (f" --work-dir {a.work_dir}" if a.work_dir else "") + "`"
    lines = [
        "# De-biasing recommendations by suppressing SAE latents",
        "",
        "GitHub issue 5, part 2. Code: `recsae/debias.py` (NumPy; the same kernel the service runs), CLI "
        "`recsae debias`, benchmark `benchmarks/debias.py` (which wrote this file and `docs/debias/`).",
        "",
        f"Bundle `{src['bundle']}` (version `{src['version']}`): {src['model']} on {src['dataset']}, "
        f"{pop['settings']['test_users']} test users, full-ranking leave-one-out, top-{k} lists, "
        f"steering mode `{pop['settings']['mode']}` (error-preserving). Generated by {cmd} "
        f"({t_load:.1f} s to load; popularity {by['popularity'][2]:.0f} s, gender {by['gender'][2]:.0f} s on 2 CPU cores).",
        "",
        "## Summary",
        "",
        f"- **Popularity** (top-20% share {b0:.3f}, NDCG@{k} {n0:.4f}): simple association ranking: "
        f"{verdict(tp, 'association')}; greedy dev-stage selection: {verdict(tp, 'greedy')}. "
        f"**The target is {'met' if tp['greedy']['cut_target_met'] or tp['association']['cut_target_met'] else 'not met'}.** "
        f"The plain re-ranking baseline reaches {tp['rerank']['best_cut_within_loss']:+.1%} within the same loss.",
        f"- **Gender** (F−M stereotype gap {gen['base']['test']['bias']:+.3f}; the same gap in the training "
        f"histories is {gm['gap_in_training_histories']:+.3f}, so the lists already halve it) — with the popularity "
        f"target's numbers as a yardstick: association: {verdict(tg, 'association', False)}; greedy: "
        f"{verdict(tg, 'greedy', False)}. Re-ranking does better at matched accuracy: "
        f"{tg['rerank']['best_cut_within_loss']:+.1%}. Gender is barely "
        f"predictable from the lists' genre mix (AUC {gen['base']['test']['gender_auc']:.3f}).",
        f"- **Why popularity cannot be suppressed here**: in this SAE the popularity direction is the decoder "
        f"bias `b_dec` (initialised at the data mean), not a latent. `b_dec`'s direct effect on head-minus-tail "
        f"item scores is {ev['decoder_bias_direct_effect']:+.2f}, while the latents together push the other way "
        f"(Σ_j mean activation_j × direct effect_j = {ev['latents_total_direct_effect']:+.2f}): suppressing latents moves a "
        f"representation *towards* `b_dec`, i.e. towards popular items — which is why random suppression "
        f"raises the head share. Only {ev['latents_reducing_bias_alone']} of {pop['pool_size']} candidates lower "
        f"the dev-stage head share when suppressed alone, by {ev['sum_of_negative_solo_bias']:+.4f} all together "
        f"(best one {ev['best_solo_bias']:+.4f}), against a dev-stage share of {pop['base']['dev']['bias']:.3f}; "
        f"greedy joint selection of {len(pop['greedy_trace'])} latents gets the dev share to "
        f"{pop['greedy_trace'][-1]['bias']:.3f}. Latent suppression cannot come near a one-third cut on this SAE. "
        f"The diagnostic `x − α·b_dec` (not expressible as a policy) does: α = {dbp['alpha']:.1f} gives "
        f"{dbp['bias']:.3f} ({dbp['bias'] / b0 - 1:+.1%}) at NDCG@{k} {dbp['ndcg']:.4f} ({dbp['ndcg'] / n0 - 1:+.1%}).",
    ]
    if extra:
        folder, r2, _ = extra
        t2 = r2["targets"]
        e2 = r2["evidence_summary"]
        lines.append(
            f"- **Default job's SAE** (`{folder}`, same recommender, 30 epochs): greedy {verdict(t2, 'greedy')}; "
            f"association {verdict(t2, 'association')} — the same picture (b_dec direct effect "
            f"{e2['decoder_bias_direct_effect']:+.2f}, all solo reductions together {e2['sum_of_negative_solo_bias']:+.4f})."
        )
    lines += [
        "- Possible follow-ups (not in this change, they touch other modules): let a policy also scale the "
        "decoder bias's popularity component (a servable 'bias latent'), or train the SAE without absorbing "
        "the mean into `b_dec` so that popularity becomes a latent that suppression can reach.",
        "",
        "## Method",
        "",
        "**Data separation.** Latents are chosen, and the saved policy's sweep point is picked, on the *dev* "
        "stage only (each user's training history as input, the dev item as target, dev-stage top-10 lists); "
        "test items never influence a choice. All tables and plots report the *test* stage (history incl. "
        "the dev item as input, the last item as target). Popularity counts and the stereotyped genres come "
        "from the training interactions. Inputs of sequential bundles are built with "
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
        f"- *random*: n latents drawn uniformly from the same candidates, mean (± std) over {pop['settings']['seeds']} draws.",
        "- *re-ranking*: rank by `score − λ·penalty` over the whole catalogue (seen items excluded). Popularity: "
        "penalty `log(1 + pop)`. Gender: a gender-blind genre-mix penalty `lean_u · sign_i` (sign_i = +1 "
        "female-leaning genre, −1 male-leaning; lean_u = the user's unpenalised stereotype score − the mean "
        "over users), which pulls each list towards the average genre mix. λ is swept in units of "
        "std(scores)/std(penalty). 're-rank bias at same NDCG' = the lowest |bias| the λ curve reaches "
        "(interpolated linearly between λ points) at a test NDCG@10 at least the row's.",
        "- Sweep: n ∈ {1, 2, 4, 8, 16, 32} × strength ∈ {0.5, 1.0}, error-preserving mode (only the "
        "suppressed latents' terms are removed; nothing suppressed = the original model).",
        "",
    ]
    for key in ("popularity", "gender"):
        r, doc, _ = by[key]
        lines.append(D.render_section(r, f"debias/tradeoff-{key}.png"))
        lines += [
            "### Policy chosen on the dev stage",
            "",
            f"Greedy point with the lowest dev |bias| within {a.max_ndcg_loss:.0%} dev NDCG loss; saved as "
            f"`docs/debias/policies/{doc['name']}.json`:",
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
        ".venv/bin/recsae debias bundles/dev-ml100k --bias gender --save-policy gender-neutral",
        "# this report",
        ".venv/bin/python benchmarks/debias.py --work-dir /tmp/w1",
        "```",
        "",
        "Options: `--counts 1,2,4,8,16,32`, `--strengths 0.5,1.0`, `--mode error|reconstruction`, `--seeds 5`, "
        "`--min-freq 0.005`, `--max-ndcg-loss 0.10` (greedy constraint and policy choice, on the dev stage), "
        "`--method greedy|association` (which selection the saved policy uses). The command prints the sweep "
        "table and writes `report-<bias>.md`, `tradeoff-<bias>.png` and `debias-<bias>.json` into `--out`.",
        "",
        "## Policy file format",
        "",
        "`--save-policy NAME` writes `<policy-dir>/NAME.json` (default `policies/`; a folder inside a bundle "
        "is refused because bundles are hash-verified). Exactly these keys:",
        "",
        "```json",
        D.policy_json({"name": "no-popularity", "latents": [996, 800, 608], "strength": 1.0, "mode": "error",
                       "description": "popularity de-bias (greedy selection on dev-stage users): ... bundle <version> (<hash>)"}),
        "```",
        "",
        "- `name`: letters, digits, `_.-`, at most 64, starting with a letter or digit (the service's policy-name rule);",
        "- `latents`: SAE latent ids of the bundle it was computed on (ids differ between SAEs; the "
        "description names the bundle version and hash);",
        "- `strength` in [0, 1] (1 = remove the latents' terms, 0.5 = halve them); `mode`: `error` or `reconstruction`;",
        "- `description`: ≤ 500 characters, with the measured effect.",
        "",
        "The body minus `name` is a valid service `PolicyIn` (`latents`, `strength`, `mode`, `description`), so "
        "the service can import the file as policy `name`; `recsae.debias.load_policy(path)` reads and checks one.",
        "",
        "## Not done / caveats",
        "",
        "- The popularity target is not reached by latent suppression on these SAEs (see Summary for why); "
        "the decoder-bias diagnostic is not servable with the current policy format.",
        "- One recommender (SASRec) and one dataset (ml-100k); 943 test users, so NDCG@10 differences below "
        "~0.003 are within noise (one user's hit moves NDCG@10 by up to 0.001).",
        "- User-id bundles (BPR-MF, LightGCN) work through the same code, but their representation is the same at "
        "the dev and test stage.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
