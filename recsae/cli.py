"""``recsae`` command line: train, interpret, fetch, info, serve, debias.

Errors a user can act on (``RecSAEError``) print one line and exit 2; nothing else is caught.
Input that can be checked without torch (dataset name and folder, option ranges) is checked
before the heavy imports, so a typo fails in a fraction of a second and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from recsae import BundleError, ConfigError, RecSAEError, cpu_share

DESCRIPTION = """\
Train a TopK sparse autoencoder (SAE) on a recommender's user representation, describe each
latent as a concept, and serve recommendations with explanations and run-time suppression.

Datasets are read from the data folder: $RECSAE_DATA_DIR if set, else ../shared/data next to the
repository if it exists, else ~/.cache/recsae/data (where `recsae fetch` writes). Run
`recsae COMMAND --help` for a command's options and an example."""

EXAMPLES = """\
examples:
  recsae fetch ml-100k                      # download MovieLens-100k into the data folder
  recsae train --dataset ml-100k --out bundles/ml100k
  recsae serve --bundle bundles/ml100k      # http://127.0.0.1:3000/recommend?user_id=1&explain=true"""


def default_data_dir() -> str:
    """The data folder when ``--data-dir`` is not given (see :func:`recsae.data.loaders.default_data_dir`)."""
    from recsae.data.loaders import default_data_dir as _default

    return str(_default())


def check_bundle_path(path: str) -> None:
    """A missing bundle is refused before the command imports its (heavy) job modules."""
    if not (Path(path) / "manifest.json").is_file():
        raise BundleError(f"no bundle at {path} (no manifest.json): build one with `recsae train --out {path}`")


def _bundle_data_dir(given: str | None) -> str | None:
    """For commands that re-read a bundle's dataset: the flag, else the default folder if it
    exists, else None (the folder recorded in the bundle's manifest)."""
    if given:
        return given
    d = default_data_dir()
    return d if Path(d).is_dir() else None


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
# reconstruction in the path); "balanced" keeps >= 98% of it at the same training time, with 16
# concepts per explanation; "fidelity" keeps >= 99% for 2.5-3.5 min of SAE training (README,
# "Defaults").
SAE_PRESETS = {"paper": (8, 16, 60), "balanced": (16, 16, 60), "fidelity": (32, 32, 120)}


def sae_shape(a: argparse.Namespace) -> tuple[int, int, int]:
    """(k, expansion, epochs): the preset's, each overridden by its explicit flag."""
    k, expansion, epochs = SAE_PRESETS[a.sae_preset]
    return (
        k if a.k is None else a.k,
        expansion if a.expansion is None else a.expansion,
        epochs if a.sae_epochs is None else a.sae_epochs,
    )


def check_train_input(a: argparse.Namespace) -> tuple[str, str]:
    """(dataset, data folder) after checking what can be checked without torch; raises the
    ``RecSAEError`` that the job would raise later, before any folder is created."""
    from recsae.data.loaders import locate_dataset

    data_dir = a.data_dir or default_data_dir()
    dataset = resolve_dataset(a.dataset, data_dir)
    locate_dataset(dataset, data_dir, a.min_rating, a.kcore)
    if a.min_fidelity is not None and not 0 < a.min_fidelity <= 1:
        raise ConfigError(f"--min-fidelity {a.min_fidelity:g} must be in (0, 1]: the share of NDCG@10 the SAE must keep")
    for flag, value in (("--expansion", a.expansion), ("-k", a.k), ("--sae-epochs", a.sae_epochs)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} {value}: give a whole number >= 1")
    _parse_kv(a.model_param), _parse_kv(a.train_param), _parse_kv(a.llm)
    return dataset, data_dir


