"""The executor's lease: proof, visible to every other executor, that it is alive.

Each executor holds, for its whole life, a session-level advisory lock on a connection of its
own (namespace "SMkl", a 32-bit hash of its identity), and that connection's
``application_name`` is ``startupmonkey-lease:<fingerprint>`` (the first 32 hex of sha256 of the
identity). PostgreSQL releases the lock when the session ends: the process died (its kernel
closes the socket), the host vanished (server-side TCP keepalives, set here to ~25 s), the
server restarted. Another executor reads ``pg_locks`` joined to ``pg_stat_activity``: a Running
Remediation whose executor's fingerprint holds no lease lock is orphaned
(``executor/housekeeping.py``) and taken over within about :data:`GRACE` plus one tick, instead of
after the statement timeout + 5 minutes (docs/executor.md#leases).

Why these rules hold:

- **Collisions.** The identity is told by the fingerprint in ``application_name``, not by the
  lock key, so two identities whose keys collide never judge each other: the second simply
  takes the next key (up to :data:`PROBES` keys are tried).
- **Nobody judges blind.** An executor judges others only while it holds its own lease (checked
  every :data:`POLL` seconds) and after having watched for :data:`GRACE` seconds since it last
  (re)took it; a lease counts as lapsed only when absent from every observation of the last
  :data:`GRACE` seconds and again right now. After a PostgreSQL restart (every lock gone) every
  executor re-takes its lease within a few seconds (retries capped at :data:`RETRY_CAP`, well
  under :data:`GRACE`), and the judge's own clock restarts with its new lease.
- **No claims without a lease** (``executor/runs.py``): work is only ever claimed by an
  executor others can see alive.
- **Residual risk.** An alive executor whose lease connection alone is cut for longer than
  :data:`GRACE` (its action connections intact) could be judged gone: its non-build record ends
  Failed while the action finishes (its outcome then loses the compare-and-set and is logged);
  a build goes back to Approved, and its next attempt meets the ddl advisory lock the running
  build still holds (``executor/guard.py``), so nothing runs twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable

import psycopg

from startupmonkey import aio, db

log = logging.getLogger(__name__)
#: First key of the lease locks: "SMkl" as an int4, apart from the class, gate and key locks.
LEASE_NAMESPACE = 0x534D6B6C
#: ``application_name`` of a lease connection: this prefix and the identity's fingerprint.
APPLICATION_PREFIX = "startupmonkey-lease:"
#: Seconds between checks of our own lease (and observations of everyone's).
POLL = 5.0
#: Seconds a lease must be seen absent before its executor's work is taken over; also how
#: long a judge watches after (re)taking its own lease before it judges anyone.
GRACE = 20.0
#: Cap of the delay between attempts to (re)take the lease (must stay well under GRACE).
RETRY_CAP = 4.0
#: Lock keys tried, from the identity's own, when another identity holds it (a collision).
PROBES = 16
#: Seconds any one lease query may take before the connection is given up.
QUERY_TIMEOUT = 10.0
_HOLDERS = (
    "SELECT a.application_name, l.pid = pg_catalog.pg_backend_pid() "
    "FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.classid = %s AND l.objsubid = 2 AND l.granted "
    "AND l.database = (SELECT oid FROM pg_catalog.pg_database "
    "WHERE datname = pg_catalog.current_database())")
#: Server-side keepalives of the lease session: a vanished host frees its lease in ~25 s.
_KEEPALIVES = (
    "SELECT pg_catalog.set_config('tcp_keepalives_idle', '10', false), "
    "pg_catalog.set_config('tcp_keepalives_interval', '5', false), "
    "pg_catalog.set_config('tcp_keepalives_count', '3', false)")
Connect = Callable[[str], Awaitable[db.Conn]]
"""Opens an autocommit connection with the given ``application_name``."""


def fingerprint(identity: str) -> str:
    """What names ``identity`` in ``pg_stat_activity`` (fits the 63 bytes of a name)."""
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


def application_name(identity: str) -> str:
    """The ``application_name`` of ``identity``'s lease connection."""
    return APPLICATION_PREFIX + fingerprint(identity)


def lock_key(identity: str, probe: int = 0) -> tuple[int, int]:
    """The two int4 keys of the ``probe``-th lease lock tried for ``identity``."""
    start = int.from_bytes(hashlib.sha256(identity.encode()).digest()[:4], "big")
    key = (start + probe) % 2**32
    return LEASE_NAMESPACE, key - 2**32 if key >= 2**31 else key


class Unavailable(Exception):
    """No lease lock could be taken (every probed key is held by other sessions)."""


