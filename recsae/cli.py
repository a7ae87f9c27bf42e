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
from dataclasses import fields
from pathlib import Path

from recsae import BundleError, ConfigError, RecSAEError, cpu_share
from recsae.config import (
    DESCRIBERS,
    LLM_HELP,
    SAE_PRESETS,
    JobConfig,
    add_flags,
    parse_duration,  # noqa: F401 (tests and scripts parse budgets with it)
)

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
    where = Path(data_dir or default_data_dir()) / "ml-100k"
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


def sae_shape(a: argparse.Namespace) -> tuple[int, int, int]:
    """(k, expansion, epochs): the preset's, each overridden by its explicit flag."""
    k, expansion, epochs = SAE_PRESETS[a.sae_preset]
    return (
        k if a.k is None else a.k,
        expansion if a.expansion is None else a.expansion,
        epochs if a.sae_epochs is None else a.sae_epochs,
    )


def data_spec(a: argparse.Namespace) -> dict | None:
    """``load_csv``'s arguments from ``--data`` and its column flags (None without ``--data``)."""
    from recsae.config import LogFlags

    return LogFlags(**{n: getattr(a, n) for n in LogFlags.names()}).spec(a.dataset, a.min_rating)


def check_train_input(a: argparse.Namespace) -> tuple[str, str, dict | None]:
    """(dataset, data folder) after checking what can be checked without torch; raises the
    ``RecSAEError`` that the job would raise later, before any folder is created."""
    from recsae.data.loaders import locate_dataset

    data_dir = a.data_dir or default_data_dir()
    spec = data_spec(a)
    if spec:
        from recsae.data.logfile import log_name

        dataset = log_name(a.data)
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
    print_summary(res.summary, details=a.verbose)
    if a.json:
        Path(a.json).write_text(json.dumps(res.summary, indent=2, default=str))
    return 0


