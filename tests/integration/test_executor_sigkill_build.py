"""Issue 7: an executor SIGKILLed while its CREATE INDEX CONCURRENTLY runs leaves an INVALID
index; the next executor on the same journal drops that leftover, records it and builds.

Real processes throughout: two ``startupmonkey executor`` processes in turn (the installed
console script, rendered config, core NATS), real PostgreSQL with pg_stat_statements, a real
query workload and a real lock holder. The two processes share the configured identity
(``POD_NAME``), as a restarted pod of the same name does (docs/executor.md).
"""

from __future__ import annotations

import asyncio
import datetime
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import nats
import psycopg
import pytest

from startupmonkey import settings
from startupmonkey.executor import journal, records
from startupmonkey.localserv import nats as natsserver
from startupmonkey.localserv import postgres
from startupmonkey.models import messages, remediation
from startupmonkey.models.enums import ActionId, DetectorId, RemediationState, RiskClass
from tests.support import executor_helpers as helpers
from tests.support import workloads
from tests.support.eventually import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
EXE = Path(sys.executable).with_name("startupmonkey")
IDENTITY = "startupmonkey-executor-0"
#: The executor's CREATE INDEX CONCURRENTLY, waiting for a lock (the ROW EXCLUSIVE holder's
#: transaction): by then its INVALID index exists in pg_index.
WAITING_CREATE = ("SELECT pid FROM pg_catalog.pg_stat_activity WHERE datname = "
                  "current_database() AND application_name = 'startupmonkey-executor' AND "
                  "wait_event_type = 'Lock' AND starts_with(query, 'CREATE INDEX CONCURRENTLY')")
BACKEND_GONE = "SELECT count(*) = 0 FROM pg_catalog.pg_stat_activity WHERE pid = %s"


def _fetch(conninfo: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        return conn.execute(query, params).fetchall()


def _queryid(conninfo: str) -> str:
    rows = _fetch(conninfo, "SELECT queryid FROM pg_stat_statements WHERE query LIKE %s AND "
                  "dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                  "ORDER BY calls DESC LIMIT 1",
                  ("SELECT id, total FROM orders WHERE customer_id%",))
    assert rows, "the workload's statement is not in pg_stat_statements"
    return str(rows[0][0])


def _detection(queryid: str) -> messages.Detection:
    now = datetime.datetime.now(datetime.UTC)
    key = messages.detection_key(helpers.NAMESPACE, helpers.MONITOR, DetectorId.MISSING_INDEX,
                                 "public.orders(customer_id)")
    return messages.Detection(
        id=messages.new_occurrence_id(key, now), key=key, namespace=helpers.NAMESPACE,
        monitor=helpers.MONITOR, database=helpers.home_database(),
        detector=DetectorId.MISSING_INDEX,
        proposed_action=ActionId.CREATE_INDEX, risk_class=RiskClass.DDL,
        target=remediation.Target(schema="public", table="orders", columns=["customer_id"],
                                  queryids=[queryid]),
        summary="orders needs an index on customer_id", first_seen=now, last_seen=now,
        published_at=now)


def _indexes_on_customer_id(conninfo: str) -> list[tuple[str, bool]]:
    """(name, valid) of every index of orders on (customer_id)."""
    return [(str(name), bool(valid)) for name, valid in _fetch(
        conninfo, "SELECT c.relname, i.indisvalid FROM pg_catalog.pg_index i JOIN "
        "pg_catalog.pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = 'orders'::regclass "
        "AND i.indkey::text = (SELECT attnum::text FROM pg_catalog.pg_attribute WHERE "
        "attrelid = 'orders'::regclass AND attname = 'customer_id') ORDER BY 1")]


def _start_executor(config_file: Path, tmp_path: Path, name: str) -> subprocess.Popen[bytes]:
    with (tmp_path / f"{name}.log").open("wb") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            [str(EXE), "executor", "--config", str(config_file), "--observability-port", "0"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "POD_NAME": IDENTITY})


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