class Lease:
    """This executor's lease, and its view of everyone else's."""

    def __init__(self, identity: str, connect: Connect,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.identity = identity
        self._connect = connect
        self._clock = clock
        self._conn: db.Conn | None = None
        self._since = 0.0  # when the lease was (re)taken (clock)
        self._verified = float("-inf")  # when it was last seen held
        self._seen: dict[str, float] = {}  # fingerprint -> when last seen holding a lease
        self._task: asyncio.Task[None] | None = None
        self.key: tuple[int, int] | None = None

    @property
    def since(self) -> float:
        """When (on this lease's clock) the lease was last (re)taken."""
        return self._since

    @property
    def held(self) -> bool:
        """We hold the lease, as seen in ``pg_locks`` within the last two polls."""
        return self._conn is not None and not self._conn.closed and \
            self._clock() - self._verified < 2 * POLL

    async def start(self) -> None:
        """Take the lease now if the database allows, and keep it (or keep trying) in the
        background until :meth:`stop`."""
        with contextlib.suppress(psycopg.Error, OSError, TimeoutError, Unavailable):
            await self._take()
        self._task = asyncio.create_task(self._keep(), name="lease")

    async def stop(self) -> None:
        """Stop watching and release the lease (closing its session)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._drop()

    async def _keep(self) -> None:
        backoff = db.Backoff(base=0.5, cap=RETRY_CAP)
        while True:
            try:
                if self._conn is None or self._conn.closed:
                    await self._take()
                await self._observe()
                backoff.reset()
                delay = POLL
            except (psycopg.Error, OSError, TimeoutError, Unavailable) as exc:
                await self._drop()
                delay = backoff.next_delay()
                log.warning("executor lease of %s not held, retrying in %.1fs: %s",
                            self.identity, delay, db.safe_error(exc))
            await asyncio.sleep(delay)

    async def _take(self) -> None:
        conn = await aio.within(self._connect(application_name(self.identity)), QUERY_TIMEOUT)
        try:
            await aio.within(conn.execute(_KEEPALIVES), QUERY_TIMEOUT)
            for probe in range(PROBES):
                keys = lock_key(self.identity, probe)
                cursor = await aio.within(conn.execute(
                    "SELECT pg_catalog.pg_try_advisory_lock(%s, %s)", keys), QUERY_TIMEOUT)
                row = await cursor.fetchone()
                if row is not None and row[0]:
                    break
            else:
                raise Unavailable(f"all {PROBES} lease keys of {self.identity} are held by "
                                  "other sessions")
        except BaseException:
            await conn.close()
            raise
        self._conn, self.key = conn, keys
        now = self._clock()
        self._since = self._verified = now
        self._seen.clear()  # observations of an earlier lease say nothing about this one
        log.info("holding executor lease of %s (advisory lock %d/%d)", self.identity, *keys)

    async def _drop(self) -> None:
        conn, self._conn, self.key = self._conn, None, None
        self._verified = float("-inf")
        if conn is not None:
            with contextlib.suppress(Exception):
                await aio.within(conn.close(), QUERY_TIMEOUT)

    async def _observe(self) -> set[str]:
        """Read every lease holder now: record who was seen, check that we hold ours."""
        conn = self._conn
        if conn is None:
            raise Unavailable("no lease connection")
        cursor = await aio.within(conn.execute(_HOLDERS, (LEASE_NAMESPACE,)), QUERY_TIMEOUT)
        rows = await cursor.fetchall()
        now = self._clock()
        present = {str(name)[len(APPLICATION_PREFIX):] for name, _ in rows
                   if str(name or "").startswith(APPLICATION_PREFIX)}
        for each in present:
            self._seen[each] = now
        if not any(mine for _, mine in rows):
            raise Unavailable("our lease lock is gone from pg_locks")
        self._verified = now
        return present

    async def lapsed(self, identity: str) -> bool:
        """True when ``identity``'s executor is gone: we hold our own lease and have watched
        for :data:`GRACE` seconds, its lease was absent from every observation of the last
        :data:`GRACE` seconds and is absent now. Any doubt (our own lease not held, the
        query failing) answers False."""
        if identity == self.identity or self._conn is None:
            return False
        now, mark = self._clock(), fingerprint(identity)
        if now - self._since < GRACE or now - self._seen.get(mark, self._since) < GRACE:
            return False
        try:
            present = await self._observe()  # also proves that we still hold ours
        except (psycopg.Error, OSError, TimeoutError, Unavailable) as exc:
            log.info("cannot tell whether executor %s is alive: %s", identity,
                     db.safe_error(exc))
            return False
        return mark not in present