def print_summary(s: dict, details: bool = False) -> None:
    """What a person needs after a run: the headline figures, the warnings, and how to serve it.

    The internal rows (per-stage timings, FVU of each split, the describer's rules) only with
    ``details`` (``recsae -v train``); everything is in ``--json`` and the bundle's manifest."""
    from rich.console import Console
    from rich.table import Table

    import shutil

    c = Console(width=shutil.get_terminal_size((120, 24)).columns, soft_wrap=True)
    t = Table(title=f"bundle {s['bundle']}  (version {s['version']})", title_justify="left")
    t.add_column("what")
    t.add_column("value")
    d = s.get("data") or {}
    if d:
        t.add_row("data", f"{d['users']:,} users, {d['items']:,} items, {d['interactions']:,} interactions")
        if d.get("weights"):
            w = d["weights"]
            t.add_row(f"weights ({w['column']}: {w['kind']})", f"{w['rule']}; {w['dropped']:,} of {w['rows']:,} rows dropped")
        if d.get("item_file"):
            f = d["item_file"]
            t.add_row("item file", f"{f['items_described']:,} items named/described, {f['log_items_missing']:,} not in it")
        t.add_row("recommender", f"{d['model']}: {d.get('model_because')}")
    rec = s["recommender"].get("test", {})
    pop = s["recommender"].get("popularity_baseline_test", {})
    if "NDCG@10" in rec:
        t.add_row("recommender test NDCG@10", f"{rec['NDCG@10']:.4f}"
                  + (f" (popularity alone {pop['NDCG@10']:.4f})" if "NDCG@10" in pop else ""))
    sae = s["sae"]
    held = sae.get("heldout") or sae.get("train") or {}
    shape = s.get("sae_shape") or {}
    if held:
        t.add_row("SAE", (f"k={shape['k']} of {shape['n_latents']:,} latents; " if shape else "")
                  + f"held-out FVU {held['fvu']:.4f}, {held['dead_ratio']:.1%} dead")
    q = s.get("quality") or {}
    for i, m in enumerate(q.get("measures", [])):  # worst first: the gate reads the first
        ci = m.get("ci95")
        flag = "  < bar" if m["value"] < q.get("bar", 0.9) else ""
        t.add_row(f"SAE keeps {m['what']}" if i == 0 else f"  {m['what']}",
                  f"{m['value']:.3f}" + (f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else "") + flag)
    cs = s.get("concepts") or {}
    if "n_described" in cs:
        line = f"{cs['n_described']:,} of {cs.get('n_alive', cs['n_described']):,} live latents described"
        if cs.get("mean_confidence") is not None:
            line += f"; mean confidence {cs['mean_confidence']:.3f}, {cs.get('share_confidence_ge_0.8', 0):.0%} >= 0.8"
        t.add_row("concepts", line)
    if "total" in s["timings_s"]:
        t.add_row("time", f"{s['timings_s']['total']:.0f} s")
    c.print(t)
    search = s.get("sae_search") or {}
    if details:
        dt = Table(title="details", title_justify="left")
        dt.add_column("what")
        dt.add_column("value", justify="right")
        dt.add_row("split", str(d.get("split")))
        for m in ("HR@10", "NDCG@20"):
            if m in rec:
                dt.add_row(f"recommender test {m}", f"{rec[m]:.4f}" + (f" (popularity {pop[m]:.4f})" if m in pop else ""))
        for part in ("train", "heldout"):
            if part in sae:
                dt.add_row(f"SAE {part} FVU / dead", f"{sae[part]['fvu']:.4f} / {sae[part]['dead_ratio']:.1%}")
        dt.add_row("SAE seconds / epoch", f"{sae['seconds_per_epoch']:.3f}")
        if search.get("budget_s"):
            dt.add_row(f"quality search: {search['target']['text']}", f"{search['spent_s']:.0f} of {search['budget_s']:.0f} s")
            for i, r in enumerate(search["trials"]):
                mark = " <- bundle" if i == search["chosen"] else ""
                what = (f"NDCG kept {r['ndcg10_kept']:.3f}, FVU {r['fvu']:.3f}" if "fvu" in r else r.get("stopped", ""))
                dt.add_row(f"  k={r['k']} x {r['n_latents']:,}, {r['epochs']} epochs{' (cached)' if r['cached'] else ''}{mark}",
                           f"{what}, {r['seconds']:.0f} s")
        dt.add_row("ONNX vs PyTorch max abs diff", f"{s['onnx_max_abs_diff']:.2e}")
        for k, v in cs.items():
            if isinstance(v, (int, float)):
                dt.add_row(f"concepts {k}", f"{v:.3f}" if isinstance(v, float) else str(v))
        for k, v in s["timings_s"].items():
            dt.add_row(f"time {k} (s)", f"{v:.1f}")
        c.print(dt)
    if search.get("budget_s") and search.get("met"):
        c.print(f"quality search: {search['why']}", highlight=False)
    for w in q.get("warnings", []):
        c.print(f"[yellow]warning:[/yellow] {w}", highlight=False)
    bundle = s["bundle"]
    c.print(f"serve it:  recsae serve --bundle {bundle}   (or: make serve BUNDLE={bundle})", highlight=False)
    c.print("then:      open http://127.0.0.1:3000/audit (the service prints example requests when it starts)",
            highlight=False)
    if (Path(bundle) / "atlas.html").exists():
        c.print(f"atlas:     {Path(bundle) / 'atlas.html'}  (every concept on one static page)", highlight=False)
    if not details:
        c.print("details:   recsae info BUNDLE --details (or --json); recsae -v train ... shows them after a run",
                highlight=False)


def cmd_info(a: argparse.Namespace) -> int:
    check_bundle_path(a.bundle)
    from recsae.bundle import verify_bundle

    m = verify_bundle(a.bundle)
    if a.json:  # the manifest's own numbers, every digit
        print(json.dumps({k: m[k] for k in ("version", "bundle_hash", "model", "sae", "metrics")}, indent=2, default=str))
        return 0
    met = m.get("metrics") or {}
    summary = {"bundle": str(a.bundle), "version": m["version"], "data": {}, **met,
               "sae_shape": m.get("sae"), "timings_s": {}}
    ds = m.get("dataset") or {}
    if {"users", "items", "interactions"} <= set(ds):
        summary["data"] = {**ds, "model": m["model"]["name"], "model_because": m["model"].get("chosen_because", "")}
    print(f"verified: every file matches its hash (bundle {m['bundle_hash'][:12]}...)")
    print_summary(summary, details=a.details)
    return 0


