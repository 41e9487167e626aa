"""The collector's tables and indexes statements against the views they replace (issue 19).

``queries.tables`` and ``queries.indexes`` read the ``pg_stat_get_*`` functions directly and
join every per-table aggregate (indexes' counters and sizes, the ``pg_inherits`` parent, the
``pg_locks`` of locked relations, the block size) once, where the statements before them read
``pg_stat_user_tables``/``pg_statio_user_tables``/``pg_stat_user_indexes``/
``pg_statio_user_indexes`` and ran subqueries per row. The earlier statements are kept here,
verbatim, as the reference: both run in one transaction on a real server over a schema with
partitions (and partitioned indexes), multiple inheritance, TOAST, unlogged and
materialized relations, a table without index, a table locked ACCESS EXCLUSIVE and an index
being dropped in an open transaction, and must return the same rows, column by column.
(``tests/pg_matrix/test_collector_queries.py`` runs this on every major.)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final, LiteralString

import psycopg
import pytest
from psycopg import rows as pg_rows

from startupmonkey.collector import queries
from startupmonkey.collector.queries import (
    _CURRENT_DB,
    _LOCKED,
    _MEASURE,
    _MEASURED_TABLE,
    _USER_RELATION,
    PG16,
    _since,
)
from startupmonkey.localserv import postgres
from tests.support import workloads
from tests.support.eventually import wait_until

pytestmark = pytest.mark.integration

SCHEMA = """
CREATE TABLE plain (id int PRIMARY KEY, note text, amount numeric)
    WITH (autovacuum_vacuum_scale_factor = 0.05, toast.autovacuum_enabled = false);
CREATE INDEX plain_amount ON plain (amount);
INSERT INTO plain SELECT g, repeat(md5(g::text), 200), g FROM generate_series(1, 300) g;
CREATE TABLE no_index (a int, b text);
INSERT INTO no_index SELECT g, 'x' FROM generate_series(1, 50) g;
CREATE UNLOGGED TABLE unlogged (id int PRIMARY KEY, v int);
INSERT INTO unlogged SELECT g, g FROM generate_series(1, 100) g;
CREATE TABLE measured (id int PRIMARY KEY, b int UNIQUE, c int);
CREATE INDEX measured_c ON measured (c);
INSERT INTO measured SELECT g, g, g FROM generate_series(1, 1000) g;
CREATE TABLE events (id int, at date NOT NULL, payload text) PARTITION BY RANGE (at);
CREATE INDEX events_at ON events (at);
CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')
    PARTITION BY RANGE (id);
