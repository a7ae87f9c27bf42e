"""The command line as a new user meets it: help for every flag, input refused before torch is
imported and before anything is written, one data folder for fetch and train."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from recsae import DataError
from recsae.cli import build_parser, main
from recsae.data import load_dataset
from recsae.data.fetch import KNOWN_SHA256
from recsae.data.loaders import SHARED_DATA_DIR, default_data_dir
from tests.unit.test_fetch import _Server

REPO = Path(__file__).resolve().parents[2]
COMMANDS = {"train", "info", "fetch", "interpret", "serve", "debias"}


def _subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_top_level_help_lists_every_command_and_no_developer_docstring():
    out = subprocess.run([sys.executable, "-m", "recsae.cli", "--help"], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    for cmd in COMMANDS:
        assert f"\n    {cmd} " in out, (cmd, out)
    assert "``" not in out and "RecSAEError" not in out, out
    assert "recsae fetch ml-100k" in out and "$RECSAE_DATA_DIR" in out


def test_every_flag_has_help_with_its_default_and_every_command_an_example():
    subs = _subparsers(build_parser())
    assert set(subs) == COMMANDS
    for name, sp in subs.items():
        text = sp.format_help()
        assert f"example:\n  recsae {name}" in text, text
        for action in sp._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"recsae {name} {action.dest}: no help"
            shown = sp.formatter_class("recsae")._get_help_string(action)
            if action.option_strings and action.default is not None and action.default is not False and action.default != []:
                assert "default" in shown, f"recsae {name} {action.option_strings}: default not shown in {shown!r}"


def test_threads_flag_takes_a_count_or_auto(capsys):
    p = build_parser()
    assert p.parse_args(["train"]).threads == 1
    assert p.parse_args(["train", "--threads", "auto"]).threads == "auto"
    assert p.parse_args(["train", "--threads", "3"]).threads == 3
    for bad in ("0", "-2", "many"):
        with pytest.raises(SystemExit):
            p.parse_args(["train", "--threads", bad])
        assert "whole number >= 1, or auto" in capsys.readouterr().err


def test_cpu_share_is_the_usable_cpus_less_the_load(monkeypatch):
    from recsae import cpu_share

    usable = len(os.sched_getaffinity(0))
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    idle = cpu_share()
    assert 1 <= idle <= usable  # a cgroup quota may lower it further
    monkeypatch.setattr(os, "getloadavg", lambda: (idle - 1.0, 0.0, 0.0))
    assert cpu_share() == 1
    monkeypatch.setattr(os, "getloadavg", lambda: (10.0 * usable, 0.0, 0.0))
    assert cpu_share() == 1


@pytest.mark.parametrize("argv", [
    ["train", "--dataset", "ml-100kk", "--out", "out/bundle", "--data-dir", "data"],
    ["train", "--dataset", "no/such/folder", "--out", "out/bundle"],
    ["serve", "--bundle", "no-bundle"],
    ["interpret", "no-bundle"],
    ["debias", "no-bundle", "--out", "out/report"],
], ids=["unknown-name", "missing-folder", "serve-no-bundle", "interpret-no-bundle", "debias-no-bundle"])
def test_refused_input_fails_before_torch_and_writes_nothing(tmp_path, argv):
    """In a fresh interpreter: the refusal comes before ``import torch`` and before any folder."""
    code = (
        "import sys\n"
        "from recsae.cli import main\n"
        f"rc = main({argv!r})\n"
        "print('RESULT', rc, 'torch' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert "RESULT 2 False" in r.stdout, (r.stdout, r.stderr)
    assert any(m in r.stderr for m in ("known names are ml-100k", "no such folder", "no bundle at no-bundle")), r.stderr
    assert list(tmp_path.iterdir()) == [], "a refused command left files behind"


def test_an_empty_or_unknown_folder_says_what_to_do_without_python_names(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as e:
        load_dataset(empty)
    assert "is empty" in str(e.value) and "recsae fetch ml-100k" in str(e.value)
    (tmp_path / "other" / "x.txt").parent.mkdir()
    (tmp_path / "other" / "x.txt").write_text("hello")
    (tmp_path / "log.csv").write_text("user,item\n1,2\n")
    for folder in (tmp_path / "other", tmp_path / "log.csv"):
        with pytest.raises(DataError) as e:
            load_dataset(folder)
        msg = str(e.value)
        assert "load_csv" not in msg and "train.csv" in msg and "user_id, item_id, time" in msg, msg


# -- one data folder -----------------------------------------------------------------------------
def test_default_data_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("RECSAE_DATA_DIR", str(tmp_path / "env"))
    assert default_data_dir() == tmp_path / "env"
    monkeypatch.delenv("RECSAE_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    want = SHARED_DATA_DIR if SHARED_DATA_DIR.is_dir() else tmp_path / "cache" / "recsae" / "data"
    assert default_data_dir() == want
    monkeypatch.setattr("recsae.data.loaders.SHARED_DATA_DIR", tmp_path / "no-shared")
    assert default_data_dir() == tmp_path / "cache" / "recsae" / "data"


def _tiny_ml100k_zip(path: Path) -> str:
    """An ML-100K-shaped archive big enough to train on: 60 users, 40 items, planted taste."""
    rng = np.random.default_rng(0)
    rows = []
    for u in range(1, 61):
        liked = rng.choice(np.arange(1, 21) if u % 2 else np.arange(21, 41), size=12, replace=False)
        rows += [f"{u}\t{i}\t{4 + u % 2}\t{880000000 + u * 100 + t}" for t, i in enumerate(liked)]
    items = []
    for i in range(1, 41):  # genre flag 1 (Action) for items 1-20, 11 (Horror) for 21-40
        genres = "|".join("1" if g == (1 if i <= 20 else 11) else "0" for g in range(19))
        items.append(f"{i}|Movie {i} (1995)|01-Jan-1995||http://x|{genres}")
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ml-100k/u.data", "\n".join(rows) + "\n")
        zf.writestr("ml-100k/u.item", "\n".join(items) + "\n")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fetch_then_train_find_the_data_with_no_flags(tmp_path, monkeypatch):
    """`recsae fetch ml-100k` then `recsae train --dataset ml-100k`, neither given a folder: the
    download (from a loopback server, never the internet) lands where training looks."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("RECSAE_DATA_DIR", str(tmp_path / "data"))
    (tmp_path / "srv" / "datasets").mkdir(parents=True)
    sha = _tiny_ml100k_zip(tmp_path / "srv" / "datasets" / "ml-100k.zip")
    monkeypatch.setitem(KNOWN_SHA256, "ml-100k", sha)
    srv = _Server(tmp_path / "srv")
    try:
        assert main(["fetch", "ml-100k", "--base-url", srv.url, "-q"]) == 0
    finally:
        srv.close()
    assert (tmp_path / "data" / "ml-100k" / "u.data").is_file()
    monkeypatch.chdir(tmp_path)
    rc = main(["train", "--dataset", "ml-100k", "--model", "bprmf", "--train-param", "epochs=2",
               "--expansion", "2", "-k", "4", "--sae-epochs", "2", "--describer", "none", "-q",
               "--out", "bundles/b", "--json", "summary.json"])
    assert rc == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    manifest = json.loads((tmp_path / "bundles" / "b" / "manifest.json").read_text())
    ds = manifest["dataset"]
    assert (ds["dataset"], ds["users"], ds["items"]) == ("ml-100k", 60, 40), ds
    assert ds["meta"]["source"].startswith(str(tmp_path / "data" / "ml-100k")), ds["meta"]
    assert Path(summary["bundle"]).resolve() == (tmp_path / "bundles" / "b").resolve()


def test_fetch_keeps_a_copy_put_there_by_hand(tmp_path, monkeypatch, capsys):
    """A dataset already in the data folder (e.g. a shared licensed copy) is used, never replaced;
    the mirror given here does not exist, so any download attempt would fail."""
    monkeypatch.setenv("RECSAE_DATA_DIR", str(tmp_path))
    (tmp_path / "ml-100k").mkdir()
    (tmp_path / "ml-100k" / "u.data").write_text("1\t1\t5\t1\n")
    assert main(["fetch", "ml-100k", "--base-url", "http://127.0.0.1:9/", "-q"]) == 0
    assert "already in" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "ml-100k").iterdir()) == ["u.data"]
