"""``recsae`` command line: train, interpret, fetch, info, serve.

Errors a user can act on (``RecSAEError``) print one line and exit 2; nothing else is caught.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from recsae import RecSAEError

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"


def default_data_dir() -> str | None:
    env = os.environ.get("RECSAE_DATA_DIR")
    if env:
        return env
    return str(DEFAULT_DATA_DIR) if DEFAULT_DATA_DIR.is_dir() else None


def resolve_dataset(name: str, data_dir: str | None) -> str:
    """``auto``: the real ml-100k when it is on disk, else the embedded synthetic dataset."""
    if name != "auto":
        return name
    if data_dir and (Path(data_dir) / "ml-100k" / "u.data").is_file():
        return "ml-100k"
    return "synthetic"


def _parse_kv(items: list[str]) -> dict:
    out = {}
    for it in items or []:
        if "=" not in it:
            raise RecSAEError(f"expected KEY=VALUE, got {it!r}")
        k, v = it.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


# Named SAE shapes (k, expansion, epochs): "paper" is the RecSAE paper's setting and the default
# (8 concepts per explanation, a 35 s SAE stage on ml-100k, ~97% of NDCG@10 with the
# reconstruction in the path); "balanced" keeps 99% of it on ml-100k at the same training time,
# with 16 concepts per explanation; "fidelity" 99.5% for 2.5-3.5 min of SAE training. Other data
# keeps less (Grocery: 84% / 90% / 95%): figures, not promises (README, "Defaults"); the quality
# search climbs these presets when the first falls short.
SAE_PRESETS = {"paper": (8, 16, 60), "balanced": (16, 16, 60), "fidelity": (32, 32, 120)}


def sae_shape(a: argparse.Namespace) -> tuple[int, int, int]:
    """(k, expansion, epochs): the preset's, each overridden by its explicit flag."""
    k, expansion, epochs = SAE_PRESETS[a.sae_preset]
    return (
        k if a.k is None else a.k,
        expansion if a.expansion is None else a.expansion,
        epochs if a.sae_epochs is None else a.sae_epochs,
    )


def parse_duration(text: str) -> float:
    """Seconds from ``600``, ``90s``, ``10m``, ``1.5h``; ``0`` or ``off`` is 0 (no quality search)."""
    t = text.strip().lower()
    if t in ("off", "none", "no"):
        return 0.0
    scale = {"s": 1, "m": 60, "h": 3600}.get(t[-1:], None)
    try:
        value = float(t[:-1] if scale else t) * (scale or 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give seconds (600), minutes (10m), hours (1h), or off") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: the budget must be a finite time >= 0")
    return value


def cmd_train(a: argparse.Namespace) -> int:
    from recsae.pipeline import JobConfig, run_job

    data_dir = a.data_dir or default_data_dir()
    k, expansion, sae_epochs = sae_shape(a)
    cfg = JobConfig(
        dataset=resolve_dataset(a.dataset, data_dir),
        data_dir=data_dir,
        min_rating=a.min_rating,
        kcore=a.kcore,
        model=a.model,
        model_params=_parse_kv(a.model_param),
        train_params=_parse_kv(a.train_param),
        expansion=expansion,
        k=k,
        sae_epochs=sae_epochs,
        describer=a.describer,
        llm=_parse_kv(a.llm),
        seed=a.seed,
        threads=a.threads,
        progress=not a.quiet,
        min_fidelity=a.min_fidelity,
        sae_reserve=a.sae_reserve,
        sae_encoder=a.sae_encoder,
        quality_budget=a.quality_budget,
    )
    res = run_job(cfg, a.out, a.work_dir)
    print_summary(res.summary)
    if a.json:
        Path(a.json).write_text(json.dumps(res.summary, indent=2, default=str))
    return 0