CREATE TABLE events_2026_a PARTITION OF events_2026 FOR VALUES FROM (0) TO (1000);
INSERT INTO events SELECT g, DATE '2025-06-01' + (g % 400), 'p' FROM generate_series(1, 900) g;
CREATE TABLE base_a (a int);
CREATE TABLE base_b (b int);
CREATE TABLE child (c int PRIMARY KEY) INHERITS (base_a, base_b);
INSERT INTO child SELECT g, g, g FROM generate_series(1, 20) g;
CREATE MATERIALIZED VIEW totals AS SELECT id % 10 AS k, count(*) AS n FROM plain GROUP BY 1;
CREATE UNIQUE INDEX totals_k ON totals (k);
CREATE TABLE locked (id int PRIMARY KEY);
CREATE TABLE dropping (id int PRIMARY KEY, v int);
CREATE INDEX dropping_v ON dropping (v);
CREATE SCHEMA other;
CREATE TABLE other.elsewhere (id int PRIMARY KEY);
"""
MAINTENANCE = "VACUUM ANALYZE plain, unlogged, measured, child, no_index"

WORKLOAD = (
    "SELECT count(*) FROM plain WHERE amount = 5",
    "SELECT count(*) FROM plain",
    "SELECT length(note) FROM plain WHERE id = 7",
    "SELECT count(*) FROM no_index",
    "SELECT * FROM measured WHERE id = 3",
    "SELECT * FROM measured WHERE b = 3",
    "SELECT count(*) FROM events WHERE at = DATE '2025-07-01'",
    "SELECT count(*) FROM base_a",
    "SELECT * FROM unlogged WHERE id = 9",
    "UPDATE measured SET c = c + 1 WHERE id < 10",
    "DELETE FROM no_index WHERE a < 5",
)


# -- the statements before issue 19, verbatim (the reference) ---------------------------------

def old_tables(version: int) -> LiteralString:
    """SECTION_TABLES as it was: the statistics views and per-row subqueries."""
    pg16 = version >= PG16
    newpage = _since(version, PG16, "s.n_tup_newpage_upd", "int8")
    last_scans: LiteralString = (
        "s.last_seq_scan, s.last_idx_scan" if pg16 else
        "NULL::timestamptz AS last_seq_scan, NULL::timestamptz AS last_idx_scan")
    return (
        "WITH " + _LOCKED + ", " + _MEASURE + " "
        "SELECT c.oid AS relid, n.nspname AS schema, c.relname AS name, "
        "c.relkind::text AS relkind, c.relispartition AS is_partition, "
        "(SELECT pg_catalog.min(i.inhparent::int8) FROM pg_catalog.pg_inherits i "
        "  WHERE i.inhrelid = c.oid) AS parent_relid, "
        "pg_catalog.pg_get_userbyid(c.relowner) AS owner, "
        "s.seq_scan, s.seq_tup_read, s.idx_scan, s.idx_tup_fetch, s.n_tup_ins, s.n_tup_upd, "
        "s.n_tup_del, s.n_tup_hot_upd, " + newpage + " AS n_tup_newpage_upd, "
        "s.n_live_tup, s.n_dead_tup, s.n_mod_since_analyze, s.n_ins_since_vacuum, "
        "s.last_vacuum, s.last_autovacuum, s.last_analyze, s.last_autoanalyze, "
        "s.vacuum_count, s.autovacuum_count, s.analyze_count, s.autoanalyze_count, "
        + last_scans + ", "
        "io.heap_blks_read, io.heap_blks_hit, io.idx_blks_read, io.idx_blks_hit, "
        "io.toast_blks_read, io.toast_blks_hit, io.tidx_blks_read, io.tidx_blks_hit, "
        "c.reltuples, c.relpages, c.relallvisible, "
        "CASE WHEN " + _MEASURED_TABLE + " THEN pg_catalog.pg_table_size(c.oid) END "
        "AS table_bytes, "
        "CASE WHEN " + _MEASURED_TABLE + " THEN (SELECT "
        "  COALESCE(pg_catalog.sum(pg_catalog.pg_relation_size(x.indexrelid)), 0)::int8 "
        "  FROM pg_catalog.pg_index x WHERE x.indrelid = c.oid) END AS indexes_bytes, "
        "CASE WHEN NOT " + _MEASURED_TABLE + " THEN "
        "  (c.relpages::int8 + COALESCE(t.relpages, 0)) "
        "  * pg_catalog.current_setting('block_size')::int8 END AS table_bytes_estimate, "
        "CASE WHEN NOT " + _MEASURED_TABLE + " THEN "
        "  (SELECT COALESCE(pg_catalog.sum(ic.relpages), 0)::int8 "
        "     FROM pg_catalog.pg_index x JOIN pg_catalog.pg_class ic ON ic.oid = x.indexrelid "
        "    WHERE x.indrelid = c.oid) "
        "  * pg_catalog.current_setting('block_size')::int8 END AS indexes_bytes_estimate, "
        "CASE WHEN c.relfrozenxid <> '0'::xid THEN pg_catalog.age(c.relfrozenxid) END "
        "AS relfrozenxid_age, "
        "CASE WHEN c.relminmxid <> '0'::xid THEN pg_catalog.mxid_age(c.relminmxid) END "
        "AS relminmxid_age, "
        "NULLIF(c.reltoastrelid, 0) AS toast_relid, "
        "CASE WHEN t.relfrozenxid <> '0'::xid THEN pg_catalog.age(t.relfrozenxid) END "
        "AS toast_relfrozenxid_age, "
        "c.reloptions, t.reloptions AS toast_reloptions "
        "FROM pg_catalog.pg_class c "
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "LEFT JOIN pg_catalog.pg_stat_user_tables s ON s.relid = c.oid "
        "LEFT JOIN pg_catalog.pg_statio_user_tables io ON io.relid = c.oid "
        "LEFT JOIN pg_catalog.pg_class t ON t.oid = c.reltoastrelid "
        "LEFT JOIN locked lk ON lk.relid = c.oid "
        "LEFT JOIN measure m ON m.relid = c.oid "
        "WHERE c.relkind IN ('r', 'p', 'm') AND " + _USER_RELATION +
        "ORDER BY c.oid"
    )


def old_indexes(version: int) -> LiteralString:
    """SECTION_INDEXES as it was: the statistics views and a per-row pg_locks subquery."""
    last_scan = _since(version, PG16, "s.last_idx_scan", "timestamptz")
    return (
        "WITH " + _MEASURE + " "
        "SELECT x.indexrelid, x.indrelid AS relid, n.nspname AS schema, c.relname AS \"table\", "
        "ic.relname AS name, s.idx_scan, s.idx_tup_read, s.idx_tup_fetch, "
        + last_scan + " AS last_idx_scan, io.idx_blks_read, io.idx_blks_hit, "
        "CASE WHEN (%(measure_all)s OR m.relid IS NOT NULL) "
        "  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_locks l "
        "   WHERE l.locktype = 'relation' AND l.relation = x.indexrelid "
        "     AND l.mode = 'AccessExclusiveLock' AND l.database = " + _CURRENT_DB + ") "
        "  THEN pg_catalog.pg_relation_size(x.indexrelid) END AS size_bytes, "
        "ic.relpages::int8 * pg_catalog.current_setting('block_size')::int8 AS size_estimate, "
        "ic.relpages, ic.reltuples, x.indisvalid AS valid, x.indisready AS ready, "
        "x.indislive AS live, x.indisunique AS \"unique\", x.indisprimary AS \"primary\", "
        "x.indisexclusion AS exclusion, x.indisreplident AS replica_identity, "
        "con.oid AS constraint_oid, con.conname AS constraint_name "
        "FROM pg_catalog.pg_index x "
        "JOIN pg_catalog.pg_class ic ON ic.oid = x.indexrelid "
        "JOIN pg_catalog.pg_class c ON c.oid = x.indrelid "
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "LEFT JOIN pg_catalog.pg_stat_user_indexes s ON s.indexrelid = x.indexrelid "
        "LEFT JOIN pg_catalog.pg_statio_user_indexes io ON io.indexrelid = x.indexrelid "
        "LEFT JOIN pg_catalog.pg_constraint con ON con.conindid = x.indexrelid "
        "  AND con.conrelid = x.indrelid AND con.contype IN ('p', 'u', 'x') "
        "LEFT JOIN measure m ON m.relid = x.indrelid "
        "WHERE c.relkind IN ('r', 'p', 'm') AND " + _USER_RELATION +
        "ORDER BY x.indexrelid"
    )


_REFERENCE: Final = {"tables": old_tables, "indexes": old_indexes}
_CURRENT: Final = {"tables": queries.tables, "indexes": queries.indexes}


def _compare(conn: psycopg.Connection[Any], section: str, params: dict[str, Any],
             skip: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Both statements of ``section`` in one transaction (one statistics snapshot); the
    rows of the current one after asserting they equal the reference's, column by column."""
    version = conn.info.server_version
    with conn.transaction():
        if version >= 150000:  # PG15+: one statistics snapshot for the whole transaction
            conn.execute("SET LOCAL stats_fetch_consistency = snapshot")
        cur = conn.cursor(row_factory=pg_rows.dict_row)
        expected = cur.execute(_REFERENCE[section](version), params).fetchall()
        got = cur.execute(_CURRENT[section](version), params).fetchall()
    assert [list(row) for row in got[:1]] == [list(row) for row in expected[:1]]  # columns
    assert len(got) == len(expected)
    for old, new in zip(expected, got, strict=True):
        differs = {k: (old[k], new[k]) for k in old if k not in skip and old[k] != new[k]}
        assert not differs, (section, old.get("name"), differs)
    return got