def cmd_fetch(a: argparse.Namespace) -> int:
    from recsae.data.fetch import MARKER, fetch_movielens
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
    paths = D.write_outputs(result, a.out, doc, point)
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


def build_parser() -> argparse.ArgumentParser:
    from recsae.data.fetch import KNOWN_SHA256
    from recsae.config import LogFlags
    from recsae.debias.config import DebiasConfig

    p = argparse.ArgumentParser(prog="recsae", description=DESCRIPTION, epilog=EXAMPLES, formatter_class=_HelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="log what each stage does (INFO level)")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    t = _sub(sub, "train", "dataset -> recommender -> SAE -> concepts -> bundle",
             "recsae train --dataset ml-100k --model sasrec --sae-preset balanced --out bundles/ml100k")
    add_flags(t, JobConfig, ("dataset", "data_dir", "min_rating", "kcore", "model"))
    g = t.add_argument_group("your own log (README, \"Bring your own data\")")
    add_flags(g, LogFlags, LogFlags.names())
    add_flags(t, JobConfig, ("model_params", "train_params"))
    t.add_argument("--sae-preset", default="paper", choices=sorted(SAE_PRESETS), help=(
        "SAE shape: paper = k 8 of 1,024 latents, 60 epochs (default); balanced = k 16 of 1,024, "
        "60 epochs (99%% of NDCG@10 kept on ml-100k, 90%% on Grocery); fidelity = k 32 of "
        "2,048, 120 epochs (99.5%% on ml-100k)"))
    add_flags(t, JobConfig, ("expansion", "k", "sae_epochs", "sae_encoder", "sae_reserve", "describer", "llm",
                            "seed", "threads"))
    t.add_argument("--out", default="bundles/default", help="bundle folder to write")
    t.add_argument("--work-dir", default=None, help="cache of finished stages (default: .recsae-work next to --out)")
    t.add_argument("--json", default=None, help="also write the summary here")
    add_flags(t, JobConfig, ("min_fidelity", "quality_budget", "ann"))
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=cmd_train)

    i = _sub(sub, "info", "verify a bundle and print its manifest summary", "recsae info bundles/default")
    i.add_argument("bundle", help="bundle folder (holds manifest.json)")
    i.add_argument("--json", action="store_true", help="print the manifest's summary as JSON, every digit")
    i.add_argument("--details", action="store_true", help="also the internal rows (split, FVU per split, describer rules)")
    i.set_defaults(func=cmd_info)

    f = _sub(sub, "fetch", "download a MovieLens dataset (checksum-verified) into the data folder",
             "recsae fetch ml-100k && recsae train --dataset ml-100k")
    f.add_argument("name", choices=list(KNOWN_SHA256), help="dataset to download")
    f.add_argument("--dest", default=None, help=(
        "folder to unpack into (default: the data folder `recsae train` reads: $RECSAE_DATA_DIR, else "
        "../shared/data next to the repository if present, else ~/.cache/recsae/data)"))
    f.add_argument("--base-url", default=None, help="mirror to download from (default: files.grouplens.org)")
    f.add_argument("--force", action="store_true", help="replace a folder of that name not fetched by recsae")
    f.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    f.set_defaults(func=cmd_fetch)

    it = _sub(sub, "interpret", "(re)describe the latents of a bundle", "recsae interpret bundles/default --describer stats")
    it.add_argument("bundle", help="bundle folder (holds manifest.json)")
    it.add_argument("--describer", default="stats", choices=[d for d in DESCRIBERS if d != "none"],
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
    add_flags(d, DebiasConfig, ("bias",))
    d.add_argument("--data-dir", default=None, help=(
        "folder holding the bundle's dataset (default: the data folder if it exists, else the one the "
        "bundle was trained from)"))
    add_flags(d, DebiasConfig, [f.name for f in fields(DebiasConfig)][1:])
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
