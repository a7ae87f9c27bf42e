"""The service reads its configuration in one place: ``service/config.py`` (issue #18)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from recsae import ConfigError
from service.config import ServerSettings, Settings

SERVICE = Path(__file__).resolve().parents[2] / "service"
# os.environ / os.getenv / os.putenv / environ imported from os: any way a module reads (or
# writes) the process environment
READS_ENV = re.compile(r"\benviron\b|\bgetenv\b|\bputenv\b|\bunsetenv\b")


def env_readers() -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for path in sorted(SERVICE.rglob("*.py")):
        lines = [n for n, line in enumerate(path.read_text().splitlines(), 1) if READS_ENV.search(line)]
        if lines:
            found[str(path.relative_to(SERVICE.parent))] = lines
    return found


def test_only_the_settings_module_reads_the_environment():
    found = env_readers()
    assert "service/config.py" in found  # the pattern does find reads (where they belong)
    others = {path: lines for path, lines in found.items() if path != "service/config.py"}
    assert others == {}, f"read the environment in service/config.py only, not here: {others}"


def test_every_documented_variable_lands_in_the_settings():
    s = Settings.from_env({
        "RECSAE_BUNDLE": "b", "RECSAE_AUDIT_TOKEN": "t", "RECSAE_AUDIT_SAMPLE": "1", "RECSAE_ORT_THREADS": "2",
        "RECSAE_MAX_BATCH": "8", "RECSAE_PLAIN_SCORES": "1", "RECSAE_STATE_DIR": "/tmp/s",
    })
    assert (s.audit_token, s.audit_sample, s.ort_threads, s.max_batch, s.plain_scores, s.state_dir) == (
        "t", 1.0, 2, 8, True, "/tmp/s")
    d = Settings.from_env({"RECSAE_BUNDLE": "b", "XDG_STATE_HOME": "/tmp/x"})
    assert (d.audit_token, d.audit_sample, d.ort_threads, d.max_batch, d.plain_scores, d.state_dir) == (
        None, 0.1, 1, 32, False, "/tmp/x/recsae")
    # the audit sample stays lenient, as it always was: clamped, a non-number is the default
    assert Settings.from_env({"RECSAE_BUNDLE": "b", "RECSAE_AUDIT_SAMPLE": "7"}).audit_sample == 1.0
    assert Settings.from_env({"RECSAE_BUNDLE": "b", "RECSAE_AUDIT_SAMPLE": "x"}).audit_sample == 0.1


def test_server_settings_are_read_and_checked():
    assert ServerSettings.from_env({}) == ServerSettings(workers=1, port=3000, max_body_bytes=65536, access_log=True)
    assert ServerSettings.from_env({"RECSAE_ACCESS_LOG": "0"}).access_log is False
    assert ServerSettings.from_env({"RECSAE_ACCESS_LOG": " Off "}).access_log is False
    assert ServerSettings.from_env({"RECSAE_ACCESS_LOG": "1"}).access_log is True
    s = ServerSettings.from_env({"RECSAE_WORKERS": "3", "RECSAE_PORT": "8080", "RECSAE_MAX_BODY_BYTES": "1024"})
    assert (s.workers, s.port, s.max_body_bytes) == (3, 8080, 1024)
    for name, bad in (("RECSAE_WORKERS", "two"), ("RECSAE_WORKERS", "0"), ("RECSAE_PORT", "70000"),
                      ("RECSAE_MAX_BODY_BYTES", "1.5"), ("RECSAE_ACCESS_LOG", "maybe")):
        with pytest.raises(ConfigError, match=name):
            ServerSettings.from_env({name: bad})