def cmd_train(a: argparse.Namespace) -> int:
    dataset, data_dir = check_train_input(a)
    from recsae.pipeline import JobConfig, run_job

    k, expansion, sae_epochs = sae_shape(a)
    threads = cpu_share() if a.threads == "auto" else a.threads
    if a.threads == "auto":
        print(f"--threads auto: {threads} (CPUs usable now, less the load average)", file=sys.stderr)
    cfg = JobConfig(
        dataset=dataset,
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
        threads=threads,
        progress=not a.quiet,
        min_fidelity=a.min_fidelity,
        sae_reserve=a.sae_reserve,
        sae_encoder=a.sae_encoder,
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
    fid = s["fidelity"]
    ci = fid.get("ndcg10_ratio_reconstruction_ci95")
    t.add_row("NDCG@10 with reconstruction / original",
              f"{fid['ndcg10_ratio_reconstruction']:.3f}" + (f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else ""))
    if fid.get("heldout_ndcg10_ratio_reconstruction") is not None:
        hci = fid["heldout_ndcg10_ratio_reconstruction_ci95"]
        t.add_row(f"  the same, all {fid['heldout_rows']:,} held-out rows",
                  f"{fid['heldout_ndcg10_ratio_reconstruction']:.3f} (95% CI {hci[0]:.3f}-{hci[1]:.3f})")
    if fid.get("ndcg10_ratio_reconstruction_sampled99") is not None:
        t.add_row("  the same, 99 sampled negatives", f"{fid['ndcg10_ratio_reconstruction_sampled99']:.3f}")
    t.add_row("ONNX vs PyTorch max abs diff", f"{s['onnx_max_abs_diff']:.2e}")
    for k, v in (s.get("concepts") or {}).items():
        if isinstance(v, (int, float)):
            t.add_row(f"concepts {k}", f"{v:.3f}" if isinstance(v, float) else str(v))
    for k, v in s["timings_s"].items():
        t.add_row(f"time {k} (s)", f"{v:.1f}")
    c.print(t)
    for w in (s.get("quality") or {}).get("warnings", []):
        c.print(f"[yellow]warning:[/yellow] {w}", highlight=False)


def cmd_info(a: argparse.Namespace) -> int:
    check_bundle_path(a.bundle)
    from recsae.bundle import verify_bundle

    m = verify_bundle(a.bundle)
    print(json.dumps({k: m[k] for k in ("version", "bundle_hash", "model", "sae", "metrics")}, indent=2, default=str))
    return 0


def cmd_fetch(a: argparse.Namespace) -> int:
    from recsae.data.fetch import fetch_movielens

    from recsae.data.fetch import MARKER
    from recsae.data.loaders import locate_dataset

    dest = a.dest or default_data_dir()
    target = Path(dest) / a.name
    if target.is_dir() and not (target / MARKER).exists() and not a.force:
        try:  # a copy put there by hand (e.g. a shared licensed one): use it, never overwrite it
            locate_dataset(a.name, dest)
            print(f"{a.name} is already in {target} (not downloaded by recsae): nothing to fetch", file=sys.stderr)
            print(target)
            return 0
        except RecSAEError:
            pass  # not a usable copy: fetch_movielens says what to do
    kw = {"base_url": a.base_url} if a.base_url else {}
    path = fetch_movielens(a.name, dest, force=a.force, progress=not a.quiet, **kw)
    print(path)
    return 0


def cmd_interpret(a: argparse.Namespace) -> int:
    check_bundle_path(a.bundle)
    _parse_kv(a.llm)
    from recsae.interpret import reinterpret_bundle

    summary = reinterpret_bundle(
        a.bundle, describer=a.describer, data_dir=_bundle_data_dir(a.data_dir), llm=_parse_kv(a.llm) or None
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

    check_bundle_path(a.bundle)
    if a.target_cut is not None and not 0 < a.target_cut <= 1:
        raise ConfigError(f"--target-cut {a.target_cut}: give the wanted relative cut in (0, 1], e.g. 0.33")
    if a.save_policy and not D.POLICY_NAME.match(a.save_policy):
        raise ConfigError(f"--save-policy {a.save_policy!r}: use letters, digits, '_.-' (at most 64)")
    if a.save_policy:
        D.check_policy_dir(a.policy_dir)
    say = (lambda s: None) if a.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    data = D.load_data(a.bundle, _bundle_data_dir(a.data_dir))
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


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' line breaks and appends each option's default unless its help names one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        d = action.default
        if "default" in text or d is None or d is False or d == [] or d == argparse.SUPPRESS or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def _threads(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number >= 1, or auto")
    return n


def _port(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if not 0 < n < 65536:
        raise argparse.ArgumentTypeError(f"{text!r}: give a TCP port in 1-65535")
    return n


def _sub(sub, name: str, help: str, example: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=help[:1].upper() + help[1:] + ".",
                          epilog=f"example:\n  {example}", formatter_class=_HelpFormatter)


LLM_HELP = (
    "LLM describer setting, repeatable: base_url=http://host:8000/v1, model=NAME, concurrency=N, "
    "temperature=0, api_key_env=VAR, price_input_per_1m=USD ... (the API key itself is read from $OPENAI_API_KEY "
    "or the variable named by api_key_env, never from the command line)")
DATA_DIR_HELP = ("folder holding the datasets (default: $RECSAE_DATA_DIR, else ../shared/data next to the "
                 "repository if present, else ~/.cache/recsae/data)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="recsae", description=DESCRIPTION, epilog=EXAMPLES, formatter_class=_HelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="log what each stage does (INFO level)")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    t = _sub(sub, "train", "dataset -> recommender -> SAE -> concepts -> bundle",
             "recsae train --dataset ml-100k --model sasrec --sae-preset balanced --out bundles/ml100k")
    t.add_argument("--dataset", default="auto", help=(
        "ml-100k, ml-1m, ml-latest-small, grocery, synthetic, a dataset folder, or auto = ml-100k when "
        "the data folder has it, else synthetic (default: auto)"))
    t.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    t.add_argument("--min-rating", type=float, default=None, help="keep ratings >= this as interactions (default: all)")
    t.add_argument("--kcore", type=int, default=0, help="drop users and items with fewer interactions than this, repeatedly (0 = keep all)")
    t.add_argument("--model", default="sasrec", choices=["sasrec", "bprmf", "lightgcn"], help="recommender to train")
    t.add_argument("--model-param", action="append", default=[], metavar="KEY=VALUE",
                   help="recommender setting, repeatable, e.g. dim=64 (see models/)")
    t.add_argument("--train-param", action="append", default=[], metavar="KEY=VALUE",
                   help="recommender training setting, repeatable, e.g. epochs=50 or lr=1e-3 (see models/training.py)")
    t.add_argument("--sae-preset", default="paper", choices=sorted(SAE_PRESETS), help=(
        "SAE shape: paper = k 8 of 1,024 latents, 60 epochs (default); balanced = k 16 of 1,024, "
        "60 epochs, >= 98%% of NDCG@10 with the reconstruction in the path; fidelity = k 32 of "
        "2,048, 120 epochs, >= 99%%"))
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
        "the 20%% most popular items' scores; default: none)"))
    t.add_argument("--describer", default="stats", choices=["stats", "llm", "none"],
                   help="how latents get names: stats = from item features, llm = an OpenAI-compatible model, none")
    t.add_argument("--llm", action="append", default=[], metavar="KEY=VALUE", help=LLM_HELP)
    t.add_argument("--seed", type=int, default=0, help="random seed of the recommender and the SAE")
    t.add_argument("--threads", type=_threads, default=1, metavar="N|auto", help=(
        "torch intra-op threads for training; more than the CPUs this job really gets slows it down "
        "on a busy machine; auto = the CPUs it may use less the current load average (at least 1)"))
    t.add_argument("--out", default="bundles/default", help="bundle folder to write")
    t.add_argument("--work-dir", default=None, help="cache of finished stages (default: .recsae-work next to --out)")
    t.add_argument("--json", default=None, help="also write the summary here")
    t.add_argument("--min-fidelity", type=float, default=None, metavar="RATIO", help=(
        "fail (exit 2, no bundle) when NDCG@10 with the SAE's reconstruction in the path is below "
        "this share of the model's, e.g. 0.95; without it, a low figure is only a warning"))
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=cmd_train)

    i = _sub(sub, "info", "verify a bundle and print its manifest summary", "recsae info bundles/default")
    i.add_argument("bundle", help="bundle folder (holds manifest.json)")
    i.set_defaults(func=cmd_info)

    f = _sub(sub, "fetch", "download a MovieLens dataset (checksum-verified) into the data folder",
             "recsae fetch ml-100k && recsae train --dataset ml-100k")
    f.add_argument("name", choices=["ml-100k", "ml-1m", "ml-latest-small"], help="dataset to download")
    f.add_argument("--dest", default=None, help=(
        "folder to unpack into (default: the data folder `recsae train` reads: $RECSAE_DATA_DIR, else "
        "../shared/data next to the repository if present, else ~/.cache/recsae/data)"))
    f.add_argument("--base-url", default=None, help="mirror to download from (default: files.grouplens.org)")
    f.add_argument("--force", action="store_true", help="replace a folder of that name not fetched by recsae")
    f.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    f.set_defaults(func=cmd_fetch)

    it = _sub(sub, "interpret", "(re)describe the latents of a bundle", "recsae interpret bundles/default --describer stats")
    it.add_argument("bundle", help="bundle folder (holds manifest.json)")
    it.add_argument("--describer", default="stats", choices=["stats", "llm"],
                    help="stats = from item features, llm = an OpenAI-compatible model (see --llm)")
    it.add_argument("--llm", action="append", default=[], metavar="KEY=VALUE", help=LLM_HELP)
    it.add_argument("--data-dir", default=None, help=(
        "folder holding the bundle's dataset (default: the data folder if it exists, else the one the "
        "bundle was trained from)"))
    it.set_defaults(func=cmd_interpret)

    s = _sub(sub, "serve", "serve a bundle with BentoML (building one if missing)",
             "recsae serve --bundle bundles/default --port 3000")
    s.add_argument("--bundle", default="bundles/default", help="bundle folder; built with `recsae train` first if absent")
    s.add_argument("--dataset", default="auto", help="dataset for a bundle built because none exists (see `recsae train --dataset`)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    s.add_argument("--port", type=_port, default=3000, help="TCP port to listen on")
    s.set_defaults(func=cmd_serve)

    d = _sub(sub, "debias", "find latents carrying a bias, sweep their (and the baseline's) suppression, save a policy",
             "recsae debias bundles/default --bias popularity --save-policy less-popular")
    d.add_argument("bundle", help="bundle folder (holds manifest.json)")
    d.add_argument("--bias", default="popularity", choices=["popularity", "gender"],
                   help="popularity = head items' share of the top 10; gender = the gap between female and male users' "
                        "lists (needs user gender features, e.g. ml-100k)")
    d.add_argument("--data-dir", default=None, help=(
        "folder holding the bundle's dataset (default: the data folder if it exists, else the one the "
        "bundle was trained from)"))
    d.add_argument("--counts", default="1,2,4,8,16,32", help="numbers of suppressed latents to sweep")
    d.add_argument("--strengths", default=None, help=(
        "suppression strengths to sweep, in [0, 1] (default 0.5,1.0; 0.1 to 1.0, in steps of 0.05 between 0.3 and 0.7, for a bundle "
        "trained with --sae-reserve)"))
    d.add_argument("--baseline-strengths", default="0.1,0.2,0.3,0.4,0.5",
                   help="baseline (SAE decoder bias: what all users share, chiefly popularity) suppression "
                        "strengths to sweep, in (0, 1]; empty = latents only")
    d.add_argument("--mode", default="error", choices=["error", "reconstruction"], help=(
        "error = subtract the suppressed latents' share from the representation, keeping the SAE's "
        "error (nothing suppressed: unchanged); reconstruction = decode the scaled latents, dropping "
        "the error (the paper's)"))
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
