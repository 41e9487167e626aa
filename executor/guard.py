"""The guard every action runs under (docs/design.md#every-action).

On the executor's own autocommit connection: refuse on a standby, take the advisory lock of
(database, risk class) without waiting (so an index build never blocks the session action that
would free it, and two replicas never run two actions of one class at once), set
``lock_timeout`` and ``statement_timeout`` of the class, and undo all of it afterwards, even
when the action fails.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import psycopg

from startupmonkey import db
from startupmonkey.models import durations
from startupmonkey.models.enums import RiskClass

log = logging.getLogger(__name__)
#: First key of our advisory locks: "SMky" as an int4, so other tools' locks do not collide.
LOCK_NAMESPACE = 0x534D6B79
_CLASS_KEYS = {risk: index for index, risk in enumerate(RiskClass, start=1)}
#: First key of the per-detection-key locks ("SMkz"): apart from the class and start-gate locks.
KEY_LOCK_NAMESPACE = 0x534D6B7A


class Refused(Exception):
    """The action must not run (standby, another action of the class in progress, ...)."""


class Busy(Refused):
    """Another action of the class holds its lock on this database (another replica, or a
    session that took our key): a wait, not a judgement. Raised before anything runs; the
    caller leaves the Remediation Approved and tries again later, so a busy moment never
    cools a detection key down."""


class Standby(Refused):
    """The server is a standby (in recovery) or refuses writes (``transaction_read_only``,
    e.g. ``default_transaction_read_only`` set on the database): nothing runs there *now*.
    Temporary (a failover, a promotion, a setting changed back), so, like :class:`Busy`,
    raised before anything runs and the caller waits and tries again later."""


#: When this server incarnation began: the checkpointer's start (a crash of any backend makes
#: the postmaster re-initialise everything, the checkpointer and every statistics counter too,
#: without a new pg_postmaster_start_time), else the postmaster's when the checkpointer's row
#: is not visible to this role (pg_read_all_stats shows it).
SERVER_STARTED = """
SELECT extract(epoch FROM coalesce(
    (SELECT max(a.backend_start) FROM pg_catalog.pg_stat_activity AS a
     WHERE a.backend_type = 'checkpointer'),
    pg_catalog.pg_postmaster_start_time()))::float8
"""


async def server_started(conn: db.Conn) -> float | None:
    """The epoch of :data:`SERVER_STARTED`: equal at two moments only if the server did not
    restart or re-initialise after a crash in between."""
    value = await _scalar(conn, SERVER_STARTED)
    return None if value is None else float(value)


def lock_key(risk: RiskClass) -> tuple[int, int]:
    """The two int4 keys of the advisory lock of a risk class."""
    return LOCK_NAMESPACE, _CLASS_KEYS[risk]


def detection_key_lock(detection_key: str) -> tuple[int, int]:
    """The two int4 keys of the advisory lock held while a Remediation of a detection key is
    opened (list, then create): a stable 32-bit hash of the key under its own namespace."""
    digest = hashlib.sha256(detection_key.encode()).digest()
    return KEY_LOCK_NAMESPACE, int.from_bytes(digest[:4], "big", signed=True)


def _ms(duration: str) -> str:
    return f"{round(durations.parse_duration(duration) * 1000)}ms"


async def _scalar(conn: db.Conn, query: str,
                  params: tuple[Any, ...] = ()) -> Any:
    cursor = await conn.execute(query, params)
    row = await cursor.fetchone()
    return None if row is None else row[0]


@contextlib.asynccontextmanager
async def guarded(conn: db.Conn, risk: RiskClass, lock_timeout: str,
                  statement_timeout: str) -> AsyncIterator[None]:
    """Run the body as an action of class ``risk`` on ``conn`` (autocommit)."""
    cursor = await conn.execute("SELECT pg_catalog.pg_is_in_recovery(), "
                                "pg_catalog.current_setting('transaction_read_only')")
    row = await cursor.fetchone()
    if row is not None and row[0]:
        raise Standby("the database is a standby (in recovery); nothing runs there until it "
                      "is promoted")
    if row is not None and row[1] == "on":
        raise Standby("the database refuses writes (transaction_read_only is on); nothing "
                      "runs there until it accepts them")
    keys = lock_key(risk)
    if not await _scalar(conn, "SELECT pg_catalog.pg_try_advisory_lock(%s, %s)", keys):
        raise Busy(f"another {risk.value} action holds the lock on this database")
    try:
        await conn.execute("SELECT pg_catalog.set_config('lock_timeout', %s, false), "
                           "pg_catalog.set_config('statement_timeout', %s, false)",
                           (_ms(lock_timeout), _ms(statement_timeout)))
        yield
    finally:
        if not conn.closed:
            try:
                await conn.execute("RESET lock_timeout")
                await conn.execute("RESET statement_timeout")
                await conn.execute("SELECT pg_catalog.pg_advisory_unlock(%s, %s)", keys)
            except psycopg.Error as exc:  # the lock then lasts until the connection closes
                log.warning("could not release the %s lock and timeouts: %s", risk.value,
                            db.safe_error(exc))
