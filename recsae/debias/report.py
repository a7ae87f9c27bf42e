"""The report: sweep tables, markdown sections and the files ``recsae debias`` writes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from recsae.debias.measures import COMPARATOR
from recsae.debias.plots import plot_tradeoff
from recsae.debias.policy import policy_json


# =============================================================================================
# Reporting
# =============================================================================================
def _f(v, digits=3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}"


def sweep_table(result: dict) -> str:
    """Markdown table of the sweep (test stage; dev-stage bias alongside)."""
    k = result["settings"]["top_k"]
    b0, n0 = result["base"]["test"]["bias"], result["base"]["test"]["ndcg"]
    extra = "mean pop" if result["bias"] == "popularity" else "gender AUC"
    ekey = "mean_popularity" if result["bias"] == "popularity" else "gender_auc"
    lines = [
        f"| method | n | strength | baseline | test {result['measure']['label']} | bias cut | test NDCG@{k} | "
        f"NDCG loss | test HR@{k} | {extra} | dev bias | re-rank bias at same NDCG |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = result["base"]["test"]
    lines.append(
        f"| original | 0 | - | - | {_f(b0)} | - | {_f(n0, 4)} | - | {_f(base['hr'], 4)} | "
        f"{_f(base.get(ekey), 3 if ekey == 'gender_auc' else 1)} | {_f(result['base']['dev']['bias'])} | - |"
    )
    order = {m: i for i, m in enumerate(("association", "greedy", "random", "baseline", "random-direction",
                                         "baseline+greedy", "random-direction+latents"))}
    for r in sorted(result["rows"], key=lambda r: (order.get(r["method"], 9), r["strength"], r["n"], r.get("baseline", 0))):
        t = r["test"]
        bias = _f(t["bias"]) + (f" ± {t['bias_std']:.3f}" if "bias_std" in t else "")
        strength = f"{r['strength']:g}" if r["n"] else "-"
        beta = f"{r['baseline']:g}" if r.get("baseline") else "-"
        lines.append(
            f"| {r['method']} | {r['n']} | {strength} | {beta} | {bias} | "
            f"{_drop(t['bias'], b0)} | {_f(t['ndcg'], 4)} | {_drop(t['ndcg'], n0)} | {_f(t['hr'], 4)} | "
            f"{_f(t.get(ekey), 3 if ekey == 'gender_auc' else 1)} | {_f(r['dev']['bias'])} | "
            f"{_f(r['rerank_bias_at_matched_ndcg'])} |"
        )
    return "\n".join(lines)


def _drop(v: float, base: float) -> str:
    """How much |v| fell below |base|, relative: +35.0% = a third lower. The same sign as the
    targets table's "cut" and "NDCG loss" (a figure reads the same in every table)."""
    return f"{(1 - abs(v) / abs(base)) * 100:+.1f}%" if base else "-"


def rerank_table(result: dict) -> str:
    k = result["settings"]["top_k"]
    b0, n0 = result["base"]["test"]["bias"], result["base"]["test"]["ndcg"]
    lines = [f"| lambda | test {result['measure']['label']} | bias cut | test NDCG@{k} | NDCG loss |",
             "|---:|---:|---:|---:|---:|"]
    for p in result["rerank"]:
        lines.append(f"| {p['lambda']:.3f} | {_f(p['bias'])} | {_drop(p['bias'], b0)} | {_f(p['ndcg'], 4)} | {_drop(p['ndcg'], n0)} |")
    return "\n".join(lines)


def baseline_markdown(result: dict) -> str:
    """Why the SAE's baseline (``b_dec``) is the popularity concept, in numbers."""
    e, ev = result.get("baseline_evidence"), result["evidence_summary"]
    if not e:
        return (f"Direct effect of the baseline b_dec on the bias' item contrast: {ev['decoder_bias_direct_effect']:+.3f}; "
                f"all latents together: {ev['latents_total_direct_effect']:+.3f}.")
    k = result["settings"]["top_k"]
    return "\n".join([
        f"- Rank correlation (Spearman, all items) between the baseline's score `b_dec · e_i` and the item's "
        f"training popularity: **{e['spearman_bdec_popularity']:+.3f}**. Of the {k} items `b_dec` alone scores "
        f"highest, {e['head_share_top_k_by_bdec']:.0%} are head items; of its top "
        f"{result['measure'].get('head_items', '|head|')}, {e['head_share_top_head_by_bdec']:.0%} (chance: "
        f"{e['head_fraction']:.0%}).",
        f"- Correlation alone does not single `b_dec` out: the item embeddings have a popularity axis, so "
        f"{e['latents_spearman_over_0_5']} of {e['latents_compared']} candidate latent directions also correlate "
        f"> 0.5 (most: #{e['most_aligned_latent']}, {e['most_aligned_spearman']:+.3f}) and "
        f"{e['latents_spearman_under_minus_0_5']} below −0.5 (#{e['most_opposed_latent']}, "
        f"{e['most_opposed_spearman']:+.3f}).",
        f"- What does single it out is weight and universality: `b_dec` is in every user's representation at full "
        f"weight (cosine with the mean dev-stage representation {e['cosine_bdec_mean_x']:+.3f}, norms "
        f"{e['bdec_norm']:.2f} vs {e['mean_x_norm']:.2f}), while the popularity-aligned latents fire for "
        f"{e['aligned_latents_mean_firing_rate']:.1%} of users on average. Head-minus-tail direct effect: `b_dec` "
        f"{e['direct_effect_bdec']:+.3f}; the aligned latents, weighted by their mean activation, "
        f"{e['direct_effect_aligned_latents']:+.3f}; all candidate latents together {e['direct_effect_all_latents']:+.3f}.",
    ])


