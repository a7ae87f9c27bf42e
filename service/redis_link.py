"""One Redis connection pool with a circuit breaker.

Every Redis round trip of the service goes through :meth:`RedisLink.run`. When Redis fails
(connection refused, timeout), the link is marked down: callers get :class:`RedisUnavailable`
immediately (they fall back to in-process state) until ``backoff_s`` has passed, then the next
call tries Redis again. An outage is logged once when it starts and once when it ends, never
per request. Socket timeouts are short, and redis-py's own retry loop is disabled apart from
one immediate reconnect (a pooled connection that died with a restarted server).
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from service.metrics import REDIS_ERRORS, REDIS_ROUNDTRIPS, REDIS_UP

log = logging.getLogger("recsae.service.redis")


class RedisUnavailable(Exception):
    """Redis is down (or in backoff after a failure): use the in-process fallback."""


class RedisLink:
    def __init__(self, url: str, timeout_s: float = 0.1, backoff_s: float = 1.0, prefix: str = "recsae"):
        self.url = url
        self._up_gauge = REDIS_UP.labels(prefix)
        self.backoff_s = backoff_s
        self.client = redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
            health_check_interval=0,
            decode_responses=False,
        )
        self._patient_client: redis.Redis | None = None
        self._patient_timeout_s = max(1.0, timeout_s)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._recovered: list[Callable[[], None]] = []
        self._up_gauge.set(1)

    @property
    def up(self) -> bool:
        return self._down_since is None

    def on_recover(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` (in the calling thread, errors logged) when Redis answers after an outage."""
        self._recovered.append(fn)

    @contextmanager
    def patient(self) -> Iterator[None]:
        """Operator writes (policy changes) in this block: a longer timeout, and no backoff.

        The request path's timeout is short because a slow Redis must not slow answers; a policy
        change is a deliberate, rare action, and refusing it because one read on a loaded machine
        took 0.1 s (or because the hot path marked Redis down a moment ago) helps no one.
        """
        if self._patient_client is None:
            self._patient_client = self.client.__class__(
                connection_pool=redis.ConnectionPool(
                    connection_class=self.client.connection_pool.connection_class,
                    **{**self.client.connection_pool.connection_kwargs,
                       "socket_timeout": self._patient_timeout_s,
                       "socket_connect_timeout": self._patient_timeout_s},
                )
            )
        self._local.patient = True
        try:
            yield
        finally:
            self._local.patient = False

    def run(self, op: str, fn: Callable[[redis.Redis], Any]) -> Any:
        """One round trip: ``fn(client)`` must issue exactly one command or one pipeline."""
        patient = getattr(self._local, "patient", False)
        if not patient and self._down_since is not None and time.monotonic() < self._retry_at:
            raise RedisUnavailable("Redis is down (backing off)")
        REDIS_ROUNDTRIPS.labels(op).inc()
        try:
            result = fn(self._patient_client if patient and self._patient_client is not None else self.client)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
            REDIS_ERRORS.labels(op).inc()
            self._mark_down(e)
            raise RedisUnavailable(str(e)) from e
        except redis.RedisError as e:  # an error reply: Redis is up, this operation failed
            REDIS_ERRORS.labels(op).inc()
            log.warning("Redis %s failed: %s", op, e)
            raise RedisUnavailable(str(e)) from e
        if self._down_since is not None:
            self._mark_up()
        return result

    def begin(self, op: str, commands: list[tuple]) -> "Pending":
        """Send ``commands`` as one pipeline now; read the replies later with ``Pending.result()``.

        One round trip, overlapped with whatever the caller computes in between (the request
        path sends its concept MGET right after encoding and reads it after scoring).
        """
        if self._down_since is not None and time.monotonic() < self._retry_at:
            raise RedisUnavailable("Redis is down (backing off)")
        REDIS_ROUNDTRIPS.labels(op).inc()
        pool = self.client.connection_pool
        try:
            conn = pool.get_connection()
        except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
            REDIS_ERRORS.labels(op).inc()
            self._mark_down(e)
            raise RedisUnavailable(str(e)) from e
        try:
            conn.send_packed_command(conn.pack_commands(commands))
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            conn.disconnect()
            pool.release(conn)
            # a pooled connection that died with a restarted server: one synchronous retry
            return Pending(self, op, None, commands, self._execute(op, commands))
        return Pending(self, op, conn, commands)

    def _execute(self, op: str, commands: list[tuple]) -> list:
        def pipeline(r: redis.Redis) -> list:
            pipe = r.pipeline(transaction=False)
            for c in commands:
                pipe.execute_command(*c)
            return pipe.execute()

        return self.run(op, pipeline)

    def _mark_down(self, e: Exception) -> None:
        now = time.monotonic()
        with self._lock:
            self._retry_at = now + self.backoff_s
            if self._down_since is not None:
                return
            self._down_since = now
        self._up_gauge.set(0)
        log.error(
            "Redis at %s is unreachable (%s): answering from in-process state; retrying every %.1f s",
            _redact(self.url), e, self.backoff_s,
        )

    def _mark_up(self) -> None:
        with self._lock:
            if self._down_since is None:
                return
            outage = time.monotonic() - self._down_since
            self._down_since = None
        self._up_gauge.set(1)
        log.warning("Redis at %s is reachable again after %.1f s", _redact(self.url), outage)
        for fn in self._recovered:
            try:
                fn()
            except Exception:  # noqa: BLE001 - a failing hook must not fail the request
                log.exception("Redis recovery hook failed")

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # noqa: BLE001
            pass


