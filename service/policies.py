"""Stored suppression policies and their audit trail.

A policy is a named set of latents (explicit, and/or a text query over the concept
descriptions resolved to latents when the policy is stored), a strength in [0, 1], a steering
mode and a baseline strength in [0, 1] (the SAE decoder bias: what all users share, chiefly
popularity; a policy may suppress only that). Requests name it with ``?policy=``.

Storage, with ``REDIS_URL`` (every replica sees the same policies):

* ``{prefix}:policies``      hash name -> policy JSON
* ``{prefix}:policies:gen``  generation, incremented by every change (in the same transaction)
* ``{prefix}:audit``         stream of changes (who, when, what), capped at ~10,000 entries

Durability: each replica keeps a copy of the policies with their generation in
``{RECSAE_STATE_DIR}/policies-{prefix}.json`` (written atomically after every change it makes
or sees). When Redis comes back empty (a restart without persistence), the first replica that
notices re-seeds it from that copy with one atomic Lua script; a copy with a lower generation
than Redis' never overwrites it. Changes are also appended to ``audit-{prefix}.jsonl`` there.

Without ``REDIS_URL`` the same copy is the store (one process).
"""

from __future__ import annotations

import json
from contextlib import nullcontext
import logging
import os
import re
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from redis.client import Pipeline

from recsae.concepts import Concept
from service.concepts import resolve_query
from service.redis_link import RedisLink, RedisUnavailable
from service.schemas import AuditEntry, Policy, PolicyIn

log = logging.getLogger("recsae.service.policies")

AUDIT_MAXLEN = 10_000

# KEYS: gen, hash. ARGV: gen, name1, json1, name2, json2, ...
# Replace the stored policies unless Redis already holds the same or a newer generation.
_RESEED = """
local cur = redis.call('GET', KEYS[1])
if cur and tonumber(cur) >= tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[2])
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""


class PolicyInputError(ValueError):
    """A policy that cannot be stored; ``field`` names the offending body field."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class PolicyStoreUnavailable(RuntimeError):
    """Redis is configured but unreachable: changes are refused so replicas cannot diverge."""