@pytest.fixture
def schema(pg_db: postgres.PostgresDatabase) -> Iterator[postgres.PostgresDatabase]:
    """The schema above, with some activity."""
    with pg_db.connect() as conn:
        conn.execute(SCHEMA)  # type: ignore[arg-type]
        conn.commit()
        conn.autocommit = True
        conn.execute(MAINTENANCE)
        for statement in WORKLOAD:
            conn.execute(statement)  # type: ignore[arg-type]
    yield pg_db


def _monitor(database: postgres.PostgresDatabase) -> psycopg.Connection[Any]:
    conn = psycopg.connect(database.conninfo, autocommit=True)
    conn.execute(queries.SESSION_SETUP)
    return conn


def _oids(conn: psycopg.Connection[Any], *names: str) -> str:
    rows = conn.execute("SELECT oid FROM pg_catalog.pg_class WHERE relname = ANY(%s)",
                        (list(names),)).fetchall()
    return "{" + ",".join(str(r[0]) for r in rows) + "}"


def _checks(conn: psycopg.Connection[Any], expect_locked: bool) -> None:
    for params in ({"measure_all": True, "measure": "{}"},
                   {"measure_all": False, "measure": "{}"},
                   {"measure_all": False,
                    "measure": _oids(conn, "plain", "events_2025", "child", "locked",
                                     "dropping", "totals")}):
        tables = _compare(conn, "tables", params)
        indexes = _compare(conn, "indexes", params)
        by_name = {row["name"]: row for row in tables}
        assert {"plain", "no_index", "unlogged", "events", "events_2026_a", "child",
                "totals", "elsewhere"} <= set(by_name)
        assert by_name["events_2025"]["parent_relid"] == by_name["events"]["relid"]
        assert by_name["child"]["parent_relid"] == min(by_name["base_a"]["relid"],
                                                       by_name["base_b"]["relid"])
        assert by_name["plain"]["toast_relid"] is not None
        assert by_name["events"]["heap_blks_read"] is None  # partitioned: no I/O row
        assert by_name["no_index"]["idx_scan"] is None
        if params["measure_all"]:
            assert by_name["plain"]["table_bytes"] > 0
            assert by_name["locked"]["table_bytes"] is None if expect_locked else True
        index = {row["name"]: row for row in indexes}
        assert index["events_at"]["idx_scan"] is None  # partitioned index: no view row
        if expect_locked and params["measure_all"]:
            assert index["dropping_v"]["size_bytes"] is None
            assert index["plain_amount"]["size_bytes"] is not None


def test_tables_and_indexes_equal_the_statistics_views_row_for_row(
        schema: postgres.PostgresDatabase) -> None:
    with _monitor(schema) as conn:
        _counted(conn)
        _checks(conn, expect_locked=False)
        with (workloads.hold_lock(schema.conninfo, "locked"),
              workloads.idle_in_transaction(schema.conninfo,
                                            statement="DROP INDEX dropping_v")):
            _checks(conn, expect_locked=True)


def _counted(conn: psycopg.Connection[Any]) -> None:
    """Wait until the workload's counters reached the statistics system (a backend flushes
    them within a second when idle), so the comparison covers non-zero counters too."""
    def seen() -> bool:
        with conn.transaction():
            row = conn.execute(
                "SELECT idx_scan, n_tup_del FROM pg_catalog.pg_stat_user_tables "
                "WHERE relname = 'no_index'").fetchone()
            scans = conn.execute(
                "SELECT idx_scan FROM pg_catalog.pg_stat_user_indexes "
                "WHERE indexrelname = 'plain_amount'").fetchone()
        assert row is not None and row[1] > 0, row
        assert scans is not None and scans[0] > 0, scans
        return True
    wait_until(seen, timeout=30)