def _redact(url: str) -> str:
    """redis://user:secret@host -> redis://user:***@host"""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    cred, _, host = rest.rpartition("@")
    user = cred.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


class Pending:
    """Replies of commands already sent by :meth:`RedisLink.begin`."""

    __slots__ = ("link", "op", "conn", "commands", "_replies")

    def __init__(self, link: RedisLink, op: str, conn: Any, commands: list[tuple], replies: list | None = None):
        self.link, self.op, self.conn, self.commands = link, op, conn, commands
        self._replies = replies

    def result(self) -> list:
        if self._replies is not None:
            return self._replies
        link, conn = self.link, self.conn
        pool = link.client.connection_pool
        self.conn = None
        try:
            replies = [conn.read_response() for _ in self.commands]
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            conn.disconnect()
            pool.release(conn)
            self._replies = link._execute(self.op, self.commands)  # one retry; marks Redis down
            return self._replies
        except redis.RedisError as e:  # an error reply: drop the connection (replies may be pending)
            conn.disconnect()
            pool.release(conn)
            REDIS_ERRORS.labels(self.op).inc()
            log.warning("Redis %s failed: %s", self.op, e)
            raise RedisUnavailable(str(e)) from e
        pool.release(conn)
        if link._down_since is not None:
            link._mark_up()
        self._replies = replies
        return replies

    def cancel(self) -> None:
        """Abandon unread replies (the connection is closed, not reused half-read)."""
        if self.conn is not None:
            self.conn.disconnect()
            self.link.client.connection_pool.release(self.conn)
            self.conn = None


