"""The LLM describer and scorer against a real HTTP stub of an OpenAI-compatible server: end to
end, faults (retried, then ``undescribed`` with the reason), resuming an interrupted run from
the answer cache, and a wrong key failing before any work."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llm_stub import KEY, StubLLM, names_world, tiny_world  # noqa: E402

from recsae import ConfigError  # noqa: E402
from recsae.interpret import interpret_activations  # noqa: E402


@pytest.fixture(scope="module")
def world():
    return tiny_world()


@pytest.fixture
def stub(monkeypatch):
    monkeypatch.setenv("STUB_LLM_KEY", KEY)
    with StubLLM(timeout_sleep=TIMEOUT_S + 1.0) as s:
        yield s


# The client's request timeout: generous, so a loaded machine never turns a slow stub answer into
# a spurious "timeout" fault (the stub's injected timeouts sleep past it).
TIMEOUT_S = 2.0


def settings(stub: StubLLM, tmp_path: Path, **kw) -> dict:
    return {
        "base_url": stub.base_url, "model": "stub-model", "api_key_env": "STUB_LLM_KEY",
        "timeout_s": TIMEOUT_S, "backoff_s": 0.01, "max_attempts": 4, "concurrency": 4, "repeats": 2,
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


def test_the_llm_gets_the_exemplar_evidence_on_items_known_only_by_name(stub, tmp_path):
    """Names-and-tags items: the prompt carries the exemplars (the stub names the latent by the
    first one it finds there) and the supported tags; the concept keeps its exemplars."""
    ds, kernel, emb, acts, groups = names_world()
    stub.by_exemplars = True
    d = interpret_activations(ds, kernel, emb, acts, describer="llm", llm=settings(stub, tmp_path), seed=0)
    for g, (name, items, tags) in enumerate(groups):
        c = d.concepts[g]
        titles = {ds.item_titles[i] for i in items}
        assert c.status == "described" and set(c.exemplars) <= titles and len(c.exemplars) == 3, (name, c)
        assert c.description.removeprefix(f"Stub {g}: ") in titles, c.description  # named by an exemplar
        assert c.attributes and ":item:" in f":{c.attributes[0]}"  # the exemplar's attribute, validated
        assert c.confidence is not None and c.confidence >= 0.7, c
        assert c.description.removeprefix(f"Stub {g}: ") in c.exemplars  # the same exemplars as the prompt's


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


def test_cli_reinterprets_a_bundle_through_an_openai_compatible_server(stub, synthetic_bundle, tmp_path):
    """`recsae interpret BUNDLE --describer llm --llm KEY=VALUE ...`: the real CLI, the real
    ``openai`` client, a real bundle; the rewritten bundle verifies and names the model used."""
    import shutil
    import subprocess

    from recsae.bundle import verify_bundle

    bundle = tmp_path / "bundle"
    shutil.copytree(synthetic_bundle, bundle)
    args = [
        sys.executable, "-m", "recsae.cli", "interpret", str(bundle), "--describer", "llm",
        "--data-dir", str(tmp_path), "--llm", f"base_url={stub.base_url}", "--llm", "model=stub-model",
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

    bad = subprocess.run([*args[:9], "--llm", "temprature=0"], capture_output=True, text=True, timeout=600)
    assert bad.returncode != 0 and "temprature" in bad.stderr and "Traceback" not in bad.stderr


# -- rate limits (issue 6) ------------------------------------------------------------------------
def test_requests_per_minute_is_never_exceeded_and_the_job_finishes(world, stub, tmp_path):
    """Token bucket: bucket size (the allowed initial burst) = one second's worth of requests.
    Over any window of W seconds the stub sees at most burst + rate * W requests, W widened by
    1 s for the jitter between leaving the client and arriving at the stub (connection setup,
    scheduling on a loaded machine); the long-run rate is checked without any allowance."""
    rpm = 600.0
    rate, burst = rpm / 60, rpm / 60
    kw = dict(requests_per_minute=rpm, concurrency=8, repeats=1, detection_per_class=10)
    d = describe(world, settings(stub, tmp_path, **kw))
    assert all(c.status in ("described", "dead") and (c.status == "dead" or c.confidence is not None) for c in d.concepts)
    t = sorted(r["t"] for r in stub.chat_requests())
    n = len(t)
    assert n > 2 * burst  # the limit must actually bite
    for i in range(n):
        for j in range(i, n):
            assert j - i + 1 <= burst + rate * (t[j] - t[i] + 1.0), (i, j, t[j] - t[i])
    assert t[-1] - t[0] >= (n - burst - 1) / rate * 0.9


def test_the_token_bucket_is_exact_under_concurrency():
    """Grant times (as the limiter returns them, so thread scheduling cannot blur them), 8 threads:
    never more than burst + rate * W in any window."""
    import threading
    import time

    from recsae.interpret.llm import RateLimiter

    lim = RateLimiter(per_minute=1200)  # 20/s, burst 20
    times, lock = [], threading.Lock()

    def worker():
        for _ in range(8):
            granted = lim.acquire()
            with lock:
                times.append(granted)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    t = sorted(times)
    for i in range(len(t)):
        for j in range(i, len(t)):
            assert j - i + 1 <= 20 + 20 * (t[j] - t[i]) + 1e-6
    assert t[-1] - t[0] >= (64 - 20) / 20 * 0.95


def test_a_429_retry_after_header_is_honoured(world, stub, tmp_path):
    stub.retry_after = 0.6
    stub.faults[("describe", 0)] = ["429"]
    d = describe(world, settings(stub, tmp_path, scorer="stats", backoff_s=0.01, concurrency=1))
    assert d.by_latent()[0].status == "described"
    tries = [r["t"] for r in stub.chat_requests("describe") if r["latent"] == 0]
    assert len(tries) == 2 and tries[1] - tries[0] >= 0.6 - 0.01  # not the 0.01 s backoff


# -- batch mode (issue 6) -------------------------------------------------------------------------
def batch_settings(stub, tmp_path, **kw):
    return settings(stub, tmp_path, mode="batch", batch_poll_s=0.02, **kw)


def strip(d):
    return [c.model_dump() for c in d.concepts]


def test_batch_mode_gives_the_same_concepts_as_sync_mode(world, stub, tmp_path, capsys):
    sync = describe(world, settings(stub, tmp_path, cache=str(tmp_path / "sync.jsonl")))
    n_sync = len(stub.chat_requests())
    stub.requests.clear()
    stub.batch_polls = 2  # in progress for two polls, then done
    d = describe(world, batch_settings(stub, tmp_path))
    assert strip(d) == strip(sync)
    assert stub.chat_requests() == []  # everything came through the two batches
    assert stub.api_calls.count("create_batch") == 2 and stub.api_calls.count("upload") == 2
    kinds = [r["kind"] for r in stub.batch_lines]
    assert set(kinds[: kinds.index("score")]) == {"describe"} and set(kinds[kinds.index("score") :]) == {"score"}
    assert len(stub.batch_lines) == n_sync
    u = d.summary["llm"]
    assert u["batches"] == 2 and u["batch_requests"] == n_sync == u["requests"] and u["prompt_tokens"] > 0
    assert "LLM batch (describe)" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.batch-*.json"))  # state removed once consumed
    # a re-run is answered from the cache: no batch, no request
    again = describe(world, batch_settings(stub, tmp_path))
    assert strip(again) == strip(sync) and stub.api_calls.count("create_batch") == 2 and stub.chat_requests() == []


def test_a_batch_with_failed_lines_finishes_with_those_retried_or_undescribed(world, stub, tmp_path):
    stub.faults[("describe", 0)] = ["500"]  # error line in the batch; the sync retry succeeds
    stub.faults[("describe", 2)] = ["timeout"]  # missing from the batch output
    stub.faults[("describe", 3)] = ["invalid_json"]  # an answer that fails validation
    stub.always[("describe", 1)] = "500"  # fails in the batch and on every sync attempt
    d = describe(world, batch_settings(stub, tmp_path))
    by = d.by_latent()
    for j in (0, 2, 3):
        assert by[j].status == "described" and by[j].confidence is not None, by[j]
    assert by[1].status == "undescribed" and "4 attempts" in by[1].reason and "batch: HTTP 500" in by[1].reason
    sync = [r["latent"] for r in stub.chat_requests("describe")]
    assert sorted(sync) == [0, 1, 1, 1, 1, 2, 3]  # only what the batch did not answer
    assert all(c.status in ("described", "dead") for c in d.concepts if c.latent != 1)


def test_a_failed_batch_falls_back_to_sync(world, stub, tmp_path):
    stub.batch_fail = True
    d = describe(world, batch_settings(stub, tmp_path))
    assert all(c.status in ("described", "dead") and (c.status == "dead" or c.confidence is not None) for c in d.concepts)
    assert stub.api_calls.count("create_batch") == 1  # describe failed: nothing to score by batch
    assert stub.chat_requests("describe") and stub.chat_requests("score")


def test_an_interrupted_batch_job_resumes_polling_the_same_batch(world, stub, tmp_path, monkeypatch):
    from recsae.interpret import connect_llm

    monkeypatch.setenv("STUB_LLM_KEY", KEY)
    stub.batch_polls = 3
    client = connect_llm(batch_settings(stub, tmp_path))

    def interrupt(_s):
        raise KeyboardInterrupt

    client._wait = interrupt
    with pytest.raises(KeyboardInterrupt):
        describe(world, client)
    state = tmp_path / "llm-cache.batch-describe.json"
    assert json.loads(state.read_text())["batches"] == ["batch_1"]
    assert stub.api_calls.count("create_batch") == 1
    stub.api_calls.clear()
    d = describe(world, batch_settings(stub, tmp_path))  # a fresh process, same work dir
    assert all(c.status in ("described", "dead") for c in d.concepts)
    assert "retrieve batch_1" in stub.api_calls
    assert stub.api_calls.count("create_batch") == 1  # only the score batch is new
    assert stub.chat_requests("describe") == [] and not state.exists()


def test_batch_settings_are_validated(world, stub, tmp_path):
    with pytest.raises(ConfigError, match="mode"):
        describe(world, settings(stub, tmp_path, mode="bulk"))
    with pytest.raises(ConfigError, match="requests_per_minute"):
        describe(world, settings(stub, tmp_path, requests_per_minute=0))
    from recsae.cli import _parse_kv
    from recsae.interpret import LLMSettings

    s = LLMSettings(**_parse_kv(["mode=batch", "requests_per_minute=500", "batch_poll_s=60", "tokens_per_minute=2e5"]))
    assert (s.mode, s.requests_per_minute, s.batch_poll_s, s.tokens_per_minute) == ("batch", 500, 60, 2e5)


def test_a_request_larger_than_the_token_bucket_leaves_it_in_debt():
    import time

    from recsae.interpret.llm import RateLimiter

    lim = RateLimiter(per_minute=600)  # 10 tokens/s, bucket 10
    t0 = time.monotonic()
    lim.acquire(30)  # a full bucket is enough to start ...
    lim.acquire(1)  # ... but the next one waits for the debt (20) plus itself
    assert time.monotonic() - t0 >= 2.0