def evidence_markdown(result: dict, limit: int = 16) -> str:
    gender = result["bias"] == "gender"
    contrast = "mean act F-M" if gender else "mean act (all)"
    rate = "firing rate F-M" if gender else "firing rate"
    direct = "direct effect F-M genres" if gender else "direct effect head-tail"
    lines = [
        f"| latent | assoc. rank | greedy rank | {rate} | {contrast} | {direct} | association | "
        "solo Δ|bias| (dev) | solo ΔNDCG (dev) | concept |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    rows = sorted(result["evidence"], key=lambda r: (r["greedy_rank"] or 999, r["association_rank"] or 999))
    for r in rows[:limit]:
        lines.append(
            f"| {r['latent']} | {r['association_rank'] or '-'} | {r['greedy_rank'] or '-'} | "
            f"{r['rate_contrast']:+.3f} | {r['contrast']:+.4f} | {r['direct_effect']:+.4f} | {r['association']:+.5f} | "
            f"{r['solo_bias']:+.4f} | {r['solo_ndcg']:+.4f} | {(r['description'] or '-')[:60]} |"
        )
    return "\n".join(lines)


def measure_markdown(result: dict) -> str:
    m = result["measure"]
    if result["bias"] == "popularity":
        return (
            f"Head items: the {m['head_items']} most popular items (top {m['head_fraction']:.0%} by training "
            f"interactions; they hold {m['head_share_of_training_interactions']:.1%} of the training interactions)."
            + ("" if "target_head_share" not in result else
               " Held-out targets that are head items: " + ", ".join(
                   f"{stage} {v:.1%}" for stage, v in result["target_head_share"].items())
               + " — the stages differ, so a point chosen on dev is also checked by choosing on half the test users.")
        )
    return (
        f"Female-leaning genres: {', '.join(m['female_genres'])}; male-leaning: {', '.join(m['male_genres'])} "
        f"(training-interaction shares F/M: "
        + ", ".join(f"{g} {m['share_female'][g]:.3f}/{m['share_male'][g]:.3f}" for g in m["female_genres"] + m["male_genres"])
        + f"). {m['female_users']} female, {m['male_users']} male users. The same gap measured on the users' "
        f"training histories is {m['gap_in_training_histories']:+.3f}."
    )


def _point_text(pt: dict) -> str:
    parts = ([f"n={pt['n']}, strength {pt['strength']:g}"] if pt["n"] else []) + (
        [f"baseline β={pt['baseline']:g}"] if pt.get("baseline") else [])
    return ", ".join(parts) or "nothing"


def targets_markdown(result: dict) -> str:
    """The targets as one table (a row per method) and the rules behind its columns."""
    t = result["targets"]
    pop = result["bias"] == "popularity"
    lim, goal = t["max_ndcg_loss"], t["min_cut"]

    def cell(cut: float, loss: float | None, ci: list[float] | None = None) -> str:
        return f"{cut:+.1%} at {loss:+.1%}" + (f" ({ci[0]:+.1%}…{ci[1]:+.1%})" if ci else "") if loss is not None else "—"

    def crossfit_cell(cf: dict | None) -> str:
        if not cf:
            return "—"
        first = " / ".join(_point_text(p) if p else "nothing" for p in cf["repeats"][0]["points"])
        return (f"{cf['cut']:+.1%} at {cf['ndcg_loss']:+.1%} (losses {cf['ndcg_loss_range'][0]:+.1%}…"
                f"{cf['ndcg_loss_range'][1]:+.1%}; e.g. {first}){' ✔' if cf['cut_target_met'] else ''}")

    head = ("| method | best test point within the limit (cut at NDCG loss, 95% CI) | below the comparator | "
            f"below re-ranking at the same NDCG | lowest bias within {lim:.0%} loss, chosen on dev → test | … chosen on "
            f"half the test users → the other half | least loss cutting ≥{goal:.0%}, chosen on dev → test | … chosen on "
            "half the test users → the other half |\n|---|---|---|---|---|---|---|---|")
    rows = [head]

    def dev_cell(dev: dict | None) -> str:
        return (f"{_point_text(dev)}: {cell(dev['test_cut'], dev['test_ndcg_loss'], dev.get('test_ndcg_loss_ci95'))}"
                f"{' ✔' if dev['cut_target_met'] else ''}") if dev else "no such point on dev"

    for method in COMPARATOR:
        if method not in t:
            continue
        x = t[method]
        pt, cf = x["best_point"], x.get("crossfit") or {}
        best = (f"{_point_text(pt)}: {cell(x['best_cut_within_loss'], x['best_ndcg_loss'], x.get('best_ndcg_loss_ci95'))}"
                f"{' ✔' if x['cut_target_met'] else ''}") if pt else "—"
        rows.append(
            f"| {method} | {best} | {x['beats_random_points']} vs {x['comparator']}"
            f"{' (**every point**)' if x['beats_random_everywhere'] else ''} | {x['beats_rerank_at_matched_ndcg_points']} | "
            f"{dev_cell(x['dev_choice'])} | {crossfit_cell(cf.get('max_cut'))} | "
            f"{dev_cell(x.get('dev_choice_min_loss'))} | {crossfit_cell(cf.get('min_loss'))} |"
        )
    rr = t["rerank"]
    target = (f"Target: cut the {result['measure']['label']} by ≥{goal:.0%} at ≤{lim:.0%} NDCG@{result['settings']['top_k']} loss "
              "(✔ = met)" if pop else f"Yardstick (the popularity target's): ≥{goal:.0%} cut at ≤{lim:.0%} NDCG loss (✔ = reached)")
    return (
        f"{target}; the post-hoc re-ranking baseline's best test cut within {lim:.0%} loss: "
        f"{rr['best_cut_within_loss']:+.1%}.\n\n" + "\n".join(rows) + "\n\n"
        "Columns: the best point of the test sweep is the target as stated (reported, not chosen blind); the "
        "comparator columns count sweep points with lower |bias|. The last four are chosen blind, by two rules "
        "(the saved policy's: `--target-cut` picks the second): on the dev stage, and on one half of the test users "
        "with the choice applied to the other half, both ways, averaged over "
        f"{next((c['splits'] for x in t.values() if isinstance(x, dict) for c in (x.get('crossfit') or {}).values()), 0)} "
        "random halvings (the loss range is over those halvings)."
    )


def render_section(result: dict, plot_rel: str) -> str:
    """One bias' section of the report (markdown)."""
    s = result["settings"]
    ev = result["evidence_summary"]
    src = result.get("source", {})
    parts = [
        f"## {result['bias'].capitalize()} bias",
        "",
        f"Bundle `{src.get('bundle')}` (version {src.get('version')}), {s['test_users']} test users; "
        f"latents and baseline strengths picked on the {s['select_stage']} stage ({s['select_users']} users) from "
        f"{result['pool_size']} candidates firing for ≥{s['min_freq']:.1%} of them; mode `{s['mode']}`; random = mean of "
        f"{s['seeds']} draws (latents from the same candidates; directions of the same norm as β·b_dec)"
        + (f"; baseline+greedy = baseline β={result['combined']['baseline']:g} (chosen on dev) plus latents picked "
           "greedily on top of it" if result.get("combined") else "") + ".",
        "",
        measure_markdown(result),
        "",
        "### Targets",
        "",
        targets_markdown(result),
        "",
        f"![{result['bias']} trade-off]({plot_rel})",
        "",
        "### Sweep (test stage)",
        "",
        "`bias cut` and `NDCG loss` are relative to the original model, + = lower (the targets table's sign).",
        "",
        sweep_table(result),
        "",
        "### Re-ranking baseline (test stage)",
        "",
        rerank_table(result),
        "",
        "### Candidate latents (dev-stage evidence)",
        "",
        f"Latents that reduce the bias when suppressed alone: {ev['latents_reducing_bias_alone']} of "
        f"{result['pool_size']}; the sum of all their solo reductions is {ev['sum_of_negative_solo_bias']:+.4f} "
        f"(best single latent {ev['best_solo_bias']:+.4f}) against a dev-stage bias of "
        f"{result['base']['dev']['bias']:+.4f}. Direct effect of the SAE decoder bias b_dec: "
        f"{ev['decoder_bias_direct_effect']:+.3f}; all latents together (Σ_j contrast_j × direct effect_j): "
        f"{ev['latents_total_direct_effect']:+.3f}.",
        "",
        evidence_markdown(result),
        "",
        "### The baseline: what all users share (the SAE decoder bias b_dec)",
        "",
        baseline_markdown(result),
        "",
    ]
    return "\n".join(parts)


def write_outputs(result: dict, out_dir: str | Path, policy: dict | None = None,
                  chosen: dict | None = None) -> dict[str, Path]:
    """Write ``<out>/debias-<bias>.json``, ``tradeoff-<bias>.png`` and ``report-<bias>.md``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    b = result["bias"]
    png = plot_tradeoff(result, out / f"tradeoff-{b}.png", chosen)
    js = out / f"debias-{b}.json"
    js.write_text(json.dumps(result, indent=1, default=_json_default))
    md = out / f"report-{b}.md"
    text = f"# De-biasing by suppressing SAE latents and the baseline: {b}\n\n" + render_section(result, png.name)
    if policy is not None:
        text += "\n### Chosen policy (dev stage)\n\n```json\n" + policy_json(policy) + "\n```\n"
    md.write_text(text)
    return {"json": js, "plot": png, "report": md}


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
