"""Issue 23.6: executors hold a lease (``executor/lease.py``), so the work of one that died
under another identity is taken over within a minute, and a live one's never is.

Real PostgreSQL throughout. The first test uses the lease on its own (a judge with a clock the
test moves, so "watched for the grace period" needs no waiting): a collision of lock keys, a
foreign lock on a dead executor's key, and a PostgreSQL restart that drops every lock. The
second runs two real ``startupmonkey executor`` processes with different identities
(``POD_NAME``) on one journal: the second watches the first build an index and never takes it
over; the first is SIGKILLed and the second takes the build over within a minute and finishes
it, once.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import signal
from pathlib import Path
from typing import Any

import nats
import pytest

from startupmonkey import db, settings
from startupmonkey.executor import journal, lease, records
from startupmonkey.localserv import nats as natsserver
from startupmonkey.localserv import postgres
from startupmonkey.models.enums import RemediationState
from tests.integration import test_executor_sigkill_build as sigkill
from tests.support import components, workloads
from tests.support import executor_helpers as helpers
from tests.support.eventually import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
FIRST, SECOND = "executor-7d9f-abcde", "executor-7d9f-fghij"  # a Deployment's old and new pod


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_lease_is_judged_by_its_holder_never_by_a_key_nor_an_empty_restarted_server(
        pg_private_cluster_factory: components.PrivateClusterFactory) -> None:
    cluster = pg_private_cluster_factory()
    cluster.create_database("app")
    login = db.Login(host=cluster.host, port=cluster.port, dbname="app", user=cluster.superuser)
    may_connect = {"alive": asyncio.Event()}
    may_connect["alive"].set()

    async def connect(name: str) -> db.Conn:
        return await db.connect(login, name)

    async def connect_alive(name: str) -> db.Conn:
        await may_connect["alive"].wait()
        return await db.connect(login, name)

    clock = Clock()
    judge = lease.Lease("judge", connect, clock=clock)
    alive = lease.Lease("alive", connect_alive)
    foreign = await db.connect(login, "someone-else")
    try:
        # Another session holds the very keys "alive" and "dead" would take first.
        for who in ("alive", "dead"):
            await foreign.execute("SELECT pg_catalog.pg_advisory_lock(%s, %s)",
                                  lease.lock_key(who))
        await judge.start()
        await alive.start()
        assert judge.held and alive.held
        assert alive.key == lease.lock_key("alive", 1)  # the collision: the next key
        assert not await judge.lapsed("dead"), "judged before watching for the grace period"
        clock.now += lease.GRACE + 1
        assert not await judge.lapsed("alive")  # told by its holder, not by the key
        assert await judge.lapsed("dead")  # its key is held, but not by its lease
        assert not await judge.lapsed("judge")  # never ourselves

        # Every lock goes with a restart; "alive" is slow to come back.
        may_connect["alive"].clear()
        taken = judge.since
        clock.now += 1
        await asyncio.to_thread(cluster.restart)
        await eventually(lambda: judge.held and judge.since > taken, timeout=60,
                         what="the judge re-took its lease")
        assert not alive.held
        assert not await judge.lapsed("alive"), "judged by the empty pg_locks of a restart"
        clock.now += lease.GRACE / 2
        assert not await judge.lapsed("alive")
        may_connect["alive"].set()
        await eventually(lambda: alive.held, timeout=30, what="alive re-took its lease")
        clock.now += lease.GRACE
        assert not await judge.lapsed("alive")
        assert await judge.lapsed("dead")
    finally:
        may_connect["alive"].set()
        await alive.stop()
        await judge.stop()
        await foreign.close()
    assert not judge.held and not alive.held


def _lease_age(conninfo: str, identity: str) -> float:
    """Seconds the lease session of ``identity`` has existed (0: none)."""
    rows = sigkill._fetch(
        conninfo, "SELECT extract(epoch FROM now() - backend_start) FROM "
        "pg_catalog.pg_stat_activity WHERE application_name = %s",
        (lease.application_name(identity),))
    return float(rows[0][0]) if rows else 0.0


def _start(config_file: Path, tmp_path: Path, identity: str) -> Any:
    with (tmp_path / f"{identity}.log").open("wb") as out:
        return sigkill.subprocess.Popen(
            [str(sigkill.EXE), "executor", "--config", str(config_file),
             "--observability-port", "0"],
            stdout=out, stderr=sigkill.subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "POD_NAME": identity})


async def test_a_live_executor_is_never_taken_over_and_a_dead_one_within_a_minute(
        pg_db: postgres.PostgresDatabase, nats_server: natsserver.NatsServer,
        tmp_path: Path) -> None:
    workloads.seed_orders(pg_db.conninfo)
    cfg = helpers.config(
        pg_db, nats_server.url, tmp_path,
        verification={"window": "3s", "minCalls": 10, "maxWait": "30s"},
        # The build waits behind the lock holder (2 h statement timeout: without leases the
        # second executor would take it over only after 2 h 05).
        limits={"timeouts": {"ddl": {"lockTimeout": "5m", "statementTimeout": "2h"}}})
    config_file = tmp_path / "executor.yaml"
    config_file.write_text(settings.dump(cfg))

    async def journal_now() -> list[records.Record]:
        try:
            fresh = journal.JournalStore(tmp_path / "audit.jsonl", helpers.NAMESPACE,
                                         helpers.MONITOR)
        except ValueError as exc:  # a line an executor is writing right now
            raise AssertionError(f"journal mid-write: {exc}") from exc
        return await fresh.list()

    with workloads.query_loop(pg_db.conninfo, workloads.ORDERS_QUERY, (42,), rate=40,
                              duration=280) as loop:
        await eventually(lambda: loop.calls >= 20, timeout=30)
        detection = sigkill._detection(sigkill._queryid(pg_db.conninfo))
        first = _start(config_file, tmp_path, FIRST)
        second = None
        try:
            with workloads.hold_lock(pg_db.conninfo, "public.orders",
                                     mode="ROW EXCLUSIVE") as holder:
                client = await nats.connect(nats_server.url)
                try:
                    async def recorded() -> bool:
                        if await journal_now():
                            return True
                        await client.publish(detection.subject, detection.encode())
                        await client.flush()
                        return False

                    await eventually(recorded, timeout=60, interval=0.5)
                finally:
                    await client.close()

                async def build_waits() -> int:
                    assert first.poll() is None, (tmp_path / f"{FIRST}.log").read_text()
                    rows = await asyncio.to_thread(sigkill._fetch, pg_db.conninfo,
                                                   sigkill.WAITING_CREATE)
                    assert len(rows) == 1, rows
                    return int(rows[0][0])

                backend = await eventually(build_waits, timeout=90, interval=0.1)
                (running,) = await journal_now()
                assert running.state is RemediationState.RUNNING
                assert running.status.executor == FIRST

                # A second executor (another identity) watches the live one's build for longer
                # than its lease's grace period, ticking every second: no takeover.
                second = _start(config_file, tmp_path, SECOND)
                watched = lease.GRACE + 3 * lease.POLL

                def watched_long_enough() -> bool:
                    assert second is not None and second.poll() is None, \
                        (tmp_path / f"{SECOND}.log").read_text()
                    return _lease_age(pg_db.conninfo, SECOND) > watched

                await eventually(watched_long_enough, timeout=watched + 60, interval=0.5)
                (still,) = await journal_now()
                assert (still.state, still.status.executor) == (RemediationState.RUNNING,
                                                                FIRST), still.status.message
                assert await build_waits() == backend
                assert first.poll() is None

                os.kill(first.pid, signal.SIGKILL)
                killed = datetime.datetime.now(datetime.UTC)
                first.wait(10)
                await eventually(lambda: sigkill._fetch(pg_db.conninfo, sigkill.BACKEND_GONE,
                                                        (backend,)) == [(True,)], timeout=30)
                assert holder.is_alive()
            # The holder is gone too: the second executor may now build.

            async def done() -> records.Record | None:
                assert second is not None and second.poll() is None, \
                    (tmp_path / f"{SECOND}.log").read_text()
                (record,) = await journal_now()
                final = (RemediationState.SUCCEEDED, RemediationState.ROLLED_BACK,
                         RemediationState.FAILED, RemediationState.REJECTED)
                return record if record.state in final else None

            record = await eventually(done, timeout=150, interval=0.5)
        finally:
            sigkill._stop(first)
            if second is not None:
                sigkill._stop(second)
    assert second.returncode == 0, (tmp_path / f"{SECOND}.log").read_text()

    steps = record.status.history
    assert record.state is RemediationState.SUCCEEDED, [(s.state, s.message) for s in steps]
    assert [s.state for s in steps] == [
        RemediationState.APPROVED, RemediationState.RUNNING, RemediationState.APPROVED,
        RemediationState.RUNNING, RemediationState.VERIFYING, RemediationState.SUCCEEDED]
    takeover = steps[2]
    assert f"interrupted: executor {FIRST} stopped during the action" in takeover.message
    assert takeover.time - killed <= datetime.timedelta(seconds=60), (takeover.time, killed)
    assert record.status.executor == SECOND
    built = record.spec.sql.split('"')[1]
    assert sigkill._indexes_on_customer_id(pg_db.conninfo) == [(built, True)]
    creates = [sql for sql in record.status.executed_sql if sql.startswith("CREATE INDEX")]
    assert len(creates) == 1, record.status.executed_sql  # the second's; the first's died
    log = (tmp_path / f"{SECOND}.log").read_text()
    assert f"executor {FIRST} holds no lease any more" in log

    def leases_left() -> list[tuple[Any, ...]]:  # released at stop (the session ends)
        return sigkill._fetch(pg_db.conninfo, "SELECT pid FROM pg_catalog.pg_locks WHERE "
                              "locktype = 'advisory' AND classid = %s",
                              (lease.LEASE_NAMESPACE,))

    await eventually(lambda: leases_left() == [], timeout=30)