async def test_a_build_whose_executor_is_sigkilled_is_cleaned_and_rebuilt_by_the_next(
        pg_db: postgres.PostgresDatabase, nats_server: natsserver.NatsServer,
        tmp_path: Path) -> None:
    workloads.seed_orders(pg_db.conninfo)
    cfg = helpers.config(
        pg_db, nats_server.url, tmp_path,
        verification={"window": "3s", "minCalls": 10, "maxWait": "30s"},
        # The build must wait behind the lock holder until it is killed, not time out.
        limits={"timeouts": {"ddl": {"lockTimeout": "5m", "statementTimeout": "2h"}}})
    config_file = tmp_path / "executor.yaml"
    config_file.write_text(settings.dump(cfg))

    async def journal_now() -> list[records.Record]:
        try:
            fresh = journal.JournalStore(tmp_path / "audit.jsonl", helpers.NAMESPACE,
                                         helpers.MONITOR)
        except ValueError as exc:  # a line the executor is writing right now
            raise AssertionError(f"journal mid-write: {exc}") from exc
        return await fresh.list()

    with workloads.query_loop(pg_db.conninfo, workloads.ORDERS_QUERY, (42,), rate=40,
                              duration=280) as loop:
        await eventually(lambda: loop.calls >= 20, timeout=30)
        detection = _detection(_queryid(pg_db.conninfo))
        first = _start_executor(config_file, tmp_path, "first")
        try:
            with workloads.hold_lock(pg_db.conninfo, "public.orders",
                                     mode="ROW EXCLUSIVE") as holder:
                client = await nats.connect(nats_server.url)
                try:
                    async def recorded() -> bool:
                        # Core NATS: publish until the executor (subscribing) has recorded it;
                        # the same key again is a duplicate, not a second Remediation.
                        if await journal_now():
                            return True
                        await client.publish(detection.subject, detection.encode())
                        await client.flush()
                        return False

                    await eventually(recorded, timeout=60, interval=0.5)
                finally:
                    await client.close()

                async def build_waits() -> int:
                    assert first.poll() is None, "the first executor ended by itself"
                    rows = await asyncio.to_thread(_fetch, pg_db.conninfo, WAITING_CREATE)
                    assert len(rows) == 1, rows
                    return int(rows[0][0])

                backend = await eventually(build_waits, timeout=90, interval=0.1)
                (running,) = await journal_now()
                assert running.state is RemediationState.RUNNING, running.status.message
                assert running.status.executor == IDENTITY
                os.kill(first.pid, signal.SIGKILL)
                first.wait(10)
                assert first.returncode == -signal.SIGKILL
                # The server notices the dead client (client_connection_check_interval), even
                # while the build waits for the lock, and ends the build.
                await eventually(lambda: _fetch(pg_db.conninfo, BACKEND_GONE, (backend,))
                                 == [(True,)], timeout=30)
                assert holder.is_alive()
            # The lock holder is gone too: the INVALID index of the killed build remains.
            (left,) = _indexes_on_customer_id(pg_db.conninfo)
            assert left[1] is False, left
            (stuck,) = await journal_now()
            assert stuck.state is RemediationState.RUNNING  # nobody recorded the death yet
        finally:
            _stop(first)

        second = _start_executor(config_file, tmp_path, "second")
        try:
            async def done() -> records.Record | None:
                assert second.poll() is None, (tmp_path / "second.log").read_text()
                (record,) = await journal_now()
                final = (RemediationState.SUCCEEDED, RemediationState.ROLLED_BACK,
                         RemediationState.FAILED, RemediationState.REJECTED)
                return record if record.state in final else None

            record = await eventually(done, timeout=150, interval=0.5)
        finally:
            _stop(second)
    assert second.returncode == 0, (tmp_path / "second.log").read_text()

    steps = [(s.state, s.message) for s in record.status.history]
    assert record.state is RemediationState.SUCCEEDED, steps
    assert [state for state, _ in steps] == [
        RemediationState.APPROVED, RemediationState.RUNNING, RemediationState.APPROVED,
        RemediationState.RUNNING, RemediationState.VERIFYING, RemediationState.SUCCEEDED]
    interrupted = steps[2][1]
    assert f"interrupted: executor {IDENTITY} stopped during the action" in interrupted
    assert "attempt 1 did not finish" in interrupted
    assert record.status.attempts == 1
    built_index = record.spec.sql.split('"')[1]
    assert f"dropped INVALID leftover(s) public.{built_index}" in steps[4][1]
    assert record.status.before["leftovers_dropped"] == 1.0
    assert record.status.before["builders_cancelled"] == 0.0
    decision = record.status.decision
    assert decision is not None and decision.keep
    assert _indexes_on_customer_id(pg_db.conninfo) == [(built_index, True)]
    assert left[0] == built_index
    assert any(sql.startswith("DROP INDEX CONCURRENTLY") and built_index in sql
               for sql in record.status.executed_sql), record.status.executed_sql