def print_summary(s: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    c = Console()
    t = Table(title=f"bundle {s['bundle']}  (version {s['version']})")
    t.add_column("what")
    t.add_column("value", justify="right")
    rec = s["recommender"].get("test", {})
    for m in ("HR@10", "NDCG@10", "NDCG@20"):
        if m in rec:
            t.add_row(f"recommender test {m}", f"{rec[m]:.4f}")
    sae = s["sae"]
    for part in ("train", "heldout"):
        if part in sae:
            t.add_row(f"SAE {part} FVU", f"{sae[part]['fvu']:.4f}")
            t.add_row(f"SAE {part} dead latents", f"{sae[part]['dead_ratio']:.1%}")
    t.add_row("SAE seconds / epoch", f"{sae['seconds_per_epoch']:.3f}")
    q = s.get("quality") or {}
    # every fidelity measure, worst first: the gate reads the first
    t.add_row(f"SAE keeps (worst first; warns below {q.get('bar', 0.9):.2f})", "")
    for m in q.get("measures", []):
        ci = m.get("ci95")
        t.add_row(f"  {m['what']}", f"{m['value']:.3f}" + (f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else ""))
    search = s.get("sae_search") or {}
    if search.get("budget_s"):
        t.add_row(f"quality search: {search['target']['text']}",
                  f"{search['spent_s']:.0f} of {search['budget_s']:.0f} s")
        for i, r in enumerate(search["trials"]):
            mark = " <- bundle" if i == search["chosen"] else ""
            what = (f"NDCG kept {r['ndcg10_kept']:.3f}, FVU {r['fvu']:.3f}" if "fvu" in r else r.get("stopped", ""))
            t.add_row(f"  k={r['k']} x {r['n_latents']:,}, {r['epochs']} epochs{' (cached)' if r['cached'] else ''}{mark}",
                      f"{what}, {r['seconds']:.0f} s")
    t.add_row("ONNX vs PyTorch max abs diff", f"{s['onnx_max_abs_diff']:.2e}")
    for k, v in (s.get("concepts") or {}).items():
        if isinstance(v, (int, float)):
            t.add_row(f"concepts {k}", f"{v:.3f}" if isinstance(v, float) else str(v))
    for k, v in s["timings_s"].items():
        t.add_row(f"time {k} (s)", f"{v:.1f}")
    c.print(t)
    if search.get("budget_s") and search.get("met"):
        c.print(f"quality search: {search['why']}", highlight=False)
    for w in (s.get("quality") or {}).get("warnings", []):
        c.print(f"[yellow]warning:[/yellow] {w}", highlight=False)


def cmd_info(a: argparse.Namespace) -> int:
    from recsae.bundle import verify_bundle

    m = verify_bundle(a.bundle)
    print(json.dumps({k: m[k] for k in ("version", "bundle_hash", "model", "sae", "metrics")}, indent=2, default=str))
    return 0


def cmd_fetch(a: argparse.Namespace) -> int:
    from recsae.data.fetch import fetch_movielens

    path = fetch_movielens(a.name, a.dest, base_url=a.base_url) if a.base_url else fetch_movielens(a.name, a.dest)
    print(path)
    return 0


def cmd_interpret(a: argparse.Namespace) -> int:
    from recsae.interpret import reinterpret_bundle

    summary = reinterpret_bundle(
        a.bundle, describer=a.describer, data_dir=a.data_dir or default_data_dir(), llm=_parse_kv(a.llm) or None
    )
    print(json.dumps(summary, indent=2))
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    """Build a bundle when none exists, then ``bentoml serve`` the service on it."""
    bundle = Path(a.bundle)
    if not (bundle / "manifest.json").exists():
        print(f"no bundle at {bundle}: building one (dataset {a.dataset})", file=sys.stderr)
        ns = build_parser().parse_args(["train", "--dataset", a.dataset, "--out", str(bundle)])
        cmd_train(ns)
    env = dict(os.environ, RECSAE_BUNDLE=str(bundle.resolve()), BENTOML_DO_NOT_TRACK="True")
    args = [sys.executable, "-m", "bentoml", "serve", "service.service:RecSAEService",
            "--host", a.host, "--port", str(a.port)]
    root = Path(__file__).resolve().parents[1]
    os.chdir(root)
    os.execvpe(args[0], args, env)
    return 0  # pragma: no cover


def cmd_debias(a: argparse.Namespace) -> int:
    """Sweep latent and baseline suppression against a bias, write report + plot, optionally save a policy."""
    from recsae import ConfigError
    from recsae import debias as D

    def floats(text: str, what: str) -> list[float]:
        try:
            return [float(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise ConfigError(f"--{what} expects comma-separated numbers, got {text!r}") from None

    if a.target_cut is not None and not 0 < a.target_cut <= 1:
        raise ConfigError(f"--target-cut {a.target_cut}: give the wanted relative cut in (0, 1], e.g. 0.33")
    if a.save_policy and not D.POLICY_NAME.match(a.save_policy):
        raise ConfigError(f"--save-policy {a.save_policy!r}: use letters, digits, '_.-' (at most 64)")
    if a.save_policy:
        D.check_policy_dir(a.policy_dir)
    say = (lambda s: None) if a.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    data = D.load_data(a.bundle, a.data_dir or default_data_dir())
    result = D.run_experiment(
        data, a.bias, counts=[int(c) for c in floats(a.counts, "counts")],
        strengths=floats(a.strengths, "strengths") if a.strengths else
        list(D.RESERVED_STRENGTHS if data.source.get("sae_reserve") else D.DEFAULT_STRENGTHS),
        mode=a.mode, seeds=a.seeds, min_freq=a.min_freq, max_ndcg_loss=a.max_ndcg_loss, progress=say,
        baseline_strengths=floats(a.baseline_strengths, "baseline-strengths"),
        methods=D.METHODS if a.baseline_strengths.strip() else D.LATENT_METHODS,
    )
    point = D.choose_policy(result, a.method, a.max_ndcg_loss, a.target_cut)
    doc = D.policy_document(a.save_policy or f"debias-{a.bias}", point, result)
    paths = D.write_outputs(result, a.out, doc)
    print(D.sweep_table(result))
    print()
    print(D.targets_markdown(result))
    print()
    sel = result["settings"]["select_stage"]
    print(f"chosen on the {sel} stage ({a.method} -> {point['method']}, {point['rule']}): "
          f"{len(point['latents'])} latents at strength {point['strength']:g}: {point['latents']}; "
          f"baseline {point['baseline']:g}")
    if a.target_cut is None and (warn := D.budget_edge_warning(result, point, a.max_ndcg_loss)):
        print(f"warning: {warn}", file=sys.stderr)
    if not point["improves"]:
        print(f"warning: no {a.method} point lowers the {sel}-stage bias within the NDCG budget", file=sys.stderr)
    if a.save_policy:
        path = D.save_policy(doc, a.policy_dir)
        print(f"policy written to {path}")
    print(f"report: {paths['report']}  plot: {paths['plot']}  results: {paths['json']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="recsae", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="dataset -> recommender -> SAE -> concepts -> bundle")
    t.add_argument("--dataset", default="auto", help="ml-100k, ml-1m, ml-latest-small, grocery, synthetic, a folder, or auto")
    t.add_argument("--data-dir", default=None, help="folder holding the datasets (default: ../shared/data or $RECSAE_DATA_DIR)")
    t.add_argument("--min-rating", type=float, default=None, help="keep ratings >= this as interactions (default: all)")
    t.add_argument("--kcore", type=int, default=0)
    t.add_argument("--model", default="sasrec", choices=["sasrec", "bprmf", "lightgcn"])
    t.add_argument("--model-param", action="append", default=[], metavar="KEY=VALUE")
    t.add_argument("--train-param", action="append", default=[], metavar="KEY=VALUE")
    t.add_argument("--sae-preset", default="paper", choices=sorted(SAE_PRESETS), help=(
        "SAE shape: paper = k 8 of 1,024 latents, 60 epochs (default); balanced = k 16 of 1,024, "
        "60 epochs (99%% of NDCG@10 kept on ml-100k, 90%% on Grocery); fidelity = k 32 of "
        "2,048, 120 epochs (99.5%% on ml-100k)"))
    t.add_argument("--expansion", type=int, default=None, help="latents = expansion x d (overrides the preset)")
    t.add_argument("-k", "--k", type=int, default=None, help="active latents per sample (overrides the preset)")
    t.add_argument("--sae-epochs", type=int, default=None, help="SAE epochs (overrides the preset)")
    t.add_argument("--sae-encoder", default="topk", choices=["topk", "pursuit"], help=(
        "how the bundle encodes at inference: topk = the trained encoder (default); pursuit = "
        "matching pursuit over the same decoder, k latents still: keeps more of the model (k=8 on "
        "ml-100k: 98.5%% of NDCG@10 instead of 97.3%%) for ~0.3 ms more per request"))
    t.add_argument("--sae-reserve", default=None, choices=["popularity"], help=(
        "reserve latent 0 for this direction and keep it out of every other latent and of the "
        "decoder bias, so suppressing latent 0 removes it (popularity: the direction that raises "
        "the 20%% most popular items' scores)"))
    t.add_argument("--describer", default="stats", choices=["stats", "llm", "none"])
    t.add_argument("--llm", action="append", default=[], metavar="KEY=VALUE", help=(
        "LLM describer setting, repeatable: base_url=http://host:8000/v1, model=NAME, concurrency=N, "
        "temperature=0, api_key_env=VAR, price_input_per_1m=USD ... (the API key itself is read from $OPENAI_API_KEY "
        "or the variable named by api_key_env, never from the command line)"))
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--out", default="bundles/default")
    t.add_argument("--work-dir", default=None, help="cache of finished stages (default: next to --out)")
    t.add_argument("--json", default=None, help="also write the summary here")
    t.add_argument("--min-fidelity", type=float, default=None, metavar="RATIO", help=(
        "fail (exit 2, no bundle) when NDCG@10 with the SAE's reconstruction in the path is below "
        "this share of the model's, e.g. 0.95; without it, a low figure is only a warning"))
    t.add_argument("--quality-budget", type=parse_duration, default=600.0, metavar="TIME", help=(
        "when the SAE keeps < 95%% of NDCG@10 (held-out rows) or held-out FVU > 0.10, train larger "
        "ones (k doubled, then more latents and epochs) on the cached activations until one does, "
        "for at most this long: 600 (seconds), 10m, 1h; 0 or off = the SAE exactly as asked "
        "(default 10m)"))
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=cmd_train)

    i = sub.add_parser("info", help="verify a bundle and print its manifest summary")
    i.add_argument("bundle")
    i.set_defaults(func=cmd_info)

    f = sub.add_parser("fetch", help="download a MovieLens dataset (checksum-verified)")
    f.add_argument("name", choices=["ml-100k", "ml-1m", "ml-latest-small"])
    f.add_argument("--dest", default="data")
    f.add_argument("--base-url", default=None)
    f.set_defaults(func=cmd_fetch)

    it = sub.add_parser("interpret", help="(re)describe the latents of a bundle")
    it.add_argument("bundle")
    it.add_argument("--describer", default="stats", choices=["stats", "llm"])
    it.add_argument("--llm", action="append", default=[], metavar="KEY=VALUE", help=(
        "LLM describer setting, repeatable: base_url=http://host:8000/v1, model=NAME, concurrency=N, "
        "temperature=0, api_key_env=VAR, price_input_per_1m=USD ... (the API key itself is read from $OPENAI_API_KEY "
        "or the variable named by api_key_env, never from the command line)"))
    it.add_argument("--data-dir", default=None)
    it.set_defaults(func=cmd_interpret)

    s = sub.add_parser("serve", help="serve a bundle with BentoML (building one if missing)")
    s.add_argument("--bundle", default="bundles/default")
    s.add_argument("--dataset", default="auto")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=3000)
    s.set_defaults(func=cmd_serve)

    d = sub.add_parser("debias", help="find latents carrying a bias, sweep their (and the baseline's) suppression, save a policy")
    d.add_argument("bundle")
    d.add_argument("--bias", default="popularity", choices=["popularity", "gender"])
    d.add_argument("--data-dir", default=None, help="folder holding the bundle's dataset (default: ../shared/data, $RECSAE_DATA_DIR, or the manifest's)")
    d.add_argument("--counts", default="1,2,4,8,16,32", help="numbers of suppressed latents to sweep")
    d.add_argument("--strengths", default=None, help=(
        "suppression strengths to sweep, in [0, 1] (default 0.5,1.0; 0.1 to 1.0, in steps of 0.05 between 0.3 and 0.7, for a bundle "
        "trained with --sae-reserve)"))
    d.add_argument("--baseline-strengths", default="0.1,0.2,0.3,0.4,0.5",
                   help="baseline (SAE decoder bias: what all users share, chiefly popularity) suppression "
                        "strengths to sweep, in (0, 1]; empty = latents only")
    d.add_argument("--mode", default="error", choices=["error", "reconstruction"])
    d.add_argument("--seeds", type=int, default=5, help="random-latent draws per sweep point")
    d.add_argument("--min-freq", type=float, default=0.005, help="candidates fire for at least this share of dev-stage users")
    d.add_argument("--max-ndcg-loss", type=float, default=0.10, help="relative dev NDCG@10 loss allowed (greedy selection and policy choice)")
    d.add_argument("--method", default="best", choices=["best", "greedy", "association", "baseline", "baseline+greedy"],
                   help="method the saved policy uses; best = lowest dev-stage bias within the NDCG budget among "
                        "greedy, baseline, baseline+greedy")
    d.add_argument("--target-cut", type=float, default=None, metavar="FRACTION",
                   help="choose the policy as the dev point with the least NDCG loss that cuts the bias by at least "
                        "FRACTION (e.g. 0.33) instead of the lowest bias within --max-ndcg-loss")
    d.add_argument("--out", default="debias-report", help="folder for report-<bias>.md, tradeoff-<bias>.png, debias-<bias>.json")
    d.add_argument("--save-policy", default=None, metavar="NAME", help="write the chosen suppression to <policy-dir>/NAME.json")
    d.add_argument("--policy-dir", default="policies", help="where policies go (not inside the bundle: bundles are hash-verified)")
    d.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    d.set_defaults(func=cmd_debias)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except RecSAEError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
