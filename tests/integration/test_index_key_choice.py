"""Intake chooses the index key before the SQL is hashed (issue 17.2): among the keys the
detection considered (``candidate_keys``), the one whose hypothetical index gives the served
statements the lowest HypoPG planner cost is planned, built and named in the target; the
evidence and the status say which keys were considered and why the winner won. Real
PostgreSQL 15 with HypoPG and pg_stat_statements, real NATS, the real engine."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import psycopg
import pytest

from startupmonkey.executor import derive, journal
from startupmonkey.localserv import nats as natsserver
from startupmonkey.localserv import postgres
from startupmonkey.models import messages, remediation
from startupmonkey.models.enums import ActionId, DetectorId, RiskClass
from tests.support import executor_helpers as helpers
from tests.support import workloads
from tests.support.eventually import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

TOP_BY_CUSTOMER = "SELECT id, total FROM orders WHERE customer_id = %s ORDER BY total DESC LIMIT 20"


def _served(conninfo: str) -> str:
    """Run the statement a few times; its queryid in this database."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for customer in range(5):
            conn.execute(TOP_BY_CUSTOMER, (customer,)).fetchall()
        row = conn.execute(
            "SELECT queryid FROM pg_stat_statements WHERE query LIKE %s AND dbid = (SELECT oid "
            "FROM pg_database WHERE datname = current_database())",
            ("SELECT id, total FROM orders WHERE customer_id = $1 ORDER BY total DESC%",)
        ).fetchone()
    assert row is not None
    return str(row[0])


def _detection(columns: list[str], keys: list[list[str]], queryid: str) -> messages.Detection:
    now = datetime.datetime.now(datetime.UTC)
    key = messages.detection_key(helpers.NAMESPACE, helpers.MONITOR, DetectorId.MISSING_INDEX,
                                 f"public.orders({','.join(columns)})")
    return messages.Detection(
        id=messages.new_occurrence_id(key, now), key=key, namespace=helpers.NAMESPACE,
        monitor=helpers.MONITOR, database=helpers.home_database(),
        detector=DetectorId.MISSING_INDEX,
        proposed_action=ActionId.CREATE_INDEX, risk_class=RiskClass.DDL,
        target=remediation.Target(schema="public", table="orders", columns=columns,
                                  queryids=[queryid]),
        summary="orders needs an index", first_seen=now, last_seen=now, published_at=now,
        evidence={"equality_columns": 1, "limited": True, "candidate_keys": json.dumps(keys)})


def _index_columns(conninfo: str) -> list[list[str]]:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT array_agg(a.attname ORDER BY k.n) FROM pg_index i "
            "CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
            "WHERE i.indrelid = 'orders'::regclass AND NOT i.indisprimary AND i.indisvalid "
            "GROUP BY i.indexrelid").fetchall()
    return [list(r[0]) for r in rows]


async def test_the_order_by_limit_key_is_planned_and_built_when_it_is_cheaper(
        pg_db: postgres.PostgresDatabase, nats_server: natsserver.NatsServer,
        tmp_path: Path) -> None:
    # 2000 rows per customer: (customer_id) reads them all and sorts; (customer_id, total)
    # reads 20.
    workloads.seed_orders(pg_db.conninfo, customers=50)
    queryid = _served(pg_db.conninfo)
    cfg = helpers.config(pg_db, nats_server.url, tmp_path,
                         verification={"window": "60s", "minCalls": 10, "maxWait": "120s"})
    store = journal.JournalStore(tmp_path / "audit.jsonl", helpers.NAMESPACE, helpers.MONITOR)
    async with helpers.running_executor(cfg, store) as executor:
        assert executor.engine is not None
        detection = _detection(["customer_id"], [["customer_id"], ["customer_id", "total"]],
                               queryid)
        await executor.engine.handle(detection.encode())

        async def building_done() -> str | None:
            records = await store.list()
            state = records[0].state.value if records else None
            return state if state not in (None, "Approved", "Running") else None

        assert await eventually(building_done, timeout=90) == "Verifying"
    (record,) = await store.list()
    assert record.spec.target.columns == ["customer_id", "total"]
    assert '("customer_id", "total")' in record.spec.sql
    assert _index_columns(pg_db.conninfo) == [["customer_id", "total"]]
    choice = record.spec.evidence[derive.KEY_CHOICE]
    assert choice.startswith("chose (customer_id, total) over the detection's (customer_id)")
    assert "(customer_id) " in choice and "keys considered" in choice
    assert choice in record.status.history[0].message
    # The pre-check, at run time, costs the planned key (key 1) below the detection's.
    assert record.status.before["key_1_cost_after"] < record.status.before["key_2_cost_after"]


async def test_the_detections_key_is_kept_when_it_is_the_cheapest(
        pg_db: postgres.PostgresDatabase, nats_server: natsserver.NatsServer,
        tmp_path: Path) -> None:
    workloads.seed_orders(pg_db.conninfo, customers=50)
    queryid = _served(pg_db.conninfo)
    cfg = helpers.config(pg_db, nats_server.url, tmp_path)
    store = journal.JournalStore(tmp_path / "audit.jsonl", helpers.NAMESPACE, helpers.MONITOR)
    engine = helpers.engine(cfg, store)
    detection = _detection(["customer_id", "total"], [["customer_id", "total"], ["customer_id"]],
                           queryid)
    await engine.handle(detection.encode())
    (record,) = await store.list()
    assert record.state.value == "Approved", record.status.message
    assert record.spec.target.columns == ["customer_id", "total"]
    assert '("customer_id", "total")' in record.spec.sql
    choice = record.spec.evidence[derive.KEY_CHOICE]
    assert choice.startswith("kept the detection's key (customer_id, total): the cheapest")
    assert "(customer_id) " in choice
