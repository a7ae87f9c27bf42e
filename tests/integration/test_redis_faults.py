"""Redis failures and absence: outages, restarts, durable policies, round trips.

Every test here runs its own ``redis-server`` (loopback, no persistence) that it may stop and
restart; the shared Redis is never touched. Core-level tests drive ``service.core.Core`` (the
request path minus HTTP); the last tests do the same over real HTTP against ``bentoml serve``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path

os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="recsae-prom-"))
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")

import pytest  # noqa: E402

from tests.devserver import Client, RedisServer, ServeProcess  # noqa: E402
from tests.conftest import serving_bundle  # noqa: E402

pytestmark = pytest.mark.e2e

if shutil.which("redis-server") is None:
    pytest.skip("redis-server is not installed", allow_module_level=True)

DESCRIBER = os.environ.get("RECSAE_TEST_DESCRIBER", "stats")
TOKEN = "fault-token-" + uuid.uuid4().hex[:8]
AUTH = {"Authorization": f"Bearer {TOKEN}"}
IGNORED_COMMANDS = {"info", "config|resetstat", "client|setinfo", "hello", "ping", "command", "command|docs"}


@pytest.fixture(scope="module")
def bundle() -> Path:
    return serving_bundle(DESCRIBER)


@pytest.fixture()
def redis_server():
    with RedisServer() as r:
        yield r


# Redis on loopback can take more than the service's 0.1 s socket timeout to answer on a loaded
# machine; a false outage would break the once-only log counts below. A stopped server refuses
# the connection at once, so every outage here is still seen at once.
LOADED_MACHINE_TIMEOUT_S = 2.0


def make_core(bundle, url, state_dir, prefix=None, **kw):
    from service.config import Settings
    from service.core import Core

    kw.setdefault("redis_timeout_s", LOADED_MACHINE_TIMEOUT_S)
    s = Settings(bundle=str(bundle), redis_url=url, redis_prefix=prefix or f"t{uuid.uuid4().hex[:8]}",
                 state_dir=str(state_dir), policy_sync_s=0, warmup=False, **kw)
    core = Core(s)
    core.start()
    return core


def rec(core, uid="1", **kw):
    from service.options import RecommendOptions

    return core.recommend_user(uid, RecommendOptions(**{"k": 10, "explain": True, **kw}))


def ids(body):
    return [i["item_id"] for i in body["items"]]


def commandstats(r) -> dict[str, int]:
    out = {}
    for name, v in r.info("commandstats").items():
        out[name.removeprefix("cmdstat_")] = int(v["calls"])
    return {k: v for k, v in out.items() if k not in IGNORED_COMMANDS}


def _total(counter) -> float:
    """Sum of a labelled counter over its labels, in this process."""
    return sum(smp.value for m in counter.collect() for smp in m.samples if smp.name.endswith("_total"))


# -- Core level -----------------------------------------------------------------------------------
def test_outage_is_served_from_memory_logged_once_and_recovers(bundle, redis_server, tmp_path, caplog):
    from service import metrics as M

    core = make_core(bundle, redis_server.url, tmp_path, redis_backoff_s=1.0)
    try:
        want = rec(core)
        hits0 = M.CACHE_HITS.labels("redis")._value.get()
        rec(core)
        assert M.CACHE_HITS.labels("redis")._value.get() > hits0
        caplog.set_level(logging.INFO, logger="recsae")
        redis_server.stop()
        fb0, tries0 = M.CACHE_FALLBACK._value.get(), _total(M.REDIS_ROUNDTRIPS)
        # at least 40 requests over at least two backoff periods (Redis is retried, still down)
        t_start, n = time.monotonic(), 0
        while n < 40 or time.monotonic() - t_start < 2.5:
            got = rec(core)
            n += 1
            assert [i["item_id"] for i in got["items"]] == [i["item_id"] for i in want["items"]]
            assert [a["latent"] for a in got["active_latents"]] == [a["latent"] for a in want["active_latents"]]
            time.sleep(0.02)
        elapsed = time.monotonic() - t_start
        assert not core.link.up
        assert M.CACHE_FALLBACK._value.get() > fb0
        # requests do not wait on the dead server: it is tried once per backoff period, not per
        # request (a count, so a slow machine cannot fail it; 2 round trips a request, +1 period)
        tries = _total(M.REDIS_ROUNDTRIPS) - tries0
        assert tries <= 2 * (elapsed / core.settings.redis_backoff_s + 1), (tries, n, elapsed)
        down_logs = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(down_logs) == 1, [r.getMessage() for r in caplog.records]

        redis_server.start()
        t0 = time.monotonic()
        while True:  # the next try after the backoff period finds it; 60 s: only a hang fails
            hits = M.CACHE_HITS.labels("redis")._value.get()
            rec(core)
            if core.link.up and M.CACHE_HITS.labels("redis")._value.get() > hits or time.monotonic() - t0 > 60:
                break
            time.sleep(0.1)
        resumed = time.monotonic() - t0
        assert core.link.up, f"cache use did not resume within {resumed:.1f} s"
        rec(core)
        assert M.CACHE_HITS.labels("redis")._value.get() > hits  # entries written back after restart
        assert len([r for r in caplog.records if "reachable again" in r.getMessage()]) == 1
    finally:
        core.close()


def test_policies_survive_a_redis_restart(bundle, redis_server, tmp_path):
    from service.policies import PolicyStoreUnavailable
    from service.schemas import PolicyIn

    core = make_core(bundle, redis_server.url, tmp_path / "a")
    try:
        active = [a["latent"] for a in rec(core)["active_latents"]]
        core.policies.put("quiet", PolicyIn(latents=active[:2]), who="test")
        want = ids(rec(core, policy="quiet"))
        assert (tmp_path / "a" / f"policies-{core.settings.redis_prefix}.json").exists()

        redis_server.stop()
        assert ids(rec(core, policy="quiet")) == want  # served from memory
        with pytest.raises(PolicyStoreUnavailable):
            core.policies.put("other", PolicyIn(latents=[1]), who="test")
        redis_server.start()  # comes back EMPTY (no persistence)
        time.sleep(core.settings.redis_backoff_s + 0.1)
        assert ids(rec(core, policy="quiet")) == want
        r = redis_server.client()
        assert r.hexists(core.policies.hash_key, "quiet"), "the policy was not re-seeded into Redis"
        assert int(r.get(core.policies.gen_key)) >= 1
    finally:
        core.close()

    # a replica starting later against an empty Redis re-seeds it from its durable copy
    redis_server.stop()
    redis_server.start()
    from service.core import Core

    fresh = Core(core.settings)
    try:
        fresh.start()
        assert redis_server.client().hexists(fresh.policies.hash_key, "quiet")
        assert ids(rec(fresh, policy="quiet")) == want
    finally:
        fresh.close()


def test_a_stale_copy_never_overwrites_newer_redis_state(bundle, redis_server, tmp_path):
    from dataclasses import replace

    from service.core import Core
    from service.schemas import PolicyIn

    a = make_core(bundle, redis_server.url, tmp_path / "a")
    try:
        a.policies.put("p1", PolicyIn(latents=[1]), who="a")
        (tmp_path / "b").mkdir()
        name = f"policies-{a.settings.redis_prefix}.json"
        shutil.copy(tmp_path / "a" / name, tmp_path / "b" / name)  # B's copy: generation 1
        a.policies.put("p2", PolicyIn(latents=[2]), who="a")
        a.policies.delete("p1", who="a")
    finally:
        a.close()
    b = Core(replace(a.settings, state_dir=str(tmp_path / "b")))
    try:
        b.start()
        assert [p.name for p in b.policies.list()] == ["p2"]
        assert '"p1"' not in (tmp_path / "b" / name).read_text()  # B's copy caught up
    finally:
        b.close()


def test_no_round_trip_per_request_in_the_steady_state(bundle, redis_server, tmp_path, monkeypatch):
    """Concepts and policies are read from process memory: explained requests, with or without a
    policy, send Redis nothing; a curator's plain SET and another replica's policy change still
    reach this process (Redis reports them to the tracker), within 1 s."""
    from service import metrics as M
    from service.schemas import PolicyIn

    # audit_sample=0: no background XADDs of the recent-traffic sample
    core = make_core(bundle, redis_server.url, tmp_path, audit_sample=0.0)
    other = make_core(bundle, redis_server.url, tmp_path / "other", prefix=core.settings.redis_prefix,
                      audit_sample=0.0)
    try:
        core.policies.put("p", PolicyIn(latents=[1, 2]), who="t")
        uids = [str(u) for u in core.bundle.users.user_ids[:25]]
        for u in uids:
            rec(core, u)
        r = redis_server.client()
        r.config_resetstat()
        rt0 = sum(M.REDIS_ROUNDTRIPS.labels(op)._value.get() for op in ("request", "concepts", "policy"))
        for u in uids:
            rec(core, u)
            rec(core, u, explain=False)
            rec(core, u, policy="p")
        assert commandstats(r) == {}
        assert sum(M.REDIS_ROUNDTRIPS.labels(op)._value.get() for op in ("request", "concepts", "policy")) == rt0

        # a curator edits one concept in Redis with a plain SET: both processes serve it
        body = rec(core, uids[0])
        j = body["active_latents"][0]["latent"]
        t0 = time.monotonic()
        r.set(core.store.key(j), b'{"latent": %d, "status": "described", "description": "curated \xe2\x80\x94 x", '
                                 b'"confidence": 0.5}' % j)
        for c in (core, other):
            while True:
                a = next(a for a in rec(c, uids[0])["active_latents"] if a["latent"] == j)
                if a["description"] == "curated \u2014 x" or time.monotonic() - t0 > 1.0:
                    break
                time.sleep(0.005)
            assert a["description"] == "curated \u2014 x" and a["confidence"] == 0.5, f"not applied after {time.monotonic() - t0:.2f} s"
        labels = {c["label"] for it in rec(other, uids[0])["items"] for c in it["explanation"]["contributions"]
                  if c["latent"] == j}
        assert labels == {"curated"}

        # a policy stored through one replica is applied by the other within 1 s
        t0 = time.monotonic()
        other.policies.put("new", PolicyIn(latents=[j]), who="other")
        while core.policies.current("new") is None and time.monotonic() - t0 < 1.0:
            time.sleep(0.005)
        assert rec(core, uids[0], policy="new")["suppressed"][0]["latent"] == j
        other.policies.delete("new", who="other")
        t0 = time.monotonic()
        while core.policies.current("new") is not None and time.monotonic() - t0 < 1.0:
            time.sleep(0.005)
        assert core.policies.current("new") is None

        # a deleted entry is answered from the bundle again and written back
        r.delete(core.store.key(j))
        t0 = time.monotonic()
        while not r.exists(core.store.key(j)) and time.monotonic() - t0 < 1.0:
            time.sleep(0.005)
        a = next(a for a in rec(core, uids[0])["active_latents"] if a["latent"] == j)
        assert a["description"] == core.store.summary(j).description and r.exists(core.store.key(j))
    finally:
        other.close()
        core.close()


def test_without_redis_everything_is_in_process_and_durable(bundle, tmp_path):
    from service.schemas import PolicyIn

    core = make_core(bundle, None, tmp_path)
    try:
        assert core.link is None
        base = rec(core)
        assert base["active_latents"]
        core.policies.put("local", PolicyIn(latents=[base["active_latents"][0]["latent"]], strength=1.0), who="t")
        with_policy = rec(core, policy="local")
        assert with_policy["suppressed"][0]["source"] == "policy:local"
        assert [e.action for e in core.policies.audit()] == ["put"]
    finally:
        core.close()
    again = make_core(bundle, None, tmp_path, prefix=core.settings.redis_prefix)
    try:
        assert again.settings.redis_url is None
        assert again.policies.get("local") is not None  # re-read from RECSAE_STATE_DIR
        assert (tmp_path / f"audit-{core.settings.redis_prefix}.jsonl").exists()
    finally:
        again.close()


# -- over HTTP, bentoml serve -----------------------------------------------------------------------
@pytest.fixture()
def served(bundle, redis_server, tmp_path):
    env = {
        "RECSAE_BUNDLE": str(bundle),
        "REDIS_URL": redis_server.url,
        "RECSAE_REDIS_PREFIX": f"fault-{uuid.uuid4().hex[:8]}",
        "RECSAE_ADMIN_TOKEN": TOKEN,
        "RECSAE_STATE_DIR": str(tmp_path / "state"),
        "RECSAE_POLICY_SYNC_S": "0",  # no background traffic: round trips are countable
        "RECSAE_AUDIT_SAMPLE": "0",  # nor recent-traffic samples (XADD from a background thread)
        "RECSAE_REDIS_TIMEOUT_S": str(LOADED_MACHINE_TIMEOUT_S),
    }
    with ServeProcess(env, log_dir=str(tmp_path)) as s:
        yield s


def test_http_round_trips_outage_and_restart(served, redis_server):
    c = Client(served.port)
    status, _ = c.request("PUT", "/admin/policies/calm", body={"latents": [1, 2, 3]}, headers=AUTH)
    assert status == 200
    uids = [str(u) for u in range(1, 21)]
    for u in uids:
        assert c.request("GET", "/recommend", {"user_id": u, "explain": "true"})[0] == 200
    r = redis_server.client()
    r.config_resetstat()
    for u in uids:
        assert c.request("GET", "/recommend", {"user_id": u, "explain": "true"})[0] == 200
    assert commandstats(r) == {}, "explained requests (and policies) must be served from process memory"

    # continuous load while Redis stops and comes back (empty)
    failures, done, stop = [], [0], threading.Event()

    def load():
        lc = Client(served.port)
        i = 0
        while not stop.is_set():
            i += 1
            for params in ({"user_id": uids[i % 20], "explain": "true"}, {"user_id": uids[i % 20], "policy": "calm"}):
                st, body = lc.request("GET", "/recommend", params)
                done[0] += 1
                if st != 200:
                    failures.append((st, body))
            time.sleep(0.01)
        lc.close()

    def wait_for_requests(n: int) -> None:
        """Until the load has sent n more requests (counts, not sleeps: a slow machine waits longer)."""
        goal, deadline = done[0] + n, time.monotonic() + 120
        while done[0] < goal and t.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)

    t = threading.Thread(target=load)
    t.start()
    try:
        wait_for_requests(10)
        redis_server.stop()
        stopped_at = time.monotonic()
        wait_for_requests(40)
        while time.monotonic() - stopped_at < 1.5:  # past one backoff period: Redis is retried, still down
            time.sleep(0.05)
        during_outage = done[0]
        redis_server.start()
        t0 = time.monotonic()
        while time.monotonic() - t0 < 60:  # the first try after the backoff finds it; only a hang fails
            text = c.request("GET", "/metrics")[1]
            if re.search(r"^recsae_redis_up\{[^}]*\} 1", text, re.M) and r.keys("*:concept:*"):
                break
            time.sleep(0.2)
        resumed = time.monotonic() - t0
        wait_for_requests(10)
    finally:
        stop.set()
        t.join(10)
    assert not failures, failures[:3]
    assert done[0] >= during_outage + 10 and during_outage >= 50, (during_outage, done[0])
    assert re.search(r"^recsae_redis_up\{[^}]*\} 1", text, re.M), f"Redis use not resumed {resumed:.1f} s after the restart"
    assert r.hexists(f"{served.env['RECSAE_REDIS_PREFIX']}:policies", "calm"), "policy not re-seeded"
    log = served.log()
    assert log.count("is unreachable") == 1, log[-3000:]
    assert log.count("reachable again") == 1, log[-3000:]
    text = c.request("GET", "/metrics")[1]
    assert re.search(r"^recsae_concept_cache_fallback_total [1-9]", text, re.M)
    assert re.search(r'^recsae_redis_errors_total\{op="tracking"\} [1-9]', text, re.M)
    c.close()


def test_two_served_replicas_apply_each_others_changes_within_a_second(bundle, redis_server, tmp_path):
    """Two `bentoml serve` replicas on one Redis: a policy stored through A and a concept curated
    in Redis are served by B within 1 s (measured from the change to B's first answer with it)."""
    env = {
        "RECSAE_BUNDLE": str(bundle),
        "REDIS_URL": redis_server.url,
        "RECSAE_REDIS_PREFIX": f"pair-{uuid.uuid4().hex[:8]}",
        "RECSAE_ADMIN_TOKEN": TOKEN,
        "RECSAE_POLICY_SYNC_S": "30",  # the periodic sync is not what makes this fast
    }
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    with ServeProcess({**env, "RECSAE_STATE_DIR": str(tmp_path / "a")}, log_dir=str(tmp_path / "a")) as a, \
            ServeProcess({**env, "RECSAE_STATE_DIR": str(tmp_path / "b")}, log_dir=str(tmp_path / "b")) as b:
        ca, cb = Client(a.port), Client(b.port)
        uid = "1"
        st, body = cb.request("GET", "/recommend", {"user_id": uid, "explain": "true"})
        assert st == 200
        j = body["active_latents"][0]["latent"]

        def until(check) -> float:
            t0 = time.monotonic()
            while time.monotonic() - t0 < 5:
                if check():
                    return time.monotonic() - t0
                time.sleep(0.01)
            return float("inf")

        def b_serves_policy() -> bool:
            st, body = cb.request("GET", "/recommend", {"user_id": uid, "policy": "quiet"})
            return st == 200 and [s["latent"] for s in body["suppressed"]] == [j]

        t0 = time.monotonic()
        assert ca.request("PUT", "/admin/policies/quiet", body={"latents": [j]}, headers=AUTH)[0] == 200
        put_s = time.monotonic() - t0
        policy_s = until(b_serves_policy) + put_s
        assert policy_s < 1.0, f"replica B applied A's policy after {policy_s:.2f} s"

        key = f"{env['RECSAE_REDIS_PREFIX']}:concept:{body['bundle_hash']}:{j}"
        redis_server.client().set(key, b'{"latent": %d, "status": "described", "description": "curated"}' % j)

        def b_serves_concept() -> bool:
            st, body = cb.request("GET", "/recommend", {"user_id": uid, "explain": "true"})
            return st == 200 and any(x["latent"] == j and x["description"] == "curated" for x in body["active_latents"])

        concept_s = until(b_serves_concept)
        assert concept_s < 1.0, f"replica B served the curated concept after {concept_s:.2f} s"
        print(f"policy applied by the other replica after {policy_s * 1000:.0f} ms, concept after "
              f"{concept_s * 1000:.0f} ms")
        ca.close()
        cb.close()


def test_a_policy_change_waits_out_a_slow_redis_while_the_request_path_does_not(bundle, redis_server, tmp_path):
    """Redis paused (SIGSTOP) for 0.4 s: a request-path read gives up at the 0.1 s socket timeout
    and marks Redis down, as designed; an operator's policy change right after it is neither
    refused by that backoff nor by the short timeout: it waits (up to 1 s) and lands."""
    import signal
    import threading

    from service.redis_link import RedisUnavailable
    from service.schemas import PolicyIn

    core = make_core(bundle, redis_server.url, tmp_path / "a", redis_timeout_s=0.1)
    pid = redis_server.proc.pid
    try:
        active = [a["latent"] for a in rec(core)["active_latents"]]
        os.kill(pid, signal.SIGSTOP)
        threading.Timer(0.4, os.kill, (pid, signal.SIGCONT)).start()
        with pytest.raises(RedisUnavailable):
            core.policies.link.run("probe", lambda r: r.get("nothing"))
        assert not core.policies.link.up
        core.policies.put("slow", PolicyIn(latents=active[:1]), who="test")
        assert redis_server.client().hexists(core.policies.hash_key, "slow")
        assert core.policies.link.up
        assert core.policies.delete("slow", who="test")
        assert not redis_server.client().hexists(core.policies.hash_key, "slow")
    finally:
        os.kill(pid, signal.SIGCONT)
        core.close()
