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
    where = Path(data_dir or DEFAULT_DATA_DIR) / "ml-100k"
    chosen = "ml-100k" if data_dir and (where / "u.data").is_file() else "synthetic"
    why = "found" if chosen == "ml-100k" else "not found (set --data-dir or RECSAE_DATA_DIR)"
    print(f"dataset auto: {where} {why}: {chosen}", file=sys.stderr, flush=True)
    return chosen


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


def min_rating_arg(text: str) -> float | str | None:
    """``--min-rating``: a number, ``auto`` (the scale's midpoint where there are ratings) or ``all``."""
    if text in ("auto", "all"):
        return None if text == "all" else "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, 'auto' or 'all', not {text!r}") from None


def _sep_arg(text: str | None) -> str | None:
    return {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}.get(text or "", text) or None


def data_spec(a: argparse.Namespace) -> dict | None:
    """``load_csv``'s arguments from ``--data`` and its column flags (None without ``--data``)."""
    from recsae import ConfigError

    if not a.data:
        stray = [f"--{n.replace('_', '-')}" for n in ("items", "time_col", "weight_col", "min_weight") if getattr(a, n)]
        if stray:
            raise ConfigError(f"{', '.join(stray)} describe a --data FILE; give one, or drop them")
        return None
    if a.dataset != "auto":
        raise ConfigError("give --dataset or --data FILE, not both")
    if not Path(a.data).is_file():
        raise ConfigError(f"--data {a.data}: no such file")
    if a.min_weight is not None and not a.weight_col:
        raise ConfigError("--min-weight needs --weight-col: the log's rating or count column")
    min_weight = a.min_weight if a.min_weight is not None else a.min_rating
    min_weight = None if min_weight == "all" else min_weight
    spec = {
        "path": str(Path(a.data).resolve()), "user_col": a.user_col, "item_col": a.item_col,
        "time_col": a.time_col, "weight_col": a.weight_col, "weight_kind": a.weight_kind,
        "min_weight": min_weight if a.weight_col else None, "sep": _sep_arg(a.sep), "encoding": a.encoding,
    }
    if a.items:
        if not Path(a.items).is_file():
            raise ConfigError(f"--items {a.items}: no such file")
        spec["items"] = {
            "path": str(Path(a.items).resolve()), "id_col": a.item_id_col or a.item_col,
            "name_col": a.item_name_col, "text_cols": list(a.item_text_col), "list_cols": list(a.item_list_col),
            "list_sep": a.list_sep, "sep": _sep_arg(a.items_sep), "encoding": a.items_encoding,
        }
    elif a.item_name_col or a.item_text_col or a.item_list_col:
        raise ConfigError("--item-name-col/--item-text-col/--item-list-col name columns of --items FILE: give it")
    return spec


def check_train_input(a: argparse.Namespace) -> tuple[str, str, dict | None]:
    """(dataset, data folder) after checking what can be checked without torch; raises the
    ``RecSAEError`` that the job would raise later, before any folder is created."""
    from recsae.data.loaders import locate_dataset

    data_dir = a.data_dir or default_data_dir()
    spec = data_spec(a)
    if spec:
        dataset = Path(a.data).name.split(".")[0]
    else:
        dataset = resolve_dataset(a.dataset, data_dir)
        locate_dataset(dataset, data_dir, a.min_rating, a.kcore)
    if a.min_fidelity is not None and not 0 < a.min_fidelity <= 1:
        raise ConfigError(f"--min-fidelity {a.min_fidelity:g} must be in (0, 1]: the share of NDCG@10 the SAE must keep")
    for flag, value in (("--expansion", a.expansion), ("-k", a.k), ("--sae-epochs", a.sae_epochs)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} {value}: give a whole number >= 1")
    _parse_kv(a.model_param), _parse_kv(a.train_param), _parse_kv(a.llm)
    return dataset, data_dir, spec