class PolicyStore:
    def __init__(
        self,
        concepts: list[Concept],
        n_latents: int,
        link: RedisLink | None = None,
        bundle_hash: str | None = None,
        prefix: str = "recsae",
        state_dir: str | Path | None = None,
        sync_s: float = 2.0,
    ):
        self.concepts = concepts
        self.n_latents = int(n_latents)
        self.bundle_hash = bundle_hash
        self._foreign: dict[tuple[str, float], list[int]] = {}
        self.link = link
        self.hash_key = f"{prefix}:policies"
        self.gen_key = f"{prefix}:policies:gen"
        self.audit_key = f"{prefix}:audit"
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", prefix)
        self.state_dir = Path(state_dir) if state_dir else None
        self.path = self.state_dir / f"policies-{safe}.json" if self.state_dir else None
        self.audit_path = self.state_dir / f"audit-{safe}.jsonl" if self.state_dir else None
        self.sync_s = sync_s
        self._mirror: dict[str, Policy] = {}
        self._gen = 0
        self._audit: deque[AuditEntry] = deque(maxlen=AUDIT_MAXLEN)
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._load_file()
        if link is not None:
            self._reseed_script = link.client.register_script(_RESEED)
            link.on_recover(self._sync_quietly)

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        """Reconcile with Redis once, then keep the local copy fresh in a daemon thread."""
        self._sync_quietly()
        if self.link is not None and self.sync_s > 0:
            self._thread = threading.Thread(target=self._loop, name="recsae-policy-sync", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def _loop(self) -> None:
        while not self._stop.wait(self.sync_s):
            self._sync_quietly()

    def _sync_quietly(self) -> None:
        try:
            self.sync()
        except RedisUnavailable:
            pass
        except Exception:  # noqa: BLE001 - the sync thread must survive anything
            log.exception("policy sync failed")

    # -- durable copy ------------------------------------------------------------------------------
    def _load_file(self) -> None:
        if self.path is None:
            return
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
        except OSError as e:
            log.error("cannot create RECSAE_STATE_DIR %s (%s): policies will not survive a Redis restart", self.state_dir, e)
            return
        if not self.path.exists():
            return
        try:
            data = json.loads(self.path.read_text())
            self._mirror = {n: Policy.model_validate(p) for n, p in data.get("policies", {}).items()}
            self._gen = int(data.get("gen", 0))
            log.info("loaded %d policies (generation %d) from %s", len(self._mirror), self._gen, self.path)
        except (OSError, ValueError) as e:
            log.error("ignoring unreadable policy copy %s (%s)", self.path, e)

    def _save_file(self) -> None:
        if self.path is None:
            return
        body = json.dumps(
            {
                "gen": self._gen,
                "saved_at": time.time(),
                "policies": {n: p.model_dump() for n, p in sorted(self._mirror.items())},
            },
            indent=1,
        )
        try:
            fd, tmp = tempfile.mkstemp(prefix=".policies-", dir=self.path.parent)
            with os.fdopen(fd, "w") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as e:
            log.error("cannot write the policy copy %s (%s): it will not survive a Redis restart", self.path, e)

    def _append_audit_file(self, entry: AuditEntry) -> None:
        if self.audit_path is None:
            return
        try:
            fd = os.open(self.audit_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            os.fchmod(fd, 0o600)  # who changed what: not for every local user (older copies were 0644)
            with os.fdopen(fd, "a") as f:
                f.write(entry.model_dump_json() + "\n")
        except OSError as e:
            log.error("cannot append to %s (%s)", self.audit_path, e)

    # -- Redis reconciliation ---------------------------------------------------------------------
    def sync(self) -> None:
        """Make Redis and the local copy agree (raises RedisUnavailable when Redis is down).

        Redis has no generation (it restarted empty) or an older one -> re-seed it from the copy;
        Redis has a different generation -> refresh the copy from Redis.
        """
        if self.link is None:
            return
        raw = self.link.run("policies_sync", lambda r: r.get(self.gen_key))
        redis_gen = int(raw) if raw is not None else None
        with self._lock:
            if (redis_gen is None and (self._gen > 0 or self._mirror)) or (
                redis_gen is not None and redis_gen < self._gen
            ):
                self._reseed()
                return
            if redis_gen is not None and redis_gen != self._gen:
                self._refresh()

    def _reseed(self) -> None:
        args: list[Any] = [max(self._gen, 1)]
        for name, p in self._mirror.items():
            args += [name, p.model_dump_json()]
        done = self.link.run(  # type: ignore[union-attr]
            "policies_reseed",
            lambda r: self._reseed_script(keys=[self.gen_key, self.hash_key], args=args, client=r),
        )
        if done:
            self._gen = max(self._gen, 1)
            log.warning(
                "Redis held no policies (or older ones): re-seeded %d policies, generation %d, from %s",
                len(self._mirror), self._gen, self.path,
            )
            self._reseed_audit(
                AuditEntry(id="", ts=time.time(), who="system", action="reseed",
                           policy="*", detail=f"{len(self._mirror)} policies from the durable copy")
            )
        else:
            self._refresh()

    def _reseed_audit(self, event: AuditEntry) -> None:
        """After re-seeding the policies: an empty audit stream (Redis restarted without
        persistence) gets the durable copy's entries back, and the re-seed itself is recorded
        in the stream as well as in the copy."""
        def fields(e: AuditEntry) -> dict:
            return {"ts": repr(e.ts), "who": e.who, "action": e.action, "policy": e.policy, "detail": e.detail}

        def tx(r: Any) -> Any:
            pipe = r.pipeline(transaction=True)
            if r.xlen(self.audit_key) == 0:
                for e in self._audit_file_entries():
                    pipe.xadd(self.audit_key, fields(e), maxlen=AUDIT_MAXLEN, approximate=True)
            pipe.xadd(self.audit_key, fields(event), maxlen=AUDIT_MAXLEN, approximate=True)
            return pipe.execute()[-1]

        try:
            entry_id = self.link.run("audit_reseed", tx)  # type: ignore[union-attr]
            event.id = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
        except RedisUnavailable:
            event.id = f"local-{time.time_ns()}"
        self._record_audit_local(event)

    def _audit_file_entries(self) -> list[AuditEntry]:
        """The newest entries of the durable audit copy (oldest first; unreadable lines skipped)."""
        if self.audit_path is None or not self.audit_path.exists():
            return []
        out: deque[AuditEntry] = deque(maxlen=AUDIT_MAXLEN)
        try:
            with open(self.audit_path) as f:
                for line in f:
                    try:
                        out.append(AuditEntry.model_validate_json(line))
                    except ValueError:
                        continue
        except OSError as e:
            log.error("cannot read the audit copy %s (%s)", self.audit_path, e)
        return list(out)

    def _refresh(self) -> None:
        def read(r: Any) -> list:
            pipe = r.pipeline(transaction=True)
            pipe.get(self.gen_key)
            pipe.hgetall(self.hash_key)
            return pipe.execute()

        gen, table = self.link.run("policies_refresh", read)  # type: ignore[union-attr]
        mirror = {}
        for name, raw in table.items():
            try:
                mirror[name.decode()] = Policy.model_validate_json(raw)
            except ValueError:
                log.warning("ignoring malformed policy %r in Redis", name)
        with self._lock:
            if int(gen or 0) < self._gen:  # read before a change this replica has just committed
                return
            self._mirror, self._gen = mirror, int(gen or 0)
            self._save_file()

    # -- reads on the request path ----------------------------------------------------------------
    def queue(self, pipe: Pipeline, name: str) -> None:
        pipe.hget(self.hash_key, name)

    def resolve(self, name: str, raw: bytes | None) -> Policy | None:
        """The policy from an HGET reply; a miss re-checks Redis (it may have restarted empty)."""
        if raw is not None:
            try:
                return Policy.model_validate_json(raw)
            except ValueError:
                log.warning("malformed policy %r in Redis; using the local copy", name)
                return self._mirror.get(name)
        try:
            self.sync()
        except RedisUnavailable:
            pass
        return self._mirror.get(name)

    def get(self, name: str) -> Policy | None:
        if self.link is None:
            return self._mirror.get(name)
        try:
            raw = self.link.run("policy", lambda r: r.hget(self.hash_key, name))
        except RedisUnavailable:
            return self.fallback(name)
        return self.resolve(name, raw)

    def fallback(self, name: str) -> Policy | None:
        return self._mirror.get(name)

    def changed(self) -> None:
        """Redis reported a change to the policy keys: re-seed it if it lost them, else re-read
        them (also catches an operator's HSET that did not bump the generation)."""
        with self._lock:
            gen = self._gen
            self.sync()
            if self._gen == gen:
                self._refresh()

    def current(self, name: str) -> Policy | None:
        """The request path's read: the local copy, kept coherent by the Redis tracker
        (``service.core.Core``; the sync thread is the safety net). No round trip."""
        return self._mirror.get(name)

    def list(self) -> list[Policy]:
        if self.link is not None:
            try:
                self._refresh()
            except RedisUnavailable:
                pass
        with self._lock:
            return [self._mirror[n] for n in sorted(self._mirror)]

    def effective_latents(self, policy: Policy) -> dict[int, float]:
        """The latents this replica suppresses for ``policy``, with their strengths.

        Latent ids are only meaningful for the bundle they were resolved against. During a
        rolling upgrade a policy stored by a replica with another bundle is re-resolved here
        from its text query (memoised per version of the policy), at the policy's strength; its
        explicit ids and their own strengths are ignored.
        """
        if policy.bundle_hash is None or policy.bundle_hash == self.bundle_hash:
            return {j: policy.strength_of(j) for j in policy.latents if j < self.n_latents}
        key = (policy.name, policy.updated_at)
        found = self._foreign.get(key)
        if found is None:
            found = resolve_query(self.concepts, policy.query) if policy.query else []
            if len(self._foreign) > 256:
                self._foreign.clear()
            self._foreign[key] = found
            log.warning(
                "policy %r was stored for bundle %s, this replica serves %s: applying its query "
                "(%d latents), not its %d explicit latent ids",
                policy.name, policy.bundle_hash[:8], (self.bundle_hash or "?")[:8], len(found), len(policy.explicit),
            )
        return {j: policy.strength for j in found}

    # -- changes (admin) --------------------------------------------------------------------------
    def resolve_latents(self, body: PolicyIn) -> list[int]:
        bad = [j for j in body.latent_ids() if j >= self.n_latents]
        if bad:
            raise PolicyInputError(
                "latents", f"unknown latent ids {bad[:10]}: this bundle has latents 0..{self.n_latents - 1}"
            )
        latents = set(body.latent_ids())
        if body.query:
            found = resolve_query(self.concepts, body.query)
            if not found:
                raise PolicyInputError(
                    "query", f"query {body.query!r} matches no described concept; see GET /concepts?q="
                )
            latents |= set(found)
        return sorted(latents)

    def put(self, name: str, body: PolicyIn, who: str) -> Policy:
        latents = self.resolve_latents(body)
        with self._patient():
            return self._put(name, body, who, latents)

    def _patient(self) -> Any:
        return self.link.patient() if self.link is not None else nullcontext()

    def _put(self, name: str, body: PolicyIn, who: str, latents: list[int]) -> Policy:
        now = time.time()
        self._require_redis_sync()
        with self._lock:
            old = self._mirror.get(name)
            policy = Policy(
                name=name, latents=latents, explicit=body.latent_ids(), query=body.query,
                bundle_hash=self.bundle_hash, strength=body.strength, strengths=body.own_strengths(),
                mode=body.mode, baseline=body.baseline,
                description=body.description, created_at=old.created_at if old else now,
                updated_at=now, updated_by=who,
            )
            detail = json.dumps({"latents": latents, "query": body.query, "strength": body.strength,
                                 "strengths": body.own_strengths(), "mode": body.mode, "baseline": body.baseline})
            self._commit("put", name, policy, who, detail)
        return policy

    def delete(self, name: str, who: str) -> bool:
        with self._patient():
            self._require_redis_sync()
            with self._lock:
                if name not in self._mirror:
                    return False
                self._commit("delete", name, None, who, "")
        return True

    def _require_redis_sync(self) -> None:
        if self.link is None:
            return
        try:
            self.sync()
        except RedisUnavailable as e:
            raise PolicyStoreUnavailable(
                "the policy store (Redis) is unreachable; policies cannot change now, retry later"
            ) from e

    def _commit(self, action: str, name: str, policy: Policy | None, who: str, detail: str) -> None:
        ts = time.time()
        fields = {"ts": repr(ts), "who": who, "action": action, "policy": name, "detail": detail}
        skipped = False
        if self.link is not None:
            def tx(r: Any) -> list:
                pipe = r.pipeline(transaction=True)
                if policy is not None:
                    pipe.hset(self.hash_key, name, policy.model_dump_json())
                else:
                    pipe.hdel(self.hash_key, name)
                pipe.incr(self.gen_key)
                pipe.xadd(self.audit_key, fields, maxlen=AUDIT_MAXLEN, approximate=True)
                return pipe.execute()

            try:
                res = self.link.run("policies_write", tx)
            except RedisUnavailable as e:
                raise PolicyStoreUnavailable(
                    "the policy store (Redis) is unreachable; the change was not applied, retry later"
                ) from e
            skipped = int(res[1]) != self._gen + 1  # another replica changed something meanwhile
            self._gen = int(res[1])
            entry_id = res[2].decode() if isinstance(res[2], bytes) else str(res[2])
        else:
            self._gen += 1
            entry_id = f"{int(ts * 1000)}-{self._gen}"
        if policy is not None:
            self._mirror[name] = policy
        else:
            self._mirror.pop(name, None)
        self._save_file()
        if skipped:
            try:
                self._refresh()
            except RedisUnavailable:
                pass
        entry = AuditEntry(id=entry_id, ts=ts, **{k: v for k, v in fields.items() if k != "ts"})
        self._record_audit_local(entry)

    def _record_audit_local(self, entry: AuditEntry) -> None:
        self._audit.append(entry)
        self._append_audit_file(entry)

    def audit(self, limit: int = 100) -> list[AuditEntry]:
        if self.link is not None:
            try:
                rows = self.link.run("audit", lambda r: r.xrevrange(self.audit_key, count=limit))
                return [_audit_entry(i, f) for i, f in rows]
            except RedisUnavailable:
                pass
        return list(reversed(self._audit))[:limit]


def _audit_entry(entry_id: bytes, fields: dict[bytes, bytes]) -> AuditEntry:
    f = {k.decode(): v.decode() for k, v in fields.items()}
    return AuditEntry(
        id=entry_id.decode(), ts=float(f.get("ts", 0)), who=f.get("who", "?"),
        action=f.get("action", "put"), policy=f.get("policy", "?"), detail=f.get("detail", ""),
    )