class Tracker:
    """Redis server-assisted client-side caching, broadcast mode: ``CLIENT TRACKING on BCAST
    PREFIX ...`` on one connection that also subscribes to ``__redis__:invalidate``
    (RESP2 redirect to itself), read by one daemon thread.

    Why this and not redis-py's own client-side cache or a generation key + pub/sub:

    * Redis itself reports every change to a tracked key — a curator's plain ``SET``, a key
      expiring, a ``FLUSHALL``, another replica's write — so nothing that edits Redis has to
      remember to publish (a generation key + pub/sub only sees writers that cooperate);
    * broadcast mode tracks key *prefixes*, so the process can hold every concept of the bundle
      (pre-filled at start) without having read each key first, and requests never touch a
      socket: zero round trips in the steady state;
    * redis-py's cache (RESP3, per connection pool) would sit under our pipelined request
      round trip and circuit breaker and still cost a socket poll per command.

    Callbacks run in the tracker thread: ``on_keys(keys)`` with the changed keys (``None``: all
    of them, after a flush), ``on_resync()`` after every (re)connection, since changes made
    while unsubscribed were not reported. Connection loss marks the link down (logged once, like
    any outage) and is retried every ``retry_s``; the process serves its last known copy meanwhile.
    """

    def __init__(self, link: RedisLink, prefixes: list[str], on_keys: Callable[[list[bytes] | None], None],
                 on_resync: Callable[[], None], retry_s: float = 0.25, ping_s: float = 1.0):
        self.link, self.prefixes = link, prefixes
        self.on_keys, self.on_resync = on_keys, on_resync
        self.retry_s, self.ping_s = retry_s, ping_s
        self.tracking = threading.Event()  # set while subscribed and resynced: the copy is coherent
        self._stop = threading.Event()
        self._conn: Any = None
        self._refused = False
        self._thread = threading.Thread(target=self._run, name="recsae-redis-tracking", daemon=True)

    def start(self, wait_s: float = 1.0) -> bool:
        """Start the thread; wait up to ``wait_s`` for the first subscription (False: Redis down)."""
        self._thread.start()
        return self.tracking.wait(wait_s)

    def close(self) -> None:
        self._stop.set()  # the thread polls every 0.2 s and disconnects itself
        if self._thread.is_alive():
            self._thread.join(timeout=2)

    def _connect(self) -> Any:
        kw = dict(self.link.client.connection_pool.connection_kwargs)
        kw["protocol"] = 2  # RESP2: invalidations arrive as pub/sub messages on this connection
        conn = self.link.client.connection_pool.connection_class(**kw)
        conn.connect()
        conn.send_command("CLIENT", "ID")
        cid = conn.read_response()
        args: list[Any] = ["CLIENT", "TRACKING", "on", "REDIRECT", cid, "BCAST"]
        for p in self.prefixes:
            args += ["PREFIX", p]
        conn.send_command(*args)
        conn.read_response()
        conn.send_command("SUBSCRIBE", "__redis__:invalidate")
        conn.read_response()
        return conn

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._conn = conn = self._connect()
                REDIS_ROUNDTRIPS.labels("tracking").inc()
                if self.link._down_since is not None:
                    self.link._mark_up()  # Redis answers: end the outage (logged once) before resyncing
                self.on_resync()  # raises RedisUnavailable when Redis went away again
                self.tracking.set()
                self._listen(conn)
            except (redis.ConnectionError, redis.TimeoutError, OSError, RedisUnavailable) as e:
                self.tracking.clear()
                if self._stop.is_set():
                    return
                REDIS_ERRORS.labels("tracking").inc()
                if not isinstance(e, RedisUnavailable):
                    self.link._mark_down(e)
            except redis.ResponseError as e:  # e.g. Redis < 6: no CLIENT TRACKING
                self.tracking.clear()
                if not self._refused:
                    log.error("Redis refused invalidation tracking (%s; needs Redis >= 6): concepts are served from "
                              "the bundle and policies from the copy the periodic sync refreshes", e)
                self._refused = True
                self._stop.wait(30.0)
            except Exception:  # noqa: BLE001 - the tracker must survive anything
                self.tracking.clear()
                log.exception("Redis invalidation tracking failed; reconnecting")
            finally:
                if self._conn is not None:
                    try:
                        self._conn.disconnect()
                    except Exception:  # noqa: BLE001
                        pass
                    self._conn = None
            self._stop.wait(self.retry_s)

    def _listen(self, conn: Any) -> None:
        """Read invalidations; PING when idle so a silent network partition is noticed too."""
        last_reply = time.monotonic()
        pinged = False
        while not self._stop.is_set():
            if conn.can_read(timeout=0.2):
                msg = conn.read_response()
                last_reply = time.monotonic()
                pinged = False
                if isinstance(msg, list) and len(msg) == 3 and msg[0] == b"message":
                    keys = msg[2]
                    self.on_keys(list(keys) if isinstance(keys, list) else None)
                continue
            idle = time.monotonic() - last_reply
            if idle > 3 * self.ping_s:
                raise redis.TimeoutError(f"no reply from Redis for {idle:.1f} s")
            if idle > self.ping_s and not pinged:
                conn.send_command("PING")
                pinged = True
