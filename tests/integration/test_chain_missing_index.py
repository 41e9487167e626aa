"""missing_index and slow_statement through the whole chain on a real PostgreSQL: a real
collector process -> gRPC -> analyser -> NATS (``tests/support/chain.py``), real workloads
in pg_stat_statements, thresholds lowered only through the rendered config.

One database holds every shape at once, so the healthy twins run beside the problems and
the assertion is about the complete set of detections: exactly the expected candidates,
nothing for a low-selectivity filter, a query an index already serves, or a small table.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Iterator
from pathlib import Path

import pytest

from startupmonkey.localserv import postgres
from startupmonkey.localserv.nats import NatsServer
from startupmonkey.models import messages
from startupmonkey.models.enums import ActionId, DetectorId, RiskClass
from tests.support import workloads
from tests.support.chain import assert_on_subject, chain, run_flushed

pytestmark = pytest.mark.integration

SETUP = [
    # A hot point query on an unindexed, selective column.
    "CREATE TABLE accounts (id int PRIMARY KEY, email_hash int NOT NULL, name text)",
    "INSERT INTO accounts SELECT g, g * 7, 'n' || g FROM generate_series(1, 40000) g",
    # Two predicates: a range and an equality (the equality must lead).
    "CREATE TABLE events (id int PRIMARY KEY, kind int NOT NULL, created_at timestamptz, "
    "payload text)",
    "INSERT INTO events SELECT g, g % 100, now() - g * interval '1 minute', 'p' "
    "FROM generate_series(1, 40000) g",
    # A join on an unindexed foreign key (customers are found by an indexed email).
    "CREATE TABLE customers (id int PRIMARY KEY, email text UNIQUE NOT NULL)",
    "INSERT INTO customers SELECT g, 'c' || g || '@x' FROM generate_series(1, 4000) g",
    "CREATE TABLE orders (id int PRIMARY KEY, customer_id int NOT NULL REFERENCES customers, "
    "total numeric)",
    "INSERT INTO orders SELECT g, 1 + g % 4000, g FROM generate_series(1, 40000) g",
    # Names that need quoting: a non-public schema with a space, a semicolon, mixed case.
    'CREATE SCHEMA "Sales Data"',
    'CREATE TABLE "Sales Data"."Line; Items" (id int PRIMARY KEY, "Order Id" int, "Qty" int)',
    'INSERT INTO "Sales Data"."Line; Items" SELECT g, g, 1 FROM generate_series(1, 40000) g',
    # Twins: a low-selectivity filter, a query an index serves, a small table.
    "CREATE TABLE tickets (id int PRIMARY KEY, status text NOT NULL)",
    "INSERT INTO tickets SELECT g, CASE WHEN g % 2 = 0 THEN 'open' ELSE 'closed' END "
    "FROM generate_series(1, 40000) g",
    "CREATE TABLE served (id int PRIMARY KEY, code int NOT NULL)",
    "INSERT INTO served SELECT g, g FROM generate_series(1, 40000) g",
    "CREATE INDEX served_code_idx ON served (code)",
    "CREATE TABLE small (id int PRIMARY KEY, v int NOT NULL)",
    "INSERT INTO small SELECT g, g FROM generate_series(1, 2000) g",
]
TABLES = 'accounts, events, customers, orders, "Sales Data"."Line; Items", tickets, served, small'
SINCE = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=2)
LOADS: list[tuple[workloads.Query, tuple[object, ...]]] = [
    ("SELECT id, name FROM accounts WHERE email_hash = %s", (7 * 1234,)),
    ("SELECT id, payload FROM events WHERE created_at > %s AND kind = %s", (SINCE, 42)),
    ("SELECT o.id, o.total FROM customers c JOIN orders o ON o.customer_id = c.id "
     "WHERE c.email = %s", ("c77@x",)),
    ('SELECT "Qty" FROM "Sales Data"."Line; Items" WHERE "Order Id" = %s', (4321,)),
    ("SELECT id FROM tickets WHERE status = %s", ("open",)),
    ("SELECT id FROM served WHERE code = %s", (999,)),
    ("SELECT id FROM small WHERE v = %s", (5,)),
]
EXPECTED = {
    ("public", "accounts"): ["email_hash"],
    ("public", "events"): ["kind", "created_at"],
    ("public", "orders"): ["customer_id"],
    ("Sales Data", "Line; Items"): ["Order Id"],
}


def _prepare(database: postgres.PostgresDatabase) -> None:
    # Separate sessions: a backend's statistics reach shared memory when it ends, so the
    # ANALYZE runs after the inserts are flushed.
    with database.connect() as conn:
        for statement in SETUP:
            conn.execute(statement)
    run_flushed(database, f"VACUUM ANALYZE {TABLES}")


@contextlib.contextmanager
def _running(conninfo: str) -> Iterator[list[workloads.QueryLoopStats]]:
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(workloads.query_loop(
            conninfo, query, params, rate=8, duration=110,
            application_name=f"smtest-index-{n}")) for n, (query, params) in enumerate(LOADS)]


def _place(detection: messages.Detection) -> tuple[str | None, str | None]:
    return detection.target.schema_, detection.target.table


async def test_missing_index_candidates_and_their_twins(
        pg_db: postgres.PostgresDatabase, nats_server: NatsServer, tmp_path: Path) -> None:
    _prepare(pg_db)
    with _running(pg_db.conninfo) as loops:
        async with chain(pg_db, nats_server, tmp_path,
                         missing_index={"minStatementTimePerSecond": 0.001},
                         slow_statement={"enabled": False}) as run:
            found = {place: await run.find(
                DetectorId.MISSING_INDEX, lambda d, p=place: _place(d) == p, within=40)
                for place in EXPECTED}
            await run.snapshots(4)  # the twins had as long to show up
        assert all(loop.calls > 0 and not loop.errors for loop in loops), [
            loop.errors[:1] for loop in loops]
    for place, columns in EXPECTED.items():
        detection = found[place]
        assert detection.target.columns == columns, detection.summary
        assert detection.proposed_action is ActionId.CREATE_INDEX
        assert detection.risk_class is RiskClass.DDL
        assert detection.target.queryids and all(q.lstrip("-").isdigit()
                                                 for q in detection.target.queryids)
        assert float(detection.evidence["statement_time_per_s"]) > 0
        assert float(detection.evidence["statement_1_time_per_s"]) > 0
        # Selective lookups: the index would save most of the time they spend.
        saving = float(detection.evidence["estimated_saving_s_per_s"])
        assert 0 < saving <= float(detection.evidence["statement_time_per_s"])
        assert "$1" in str(detection.evidence["statement_1"])
    assert found[("public", "orders")].evidence["predicate"] == "join"
    assert found[("public", "events")].evidence["predicate"] == "equality+range"
    assert '"Order Id"' in found[("Sales Data", "Line; Items")].summary
    # Exactly these: nothing for tickets (half the table per call), served (indexed) or
    # small (2,000 rows), and no other column of the four tables.
    seen = {(_place(d), tuple(d.target.columns)) for d in run.of(DetectorId.MISSING_INDEX)}
    assert seen == {(p, tuple(c)) for p, c in EXPECTED.items()}, run.summaries()
    assert run.metric("detector_errors_total", detector="missing_index") == 0
    assert_on_subject(run, DetectorId.MISSING_INDEX)


async def test_slow_statement_for_the_slow_one_only(
        pg_db: postgres.PostgresDatabase, nats_server: NatsServer, tmp_path: Path) -> None:
    with pg_db.connect() as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, v int)")
        conn.execute("INSERT INTO items SELECT g, g FROM generate_series(1, 1000) g")
    with (workloads.query_loop(pg_db.conninfo, "SELECT pg_sleep(0.03)", rate=20,
                               duration=110, application_name="smtest-slow") as slow,
          workloads.query_loop(pg_db.conninfo, "SELECT v FROM items WHERE id = %s", (42,),
                               rate=50, duration=110, application_name="smtest-fast"),
          workloads.query_loop(pg_db.conninfo, "SELECT 1", rate=50, duration=110,
                               application_name="smtest-trivial")):
        async with chain(pg_db, nats_server, tmp_path,
                         slow_statement={"minCalls": 30}) as run:
            detection = await run.find(DetectorId.SLOW_STATEMENT, lambda d: True, within=40)
            await run.snapshots(3)
        assert slow.calls > 30
    assert detection.proposed_action is ActionId.ADVICE
    assert detection.risk_class is RiskClass.ADVICE
    assert "pg_sleep" in str(detection.evidence["query"])
    assert float(detection.evidence["mean_ms"]) >= 30
    assert float(detection.evidence["share"]) >= 0.1
    assert {tuple(d.target.queryids) for d in run.of(DetectorId.SLOW_STATEMENT)} == {
        tuple(detection.target.queryids)}, run.summaries()
    assert_on_subject(run, DetectorId.SLOW_STATEMENT)
