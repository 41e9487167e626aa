"""Index detectors through the whole chain on a real PostgreSQL: unused_index and
duplicate_index, with the indexes that must never be named beside them; invalid_index beside
live builds (an abandoned INVALID index is in ``test_chain_tables.py``, missing_index in
``test_chain_missing_index.py``).

The chain (``tests/support/chain.py``): a real collector process -> gRPC -> analyser -> NATS,
thresholds lowered only through ``spec.thresholds`` of the rendered config, interval 1s.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from startupmonkey.localserv import postgres
from startupmonkey.localserv.nats import NatsServer
from startupmonkey.models.enums import ActionId, DetectorId, RiskClass
from tests.integration.test_index_builders import (
    MIGRATION_INDEX,
    OWN_APP,
    OWN_INDEX,
    waiting_builds,
)
from tests.support.chain import assert_on_subject, chain, key, one, row, run_flushed

pytestmark = pytest.mark.integration


# ---- unused_index


async def test_unused_index_flags_only_the_never_scanned_droppable_index(
        pg_db: postgres.PostgresDatabase, nats_server: NatsServer, tmp_path: Path) -> None:
    run_flushed(
        pg_db,
        "CREATE TABLE customers (id int PRIMARY KEY)",
        "CREATE TABLE orders (id int PRIMARY KEY, customer_id int REFERENCES customers, "
        "sku int, colour int, code int)",
        "INSERT INTO customers SELECT generate_series(1, 100)",
        "INSERT INTO orders SELECT g, g % 100 + 1, g, g % 7, g FROM generate_series(1, 10000) g",
        "CREATE INDEX orders_colour_idx ON orders (colour)",  # never scanned
        "CREATE INDEX orders_sku_idx ON orders (sku)",  # scanned below
        "CREATE UNIQUE INDEX orders_code_key ON orders (code)",  # unique
        "CREATE INDEX orders_customer_id_idx ON orders (customer_id)")  # backs the FK
    run_flushed(pg_db, "VACUUM ANALYZE customers, orders")
    run_flushed(pg_db, "SELECT * FROM orders WHERE sku = 42")
    with pg_db.connect() as conn:
        scans = dict(conn.execute("SELECT indexrelname, idx_scan FROM pg_stat_user_indexes "
                                  "WHERE relname = 'orders'").fetchall())
        size = int(one(conn, "SELECT pg_relation_size('orders_colour_idx')"))
    assert scans == {"orders_pkey": 0, "orders_colour_idx": 0, "orders_sku_idx": 1,
                     "orders_code_key": 0, "orders_customer_id_idx": 0}
    async with chain(pg_db, nats_server, tmp_path,
                     unused_index={"minAge": "3s", "minSize": "1Ki"}) as run:
        found = await run.find(DetectorId.UNUSED_INDEX, lambda d: True)
        await run.snapshots(4)
    assert found.proposed_action is ActionId.DROP_INDEX
    assert found.risk_class is RiskClass.DESTRUCTIVE and found.severity == "info"
    assert found.key == key(DetectorId.UNUSED_INDEX, "public.orders_colour_idx")
    assert (found.target.schema_, found.target.table, found.target.index) == (
        "public", "orders", "orders_colour_idx")
    evidence = found.evidence
    assert evidence["idx_scan"] == 0
    assert evidence["size_bytes"] == size
    assert int(evidence["watched_s"]) >= 3
    # This database's statistics were never reset; before 15 (tests/pg_matrix) the collector
    # dates them from when it first saw the database.
    version = row(pg_db, "SELECT current_setting('server_version_num')::int AS v")["v"]
    assert (evidence.get("stats_age_s") is None) is (version >= 150000)
    assert "(colour)" in str(evidence["definition"])
    assert_on_subject(run, DetectorId.UNUSED_INDEX)
    # Twins never named: the scanned index, the primary key, the unique index and the index
    # that backs the foreign key, all watched just as long.
    assert {d.key for d in run.received} == {found.key}, run.summaries()


# ---- duplicate_index


async def test_duplicate_index_flags_exact_twins_and_prefixes_but_not_distinct_indexes(
        pg_db: postgres.PostgresDatabase, nats_server: NatsServer, tmp_path: Path) -> None:
    with pg_db.connect() as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, customer int, status int, "
                     "created date)")
        conn.execute("CREATE INDEX orders_customer_idx ON orders (customer)")
        conn.execute("CREATE INDEX orders_customer_idx2 ON orders (customer)")  # exact twin
        conn.execute("CREATE INDEX orders_status_idx ON orders (status)")  # a prefix of:
        conn.execute("CREATE INDEX orders_status_created_idx ON orders (status, created)")
        # Healthy twins: every pair differs in something a read can tell.
        conn.execute("CREATE TABLE items (a int, b int, c int, d text)")
        for statement in (
                "CREATE UNIQUE INDEX items_a_key ON items (a)",  # enforces: never redundant
                "CREATE INDEX items_a_b_idx ON items (a, b)",
                "CREATE INDEX items_b_idx ON items (b)",
                "CREATE INDEX items_b_positive_idx ON items (b) WHERE c > 0",  # predicate
                "CREATE INDEX items_c_desc_idx ON items (c DESC)",  # ordering
                "CREATE INDEX items_c_d_idx ON items (c, d)",
                "CREATE INDEX items_d_idx ON items (d)",
                "CREATE INDEX items_d_hash_idx ON items USING hash (d)",  # method
                "CREATE INDEX items_lower_d_idx ON items (lower(d))"):  # expression
            conn.execute(statement)
    async with chain(pg_db, nats_server, tmp_path) as run:
        twin = await run.find(DetectorId.DUPLICATE_INDEX,
                              lambda d: d.target.index == "orders_customer_idx2")
        prefix = await run.find(DetectorId.DUPLICATE_INDEX,
                                lambda d: d.target.index == "orders_status_idx")
        await run.snapshots(3)
    for found in (twin, prefix):
        assert found.proposed_action is ActionId.DROP_INDEX
        assert found.risk_class is RiskClass.DESTRUCTIVE
        assert (found.target.schema_, found.target.table) == ("public", "orders")
    assert twin.key == key(DetectorId.DUPLICATE_INDEX, "public.orders_customer_idx2")
    assert twin.evidence["duplicate_of"] == "public.orders_customer_idx"
    assert twin.evidence["exact"] is True
    assert twin.evidence["size_bytes"] == 8192 and twin.evidence["idx_scan"] == 0
    assert prefix.key == key(DetectorId.DUPLICATE_INDEX, "public.orders_status_idx")
    assert prefix.evidence["duplicate_of"] == "public.orders_status_created_idx"
    assert prefix.evidence["exact"] is False
    assert "(status, created)" in str(prefix.evidence["kept_definition"])
    assert_on_subject(run, DetectorId.DUPLICATE_INDEX)
    # One of two twins only, and nothing on the distinct indexes of items.
    assert {d.key for d in run.received} == {twin.key, prefix.key}, run.summaries()


# ---- invalid_index beside live builds (issue 23.1)


async def test_invalid_index_leaves_someone_elses_live_build_alone_but_not_the_executors(
        pg_db: postgres.PostgresDatabase, app_conninfo: str, nats_server: NatsServer,
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="startupmonkey.analyser.detectors.indexes")
    with waiting_builds(pg_db, app_conninfo) as builds:
        async with chain(pg_db, nats_server, tmp_path, invalid_index={"minAge": "1s"}) as run:
            own = await run.find(DetectorId.INVALID_INDEX,
                                 lambda d: d.target.index == OWN_INDEX)
            # Both were INVALID for minAge at the same rounds: a few more rounds prove the
            # migration's index is held back, not merely late.
            await run.snapshots(4)
    assert own.proposed_action is ActionId.DROP_INVALID_INDEX
    assert own.evidence["builder_pids"] == str(builds.own.pid)
    assert "only the executor's own build is still at it" in str(own.evidence["builder"])
    assert f"application {OWN_APP!r}" in str(own.evidence["builder"])
    flagged = {d.target.index for d in run.of(DetectorId.INVALID_INDEX)}
    assert flagged == {OWN_INDEX}, run.summaries()
    assert MIGRATION_INDEX not in flagged
    held = [r.getMessage() for r in caplog.records if "not flagged" in r.getMessage()]
    assert held and f"public.{MIGRATION_INDEX}" in held[0], caplog.text[-2000:]
    assert f"still being built by pid {builds.migration.pid}" in held[0]
    assert "'migrate-tool'" in held[0] and "waiting for old snapshots" in held[0]
