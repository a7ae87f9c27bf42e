"""The LLM describer and scorer against a real HTTP stub of an OpenAI-compatible server: end to
end, faults (retried, then ``undescribed`` with the reason), resuming an interrupted run from
the answer cache, and a wrong key failing before any work."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llm_stub import KEY, StubLLM, tiny_world  # noqa: E402

from recsae import ConfigError  # noqa: E402
from recsae.interpret import interpret_activations  # noqa: E402


@pytest.fixture(scope="module")
def world():
    return tiny_world()


@pytest.fixture
def stub(monkeypatch):
    monkeypatch.setenv("STUB_LLM_KEY", KEY)
    with StubLLM() as s:
        yield s


def settings(stub: StubLLM, tmp_path: Path, **kw) -> dict:
    return {
        "base_url": stub.base_url, "model": "stub-model", "api_key_env": "STUB_LLM_KEY",
        "timeout_s": 0.5, "backoff_s": 0.01, "max_attempts": 4, "concurrency": 4, "repeats": 2,
        "detection_per_class": 20, "chunk": 20, "cache": str(tmp_path / "llm-cache.jsonl"),
        "price_input_per_1m": 0.15, "price_output_per_1m": 0.6, **kw,
    }  # fmt: skip


def describe(world, llm: dict, **kw):
    ds, kernel, emb, acts, _ = world
    return interpret_activations(ds, kernel, emb, acts, describer="llm", llm=llm, seed=0, **kw)


def test_end_to_end_description_and_scoring(world, stub, tmp_path, capsys):
    d = describe(world, settings(stub, tmp_path))
    truth = world[4]
    n_alive = sum(c.status != "dead" for c in d.concepts)
    assert d.describer == "llm" and d.model == "stub-model"
    for c in d.concepts:
        if c.status == "dead":
            continue
        assert c.status == "described" and c.description.startswith(f"Stub {c.latent}:"), c
        assert c.attributes and "no-such:attribute" not in c.attributes  # validated against the vocabulary
        assert c.confidence is not None and c.detection.n_positive > 0 and c.model == "stub-model"
    for j, concept in enumerate(truth.concepts):  # the stub's predictor reads titles: it works here
        c = d.concepts[j]
        if concept.name.split(" & ")[0] in c.description:
            assert c.confidence >= 0.8 and c.detection.auc >= 0.8, c
    chats = stub.chat_requests()
    assert len(stub.chat_requests("describe")) == n_alive
    usage = d.summary["llm"]
    assert usage["requests"] == len(chats) and usage["cached_answers"] == 0 and usage["failed_requests"] == 0
    assert usage["prompt_tokens"] > 0 and usage["cost_usd"] > 0
    assert "LLM stub-model:" in capsys.readouterr().err
    cache = (tmp_path / "llm-cache.jsonl").read_text().splitlines()
    assert len(cache) == len(chats)

    # a second run is answered entirely from the cache: no request reaches the server
    again = describe(world, settings(stub, tmp_path))
    assert len(stub.chat_requests()) == len(chats)
    assert again.summary["llm"]["cached_answers"] == len(chats) and again.summary["llm"]["requests"] == 0
    strip = lambda x: [c.model_dump() for c in x.concepts]  # noqa: E731
    assert strip(again) == strip(d)


def test_faults_are_retried_then_marked_undescribed_and_the_job_finishes(world, stub, tmp_path):
    stub.faults[0] = ["429", "500", "timeout"]  # transient: the 4th attempt succeeds
    stub.always[1] = "invalid_json"
    stub.always[2] = "empty"
    stub.always[3] = "500"
    stub.always[4] = "timeout"
    stub.always[("score", 5)] = "429"  # described, but every scoring request is refused
    d = describe(world, settings(stub, tmp_path))
    by = d.by_latent()
    assert by[0].status == "described" and by[0].confidence is not None
    assert [r["fault"] for r in stub.chat_requests("describe") if r["latent"] == 0] == ["429", "500", "timeout", None]
    expect = {1: "not JSON", 2: "empty description", 3: "HTTP 500", 4: "timeout"}
    for j, words in expect.items():
        c = by[j]
        assert c.status == "undescribed" and words in c.reason and "4 attempts" in c.reason, c.reason
        assert len([r for r in stub.chat_requests("describe") if r["latent"] == j]) == 4
    assert by[5].status == "described" and by[5].confidence is None and "rate limited" in by[5].reason
    others = [c for c in d.concepts if c.latent > 5 and c.status != "dead"]
    assert others and all(c.status == "described" and c.confidence is not None for c in others)
    s = d.summary
    assert s["n_undescribed"] == 4 and s["n_latents"] == len(d.concepts)
    assert s["llm"]["retries"] >= 3 + 4 * 3 and s["llm"]["failed_requests"] >= 3 + 4 * 4


def test_an_interrupted_run_resumes_asking_only_for_what_is_missing(world, stub, tmp_path):
    # reference: how many requests an uninterrupted run needs
    describe(world, settings(stub, tmp_path, cache=str(tmp_path / "reference.jsonl")))
    needed = {r["hash"] for r in stub.chat_requests()}
    stub.requests.clear()

    # 1) interrupted by the caller after 3 finished latents
    seen = []

    def stop_after_three(c):
        seen.append(c.latent)
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        describe(world, settings(stub, tmp_path), on_concept=stop_after_three)
    first = {r["hash"] for r in stub.chat_requests()}
    assert 0 < len(first) < len(needed)
    # 2) interrupted by the server: the key stops working after a few more requests
    stub.requests.clear()
    stub.fail_after = 6
    with pytest.raises(ConfigError, match="rejected the API key"):
        describe(world, settings(stub, tmp_path))
    second = {r["hash"] for r in stub.chat_requests() if r["fault"] is None}
    assert second and not second & first  # nothing answered before is asked again
    # 3) the re-run completes and asks exactly for what is still missing
    stub.requests.clear()
    stub.fail_after = None
    d = describe(world, settings(stub, tmp_path))
    third = [r["hash"] for r in stub.chat_requests()]
    assert len(third) == len(set(third)) and set(third) == needed - first - second
    assert all(c.status in ("described", "dead") for c in d.concepts)
    lines = (tmp_path / "llm-cache.jsonl").read_text().splitlines()
    assert len(lines) == len(needed) and all(json.loads(ln)["key"] for ln in lines)


def test_a_wrong_key_fails_fast_with_one_clear_error(world, stub, tmp_path, monkeypatch):
    import recsae.interpret as interp

    def no_work(*a, **k):
        raise AssertionError("work started before the key was checked")

    monkeypatch.setattr(interp.SampleSet, "build", no_work)
    monkeypatch.setenv("STUB_LLM_KEY", "sk-wrong")
    with pytest.raises(ConfigError) as e:
        describe(world, settings(stub, tmp_path))
    msg = str(e.value)
    assert "rejected the API key" in msg and "STUB_LLM_KEY" in msg and "401" in msg and "\n" not in msg
    assert [r["kind"] for r in stub.requests] == ["models"]
    monkeypatch.delenv("STUB_LLM_KEY")
    with pytest.raises(ConfigError, match=r"\$STUB_LLM_KEY"):
        describe(world, settings(stub, tmp_path))
    with pytest.raises(ConfigError, match="invalid llm settings"):
        describe(world, {"no_such_option": 1})


def test_cli_reinterprets_a_bundle_through_an_openai_compatible_server(stub, small_bundle, data_dir, tmp_path):
    """`recsae interpret BUNDLE --describer llm --llm KEY=VALUE ...`: the real CLI, the real
    ``openai`` client, a real bundle; the rewritten bundle verifies and names the model used."""
    import shutil
    import subprocess

    from recsae.bundle import verify_bundle

    bundle = tmp_path / "bundle"
    shutil.copytree(small_bundle, bundle)
    args = [
        sys.executable, "-m", "recsae.cli", "interpret", str(bundle), "--describer", "llm",
        "--data-dir", str(data_dir), "--llm", f"base_url={stub.base_url}", "--llm", "model=stub-model",
        "--llm", "api_key_env=STUB_LLM_KEY", "--llm", "repeats=1", "--llm", "detection_per_class=5",
        "--llm", "chunk=10", "--llm", "concurrency=8", "--llm", f"cache={tmp_path / 'cache.jsonl'}",
    ]  # fmt: skip
    run = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    verify_bundle(bundle)
    concepts = json.loads((bundle / "concepts.json").read_text())
    described = [c for c in concepts["concepts"] if c.get("status") == "described"]
    assert described and all(c["describer"] == "llm" and c["model"] == "stub-model" for c in described)
    assert all(c["description"].startswith(f"Stub {c['latent']}:") for c in described)
    assert any(r["kind"] == "describe" for r in stub.requests)

    bad = subprocess.run([*args[:9], "--llm", "temprature=0"], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "temprature" in bad.stderr and "Traceback" not in bad.stderr