def cmd_train(a: argparse.Namespace) -> int:
    dataset, data_dir, spec = check_train_input(a)
    from recsae.pipeline import JobConfig, run_job

    k, expansion, sae_epochs = sae_shape(a)
    threads = cpu_share() if a.threads == "auto" else a.threads
    if a.threads == "auto":
        print(f"--threads auto: {threads} (CPUs usable now, less the load average)", file=sys.stderr)
    cfg = JobConfig(
        dataset=dataset,
        data=spec,
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
        fit_latents=a.expansion is None,
        sae_reserve=a.sae_reserve,
        sae_encoder=a.sae_encoder,
        quality_budget=a.quality_budget,
        ann=a.ann,
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
    d = s.get("data") or {}
    if d:
        t.add_row("data", f"{d['users']:,} users, {d['items']:,} items, {d['interactions']:,} interactions")
        if d.get("weights"):
            w = d["weights"]
            t.add_row(f"weights ({w['column']}: {w['kind']})", f"{w['rule']}; {w['dropped']:,} of {w['rows']:,} rows dropped")
        if d.get("item_file"):
            f = d["item_file"]
            t.add_row("item file", f"{f['items_described']:,} items named/described, {f['log_items_missing']:,} not in it")
        t.add_row("split", str(d.get("split")))
        t.add_row(f"model {d['model']}", str(d.get("model_because")))
    rec = s["recommender"].get("test", {})
    pop = s["recommender"].get("popularity_baseline_test", {})
    for m in ("HR@10", "NDCG@10", "NDCG@20"):
        if m in rec:
            t.add_row(f"recommender test {m}", f"{rec[m]:.4f}" + (f" (popularity {pop[m]:.4f})" if m in pop else ""))
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


LOCAL_REDIS = "redis://127.0.0.1:6379/0"


def redis_answers(url: str, timeout: float = 0.3) -> bool:
    """Whether a Redis at ``redis://host:port/...`` answers PING (standard library only)."""
    import socket
    from urllib.parse import urlparse

    u = urlparse(url)
    try:
        with socket.create_connection((u.hostname or "127.0.0.1", u.port or 6379), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


def pick_redis(mode: str, env: dict, local: str = LOCAL_REDIS) -> tuple[str | None, str]:
    """(REDIS_URL to serve with or None, the line that says which). ``auto``: $REDIS_URL when set,
    else the local Redis when it answers, else in-process; ``off``: in-process; else a URL."""
    if mode == "off":
        return None, "redis off: policies and the concept cache are in-process (one process)"
    if mode != "auto":
        return mode, f"redis {mode} (--redis)"
    if env.get("REDIS_URL"):
        return env["REDIS_URL"], f"redis {env['REDIS_URL']} (REDIS_URL)"
    if redis_answers(local):
        return local, f"redis {local}: a local Redis answers, policies and the concept cache live there"
    return None, f"redis off: no Redis answers at {local}, policies and the concept cache are in-process"


def cmd_serve(a: argparse.Namespace) -> int:
    """``bentoml serve`` the service on an existing bundle. Never trains: a typo in a production
    bundle path must not start an hour-long training job that writes a bundle where it points."""
    bundle = Path(a.bundle)
    if not (bundle / "manifest.json").is_file():
        raise RecSAEError(
            f"no bundle at {bundle}: build one with `recsae train --out {bundle}` (recsae serve never trains; "
            "`make serve` builds the default bundle when it is missing)"
        )
    env = dict(os.environ, RECSAE_BUNDLE=str(bundle.resolve()), BENTOML_DO_NOT_TRACK="True", RECSAE_PORT=str(a.port))
    if a.redis is not None:
        url, line = pick_redis(a.redis, env)
        env.pop("REDIS_URL", None)
        if url:
            env["REDIS_URL"] = url
        print(f"recsae serve: {line}", file=sys.stderr, flush=True)
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
    t.add_argument("--min-rating", type=min_rating_arg, default="auto", metavar="auto|all|NUMBER", help=(
        "keep ratings >= this as positive interactions; auto (default) = the rating scale's midpoint "
        "(3 on MovieLens' 1-5: 1-2 stars are dislikes), nothing for data without ratings; all keeps every rating"))
    t.add_argument("--kcore", type=int, default=0, help="drop users and items with fewer interactions than this, repeatedly (0 = keep all)")
    t.add_argument("--model", default="auto", choices=["auto", "sasrec", "bprmf", "lightgcn"], help=(
        "auto (default): sasrec when the data has timestamps, lightgcn when it has none (a sequential model "
        "needs an order)"))
    g = t.add_argument_group("your own log (README, \"Bring your own data\")")
    g.add_argument("--data", default=None, metavar="FILE", help=(
        "an interaction log instead of --dataset: CSV/TSV (separator sniffed), gzip or Parquet, with a header row"))
    g.add_argument("--sep", default=None, help="the log's separator (tab, comma, semicolon, pipe or the character); default: sniffed")
    g.add_argument("--user-col", default="user_id", help="user id column (default user_id)")
    g.add_argument("--item-col", default="item_id", help="item id column (default item_id)")
    g.add_argument("--time-col", default=None, help=(
        "timestamp column (unix seconds or ISO dates); without it the split is a seeded random leave-one-out "
        "and the model defaults to lightgcn"))
    g.add_argument("--weight-col", default=None, help="a rating or count column (see --weight-kind, --min-weight)")
    g.add_argument("--weight-kind", default="auto", choices=["auto", "rating", "count"], help=(
        "auto (default): ratings are 2-20 distinct half-steps within 0-10, anything else counts"))
    g.add_argument("--min-weight", type=lambda v: "all" if v == "all" else min_rating_arg(v), default=None, metavar="auto|all|NUMBER", help=(
        "keep rows whose weight >= this (default auto: ratings >= the scale's midpoint, counts > 0; a count is "
        "binarised, never a sample weight: README)"))
    g.add_argument("--encoding", default="utf-8", help="text encoding of the log (and of --items unless --items-encoding), e.g. latin-1")
    g.add_argument("--items", default=None, metavar="FILE", help="item file: names and attributes (tags, category) per item")
    g.add_argument("--item-id-col", default=None, help="item id column of --items (default: --item-col)")
    g.add_argument("--item-name-col", default=None, help="item name column of --items (titles)")
    g.add_argument("--item-text-col", action="append", default=[], metavar="COL",
                   help="a one-value attribute column of --items (e.g. category), repeatable")
    g.add_argument("--item-list-col", action="append", default=[], metavar="COL",
                   help="a multi-value attribute column of --items (e.g. tags), split on --list-sep, repeatable")
    g.add_argument("--list-sep", default="|", help="separator inside --item-list-col values (default '|')")
    g.add_argument("--items-sep", default=None, help="separator of --items (default: sniffed)")
    g.add_argument("--items-encoding", default=None, help="text encoding of --items (default: --encoding)")
    t.add_argument("--model-param", action="append", default=[], metavar="KEY=VALUE",
                   help="recommender setting, repeatable, e.g. dim=64 (see models/)")
    t.add_argument("--train-param", action="append", default=[], metavar="KEY=VALUE",
                   help="recommender training setting, repeatable, e.g. epochs=50 or lr=1e-3 (see models/training.py)")
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
    t.add_argument("--quality-budget", type=parse_duration, default=600.0, metavar="TIME", help=(
        "when the SAE keeps < 95%% of NDCG@10 (held-out rows) or held-out FVU > 0.10, train larger "
        "ones (k doubled, then more latents and epochs) on the cached activations until one does, "
        "for at most this long: 600 (seconds), 10m, 1h; 0 or off = the SAE exactly as asked "
        "(default 10m)"))
    t.add_argument("--ann", default="auto", choices=["auto", "off", "ivf", "hnsw"], help=(
        "approximate retrieval: a faiss index in the bundle whose candidates the service re-scores "
        "exactly; auto = IVF from 100k items on, exact below (needs the `ann` extra, faiss-cpu)"))
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

    s = _sub(sub, "serve", "serve a bundle with BentoML (never trains: build one with `recsae train`)",
             "recsae serve --bundle bundles/default --port 3000")
    s.add_argument("--bundle", default="bundles/default", help="bundle folder (holds manifest.json); built by `recsae train`")
    s.add_argument("--redis", default=None, metavar="auto|off|URL", help=(
        "auto: $REDIS_URL, else the local Redis on 127.0.0.1:6379 when it answers, else in-process "
        "(said on the first line); default: $REDIS_URL as it is"))
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
