"""The CLI is built from the config types (issue 18, item 5): a flag's choices, default and help
come from the dataclass field, so changing the field changes the flag, and nothing is kept twice."""

from __future__ import annotations

from dataclasses import MISSING, fields

from recsae.cli import build_parser
from recsae.config import MODEL_CHOICES, JobConfig, LogFlags
from recsae.debias.config import DebiasConfig, csv


def _sub(name: str):
    p = build_parser()
    return next(a for a in p._subparsers._group_actions[0].choices.items() if a[0] == name)[1]


def _actions(name: str) -> dict:
    return {a.dest: a for a in _sub(name)._actions}


def test_every_flag_field_is_a_flag_with_the_fields_help_choices_and_default():
    for cmd, config in (("train", JobConfig), ("train", LogFlags), ("debias", DebiasConfig)):
        acts = {a.help: a for a in _sub(cmd)._actions}
        for f in fields(config):
            if "cli" not in f.metadata:
                continue
            a = acts.get(f.metadata["help"])
            assert a is not None, f"recsae {cmd}: field {f.name} has flag metadata but no flag"
            assert list(a.choices or []) == list(f.metadata["cli"].get("choices") or [])
            default = f.default_factory() if f.default is MISSING else f.default
            want = f.metadata["cli"].get("cli_default", [] if a.__class__.__name__ == "_AppendAction" else default)
            assert a.default == want, f"recsae {cmd} {a.option_strings}: {a.default!r} != {want!r}"


def test_a_changed_field_changes_the_flag(monkeypatch):
    f = next(f for f in fields(JobConfig) if f.name == "describer")
    monkeypatch.setitem(f.metadata["cli"], "choices", ("stats", "llm", "none", "oracle"))
    assert list(_actions("train")["describer"].choices) == ["stats", "llm", "none", "oracle"]


def test_debias_defaults_are_the_experiments_and_parse_back():
    a = build_parser().parse_args(["debias", "b"])
    assert a.counts == csv(DebiasConfig.counts) == "1,2,4,8,16,32"
    assert [float(v) for v in a.baseline_strengths.split(",")] == list(DebiasConfig.baseline_strengths)
    assert (a.mode, a.seeds, a.method) == (DebiasConfig.mode, DebiasConfig.seeds, DebiasConfig.method)


def test_model_choices_are_the_registered_models():
    from models import MODELS

    assert set(MODEL_CHOICES) - {"auto"} == set(MODELS)


def test_the_own_log_flags_come_from_logflags_and_round_trip_into_the_job_spec(tmp_path):
    """Every ``LogFlags`` field is a ``recsae train`` flag, and parsing the flags back gives the
    dataclass its values (so ``data_spec`` reads nothing the dataclass does not declare)."""
    acts = _actions("train")
    assert set(LogFlags.names()) <= set(acts)
    log = tmp_path / "log.csv"
    log.write_text("u,i,r\n1,2,4\n")
    a = build_parser().parse_args(["train", "--data", str(log), "--user-col", "u", "--item-col", "i",
                                   "--weight-col", "r", "--sep", "comma"])
    flags = LogFlags(**{n: getattr(a, n) for n in LogFlags.names()})
    spec = flags.spec(a.dataset, a.min_rating)
    assert (spec["user_col"], spec["item_col"], spec["weight_col"], spec["sep"]) == ("u", "i", "r", ",")
