"""The test-bundle caches (tests/conftest.py) are keyed by code that can change what they hold:
a docstring or comment edit retrains nothing, a code edit does, and interpretation or service
code never keys the trained weights."""

from __future__ import annotations

from tests.conftest import REPO_ROOT, WEIGHT_SOURCES, _code_text


def test_docstrings_and_comments_do_not_change_a_key_code_does(tmp_path):
    src = (REPO_ROOT / "recsae" / "sae.py").read_text()
    base = tmp_path / "a.py"
    base.write_text(src)
    reworded = tmp_path / "b.py"
    reworded.write_text(src.replace('"""', '"""Reworded. ', 1) + "\n# a new comment\n")
    changed = tmp_path / "c.py"
    changed.write_text(src + "\nEXTRA = 1\n")
    assert reworded.read_text() != src
    assert _code_text(reworded) == _code_text(base)
    assert _code_text(changed) != _code_text(base)


def test_interpretation_and_service_code_do_not_key_the_weights():
    assert all((REPO_ROOT / p).exists() for p in WEIGHT_SOURCES)
    assert not any(p.startswith(("recsae/interpret", "service", "recsae/bundle", "recsae/debias")) for p in WEIGHT_SOURCES)
