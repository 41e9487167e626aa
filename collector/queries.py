"""Every SQL statement the collector runs, in one place, per PostgreSQL version.

Each *section* of a snapshot is one statement run in its own short transaction under its own
``statement_timeout`` (see :mod:`startupmonkey.collector.source`); its rows become typed
messages in :mod:`startupmonkey.collector.snapshot`. Rules every statement here follows:

- Readable with ``pg_monitor`` alone (it includes ``pg_read_all_stats`` and
  ``pg_read_all_settings``); no ``pg_stats`` of user tables, no superuser-only functions.
- Catalog objects and functions are schema-qualified (``pg_catalog.``), and the session runs
  with ``search_path = pg_catalog``, so a user object can never shadow what we read.
- Cheap on the hot path: ``pg_stat_statements(false)`` without query text; texts are read only
  for queryids that need one (:func:`statement_texts`); ``pg_blocking_pids()`` only for
  backends waiting on a lock; the full catalog only when :data:`CATALOG_FINGERPRINT` changed.
- Size functions take an ``AccessShareLock``, which would queue behind an
  ``ACCESS EXCLUSIVE`` lock (``ALTER TABLE``, ``VACUUM FULL``, a held ``LOCK TABLE``) until the
  statement timeout. Relations with such a lock held *or requested* are not measured: their
  size is estimated from ``pg_class.relpages`` for that round instead.
- Columns that exist only in some versions are chosen here from ``server_version_num`` (or
  the pg_stat_statements extension version), and read as NULL elsewhere.

Every text column that can be long is cut in SQL to a character count (so a 1 MB query never
crosses the wire); :mod:`snapshot` then cuts to the exact byte limits of ``limits.py``.
"""

from __future__ import annotations

from typing import Final, LiteralString

from psycopg import sql

from startupmonkey import db

PG14: Final = 140000
PG15: Final = 150000
PG16: Final = 160000
PG17: Final = 170000

SESSION_SETUP: Final = "SELECT pg_catalog.set_config('search_path', 'pg_catalog', false)"
"""Run once per connection: nothing outside pg_catalog resolves implicitly."""

SECTION_START: Final = (
    "SELECT pg_catalog.set_config('statement_timeout', %s, true), "
    "pg_catalog.clock_timestamp()"
)
"""First statement of every section's transaction: its timeout, and the server clock at that
moment, which is the section's sample time (SectionStatus.collected_at)."""

_CURRENT_DB: Final = (
    "(SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())"
)

_USER_RELATION: Final = (
    "c.relpersistence <> 't' "
    "AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
    "AND n.nspname !~ '^pg_toast' "
)
"""Relations the product may reason about and act on: permanent and unlogged user relations
(other sessions' temporary tables can be neither indexed nor vacuumed by anyone else)."""

SETTING_NAMES: Final = (
    "max_connections", "superuser_reserved_connections", "reserved_connections", "block_size",
    "shared_buffers", "work_mem", "maintenance_work_mem", "autovacuum", "autovacuum_naptime",
    "autovacuum_max_workers", "autovacuum_vacuum_threshold", "autovacuum_vacuum_scale_factor",
    "autovacuum_vacuum_insert_threshold", "autovacuum_vacuum_insert_scale_factor",
    "autovacuum_analyze_threshold", "autovacuum_analyze_scale_factor",
    "autovacuum_freeze_max_age", "autovacuum_multixact_freeze_max_age",
    "autovacuum_vacuum_cost_delay", "autovacuum_vacuum_cost_limit", "vacuum_freeze_min_age",
    "vacuum_freeze_table_age", "vacuum_defer_cleanup_age", "old_snapshot_threshold",
    "hot_standby_feedback", "track_counts", "track_activities", "track_io_timing",
    "track_activity_query_size", "compute_query_id", "stats_fetch_consistency",
    "idle_in_transaction_session_timeout", "statement_timeout", "lock_timeout",
    "shared_preload_libraries", "pg_stat_statements.max", "pg_stat_statements.track",
    "pg_stat_statements.track_planning", "max_prepared_transactions", "max_replication_slots",
    "random_page_cost", "seq_page_cost", "effective_cache_size", "default_statistics_target",
)
"""The settings snapshot.proto promises (names a server lacks are simply absent)."""


def _since(version: int, minimum: int, expression: LiteralString,
           null_type: LiteralString) -> LiteralString:
    """``expression`` on servers from ``minimum`` on, else a typed NULL."""
    return expression if version >= minimum else "NULL::" + null_type


def database(version: int) -> LiteralString:
    """SECTION_DATABASE: identity, pg_stat_database of this database, xid ages.

    Parameter ``measure_size``: whether to run ``pg_database_size()`` this round (it walks the
    database's directory: about 25 ms per 1,000 tables).
    """
    pg14 = version >= PG14
    sessions: LiteralString = (
        "s.session_time, s.active_time, s.idle_in_transaction_time, s.sessions, "
        "s.sessions_abandoned, s.sessions_fatal, s.sessions_killed"
        if pg14 else
        "NULL::float8 AS session_time, NULL::float8 AS active_time, "
        "NULL::float8 AS idle_in_transaction_time, NULL::int8 AS sessions, "
        "NULL::int8 AS sessions_abandoned, NULL::int8 AS sessions_fatal, "
        "NULL::int8 AS sessions_killed")
    return (
        "SELECT pg_catalog.current_database() AS dbname, d.oid AS datid, "
        "pg_catalog.current_setting('server_version_num')::int AS server_version_num, "
        "pg_catalog.current_setting('server_version') AS server_version, "
        "(SELECT system_identifier FROM pg_catalog.pg_control_system()) "
        "AS system_identifier, "
        "pg_catalog.pg_postmaster_start_time() AS postmaster_start_time, "
        "pg_catalog.pg_conf_load_time() AS conf_load_time, "
        "pg_catalog.pg_is_in_recovery() AS in_recovery, "
        "s.numbackends, s.xact_commit, s.xact_rollback, s.blks_read, s.blks_hit, "
        "s.tup_returned, s.tup_fetched, s.tup_inserted, s.tup_updated, s.tup_deleted, "
        "s.conflicts, s.temp_files, s.temp_bytes, s.deadlocks, s.checksum_failures, "
        "s.blk_read_time, s.blk_write_time, " + sessions + ", s.stats_reset, "
        "CASE WHEN %(measure_size)s THEN pg_catalog.pg_database_size(d.oid) END "
        "AS database_size_bytes, d.datconnlimit, "
        "pg_catalog.age(d.datfrozenxid) AS datfrozenxid_age, "
        "pg_catalog.mxid_age(d.datminmxid) AS datminmxid_age, "
        "(SELECT pg_catalog.max(pg_catalog.age(o.datfrozenxid)) "
        "   FROM pg_catalog.pg_database o WHERE o.datallowconn) "
        "AS cluster_max_datfrozenxid_age, "
        "pg_catalog.pg_snapshot_xmax(pg_catalog.pg_current_snapshot())::text::int8 "
        "AS next_xid, "
        "pg_catalog.pg_has_role('pg_read_all_stats', 'USAGE') AS can_read_all_stats "
        "FROM pg_catalog.pg_database d "
        "JOIN pg_catalog.pg_stat_database s ON s.datid = d.oid "
        "WHERE d.datname = pg_catalog.current_database()"
    )


SETTINGS: Final = (
    "SELECT name, setting, COALESCE(unit, '') AS unit, vartype, source, pending_restart "
    "FROM pg_catalog.pg_settings WHERE name = ANY(%s) ORDER BY name"
)
"""SECTION_SETTINGS, with :data:`SETTING_NAMES` as the parameter."""

_LOCKED: Final = (
    "locked AS ("
    " SELECT l.relation AS relid FROM pg_catalog.pg_locks l"
    "  WHERE l.locktype = 'relation' AND l.mode = 'AccessExclusiveLock'"
    "    AND l.database = " + _CURRENT_DB +
    " UNION"
    " SELECT x.indrelid FROM pg_catalog.pg_locks l"
    "   JOIN pg_catalog.pg_index x ON x.indexrelid = l.relation"
    "  WHERE l.locktype = 'relation' AND l.mode = 'AccessExclusiveLock'"
    "    AND l.database = " + _CURRENT_DB + ")"
)
"""Relations (and tables of indexes) under an ACCESS EXCLUSIVE lock, granted or awaited."""


_MEASURE: Final = (
    "measure AS (SELECT DISTINCT pg_catalog.unnest(%(measure)s::pg_catalog.oid[]) AS relid)"
)
"""The tables whose sizes are measured this round, joined (not searched per row)."""

_MEASURED_TABLE: Final = "(lk.relid IS NULL AND (%(measure_all)s OR m.relid IS NOT NULL))"


_LOCKED_INDEXES: Final = (
    "locked_index AS ("
    " SELECT DISTINCT l.relation AS indexrelid FROM pg_catalog.pg_locks l"
    "  WHERE l.locktype = 'relation' AND l.mode = 'AccessExclusiveLock'"
    "    AND l.database = " + _CURRENT_DB + ")"
)
"""Relations under an ACCESS EXCLUSIVE lock, granted or awaited (read once, joined by oid)."""

_BLOCK_SIZE: Final = (
    "block AS (SELECT pg_catalog.current_setting('block_size')::int8 AS size)"
)
"""The server's block size, read once per statement (not once per row)."""

_USER_RELS: Final = (
    "rel AS (SELECT c.oid, c.reltoastrelid FROM pg_catalog.pg_class c"
    "  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
    "  WHERE c.relkind IN ('r', 'p', 'm') AND " + _USER_RELATION + ")"
)

_PARENTS: Final = (
    "parent AS (SELECT i.inhrelid, pg_catalog.min(i.inhparent::int8) AS parent_relid"
    "  FROM pg_catalog.pg_inherits i GROUP BY i.inhrelid)"
)
"""The direct parent of every partition and inheritance child, one aggregate for all rows."""


def _index_totals(version: int) -> LiteralString:
    """Per table (and per TOAST table): its indexes' counters, pages and measured sizes.

    What ``pg_stat_all_tables`` and ``pg_statio_all_tables`` aggregate per row, computed once
    for all tables with the ``pg_stat_get_*`` functions those views call. Index sizes are
    measured only for tables measured this round (``measure``/``measure_all``) and not locked.
    """
    last_scan: LiteralString = (
        ", pg_catalog.max(pg_catalog.pg_stat_get_lastscan(x.indexrelid)) AS last_idx_scan"
        if version >= PG16 else "")
    return (
        "ix AS (SELECT x.indrelid, "
        "  pg_catalog.sum(pg_catalog.pg_stat_get_numscans(x.indexrelid))::int8 AS idx_scan, "
        "  pg_catalog.sum(pg_catalog.pg_stat_get_tuples_fetched(x.indexrelid))::int8 "
        "  AS idx_tup_fetch, "
        "  pg_catalog.sum(pg_catalog.pg_stat_get_blocks_fetched(x.indexrelid) "
        "    - pg_catalog.pg_stat_get_blocks_hit(x.indexrelid))::int8 AS blks_read, "
        "  pg_catalog.sum(pg_catalog.pg_stat_get_blocks_hit(x.indexrelid))::int8 AS blks_hit, "
        "  pg_catalog.sum(ic.relpages)::int8 AS relpages, "
        "  pg_catalog.sum(CASE WHEN lk.relid IS NULL AND (%(measure_all)s OR m.relid IS NOT NULL)"
        "    THEN pg_catalog.pg_relation_size(x.indexrelid) END)::int8 AS bytes"
        + last_scan + " "
        "  FROM (SELECT oid FROM rel UNION ALL"
        "        SELECT reltoastrelid FROM rel WHERE reltoastrelid <> 0) r "
        "  JOIN pg_catalog.pg_index x ON x.indrelid = r.oid "
        "  JOIN pg_catalog.pg_class ic ON ic.oid = x.indexrelid "
        "  LEFT JOIN locked lk ON lk.relid = x.indrelid "
        "  LEFT JOIN measure m ON m.relid = x.indrelid "
        "  GROUP BY x.indrelid)"
    )


def tables(version: int) -> LiteralString:
    """SECTION_TABLES: the counters of pg_stat_user_tables and pg_statio_user_tables, pg_class
    and sizes, one row per user table.

    The counters come from the ``pg_stat_get_*`` functions the two views are made of (the
    same values, NULL where the views have no row or NULL: I/O of partitioned tables, index
    columns of tables without index, TOAST columns of tables without TOAST), because the views
    aggregate ``pg_index`` once per table; here every per-table aggregate (indexes' counters,
    pages and sizes, the ``pg_inherits`` parent) is one grouped CTE joined by oid, and no row
    runs a subquery.

    Sizes cost a file-system call per relation fork, so they are measured only for the
    tables the caller names (``measure``, or all with ``measure_all``) and not locked; the
    other rows carry ``*_estimate`` columns from ``pg_class.relpages`` instead (the collector
    prefers its last measurement of them). ``indexes_bytes`` is the sum of
    ``pg_relation_size()`` of the table's indexes.
    """
    pg16 = version >= PG16
    newpage = _since(version, PG16, "pg_catalog.pg_stat_get_tuples_newpage_updated(c.oid)",
                     "int8")

    def stat(expression: LiteralString) -> LiteralString:
        """A pg_stat_all_tables column: before PostgreSQL 14 the view has no row for a
        partitioned table, so there it is NULL, as the view gave it."""
        if version >= PG14:
            return expression
        return "CASE WHEN c.relkind <> 'p' THEN " + expression + " END"

    last_scans: LiteralString = (
        "pg_catalog.pg_stat_get_lastscan(c.oid) AS last_seq_scan, ix.last_idx_scan" if pg16
        else "NULL::timestamptz AS last_seq_scan, NULL::timestamptz AS last_idx_scan")
    return (
        "WITH " + _LOCKED + ", " + _MEASURE + ", " + _USER_RELS + ", " + _index_totals(version)
        + ", " + _PARENTS + ", " + _BLOCK_SIZE + " "
        "SELECT c.oid AS relid, n.nspname AS schema, c.relname AS name, "
        "c.relkind::text AS relkind, c.relispartition AS is_partition, p.parent_relid, "
        "pg_catalog.pg_get_userbyid(c.relowner) AS owner, "
        + stat("pg_catalog.pg_stat_get_numscans(c.oid)") + " AS seq_scan, "
        + stat("pg_catalog.pg_stat_get_tuples_returned(c.oid)") + " AS seq_tup_read, "
        + stat("ix.idx_scan") + " AS idx_scan, "
        + stat("ix.idx_tup_fetch + pg_catalog.pg_stat_get_tuples_fetched(c.oid)")
        + " AS idx_tup_fetch, "
        + stat("pg_catalog.pg_stat_get_tuples_inserted(c.oid)") + " AS n_tup_ins, "
        + stat("pg_catalog.pg_stat_get_tuples_updated(c.oid)") + " AS n_tup_upd, "
        + stat("pg_catalog.pg_stat_get_tuples_deleted(c.oid)") + " AS n_tup_del, "
        + stat("pg_catalog.pg_stat_get_tuples_hot_updated(c.oid)") + " AS n_tup_hot_upd, "
        + stat(newpage) + " AS n_tup_newpage_upd, "
        + stat("pg_catalog.pg_stat_get_live_tuples(c.oid)") + " AS n_live_tup, "
        + stat("pg_catalog.pg_stat_get_dead_tuples(c.oid)") + " AS n_dead_tup, "
        + stat("pg_catalog.pg_stat_get_mod_since_analyze(c.oid)") + " AS n_mod_since_analyze, "
        + stat("pg_catalog.pg_stat_get_ins_since_vacuum(c.oid)") + " AS n_ins_since_vacuum, "
        + stat("pg_catalog.pg_stat_get_last_vacuum_time(c.oid)") + " AS last_vacuum, "
        + stat("pg_catalog.pg_stat_get_last_autovacuum_time(c.oid)") + " AS last_autovacuum, "
        + stat("pg_catalog.pg_stat_get_last_analyze_time(c.oid)") + " AS last_analyze, "
        + stat("pg_catalog.pg_stat_get_last_autoanalyze_time(c.oid)") + " AS last_autoanalyze, "
        + stat("pg_catalog.pg_stat_get_vacuum_count(c.oid)") + " AS vacuum_count, "
        + stat("pg_catalog.pg_stat_get_autovacuum_count(c.oid)") + " AS autovacuum_count, "
        + stat("pg_catalog.pg_stat_get_analyze_count(c.oid)") + " AS analyze_count, "
        + stat("pg_catalog.pg_stat_get_autoanalyze_count(c.oid)") + " AS autoanalyze_count, "
        + last_scans + ", "
        # pg_statio_all_tables has no row for a partitioned table: its I/O columns are NULL.
        "CASE WHEN c.relkind <> 'p' THEN pg_catalog.pg_stat_get_blocks_fetched(c.oid) "
        "  - pg_catalog.pg_stat_get_blocks_hit(c.oid) END AS heap_blks_read, "
        "CASE WHEN c.relkind <> 'p' THEN pg_catalog.pg_stat_get_blocks_hit(c.oid) END "
        "AS heap_blks_hit, "
        "CASE WHEN c.relkind <> 'p' THEN ix.blks_read END AS idx_blks_read, "
        "CASE WHEN c.relkind <> 'p' THEN ix.blks_hit END AS idx_blks_hit, "
        "pg_catalog.pg_stat_get_blocks_fetched(t.oid) - pg_catalog.pg_stat_get_blocks_hit(t.oid) "
        "AS toast_blks_read, pg_catalog.pg_stat_get_blocks_hit(t.oid) AS toast_blks_hit, "
        "tx.blks_read AS tidx_blks_read, tx.blks_hit AS tidx_blks_hit, "
        "c.reltuples, c.relpages, c.relallvisible, "
        "CASE WHEN " + _MEASURED_TABLE + " THEN pg_catalog.pg_table_size(c.oid) END "
        "AS table_bytes, "
        "CASE WHEN " + _MEASURED_TABLE + " THEN COALESCE(ix.bytes, 0) END AS indexes_bytes, "
        "CASE WHEN NOT " + _MEASURED_TABLE + " THEN "
        "  (c.relpages::int8 + COALESCE(t.relpages, 0)) * block.size END "
        "AS table_bytes_estimate, "
        "CASE WHEN NOT " + _MEASURED_TABLE + " THEN COALESCE(ix.relpages, 0) * block.size END "
        "AS indexes_bytes_estimate, "
        "CASE WHEN c.relfrozenxid <> '0'::xid THEN pg_catalog.age(c.relfrozenxid) END "
        "AS relfrozenxid_age, "
        "CASE WHEN c.relminmxid <> '0'::xid THEN pg_catalog.mxid_age(c.relminmxid) END "
        "AS relminmxid_age, "
        "NULLIF(c.reltoastrelid, 0) AS toast_relid, "
        "CASE WHEN t.relfrozenxid <> '0'::xid THEN pg_catalog.age(t.relfrozenxid) END "
        "AS toast_relfrozenxid_age, "
        "c.reloptions, t.reloptions AS toast_reloptions "
        "FROM rel r "
        "JOIN pg_catalog.pg_class c ON c.oid = r.oid "
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "CROSS JOIN block "
        "LEFT JOIN pg_catalog.pg_class t ON t.oid = c.reltoastrelid "
        "LEFT JOIN ix ON ix.indrelid = c.oid "
        "LEFT JOIN ix tx ON tx.indrelid = t.oid "
        "LEFT JOIN parent p ON p.inhrelid = c.oid "
        "LEFT JOIN locked lk ON lk.relid = c.oid "
        "LEFT JOIN measure m ON m.relid = c.oid "
        "ORDER BY c.oid"
    )


def indexes(version: int) -> LiteralString:
    """SECTION_INDEXES: the counters of pg_stat_user_indexes and pg_statio_user_indexes,
    pg_index and size, one row per index of a user table.

    Counters come from the ``pg_stat_get_*`` functions those views call (NULL for indexes of
    partitioned tables, which the views leave out). ``size_bytes`` is measured for indexes of
    the tables :func:`tables` measures (same parameters) unless the index is locked (one
    ``pg_locks`` read joined by oid); ``size_estimate`` comes from relpages.
    """
    last_scan: LiteralString = (
        "CASE WHEN c.relkind <> 'p' THEN pg_catalog.pg_stat_get_lastscan(x.indexrelid) END"
        if version >= PG16 else "NULL::timestamptz")
    return (
        "WITH " + _MEASURE + ", " + _LOCKED_INDEXES + ", " + _BLOCK_SIZE + " "
        "SELECT x.indexrelid, x.indrelid AS relid, n.nspname AS schema, c.relname AS \"table\", "
        "ic.relname AS name, "
        "CASE WHEN c.relkind <> 'p' THEN pg_catalog.pg_stat_get_numscans(x.indexrelid) END "
        "AS idx_scan, "
        "CASE WHEN c.relkind <> 'p' THEN pg_catalog.pg_stat_get_tuples_returned(x.indexrelid) "
        "END AS idx_tup_read, "
        "CASE WHEN c.relkind <> 'p' THEN pg_catalog.pg_stat_get_tuples_fetched(x.indexrelid) "
        "END AS idx_tup_fetch, "
        + last_scan + " AS last_idx_scan, "
        "CASE WHEN c.relkind <> 'p' THEN pg_catalog.pg_stat_get_blocks_fetched(x.indexrelid) "
        "  - pg_catalog.pg_stat_get_blocks_hit(x.indexrelid) END AS idx_blks_read, "
        "CASE WHEN c.relkind <> 'p' THEN pg_catalog.pg_stat_get_blocks_hit(x.indexrelid) END "
        "AS idx_blks_hit, "
        "CASE WHEN (%(measure_all)s OR m.relid IS NOT NULL) AND lk.indexrelid IS NULL "
        "  THEN pg_catalog.pg_relation_size(x.indexrelid) END AS size_bytes, "
        "ic.relpages::int8 * block.size AS size_estimate, "
        "ic.relpages, ic.reltuples, x.indisvalid AS valid, x.indisready AS ready, "
        "x.indislive AS live, x.indisunique AS \"unique\", x.indisprimary AS \"primary\", "
        "x.indisexclusion AS exclusion, x.indisreplident AS replica_identity, "
        "con.oid AS constraint_oid, con.conname AS constraint_name "
        "FROM pg_catalog.pg_index x "
        "JOIN pg_catalog.pg_class ic ON ic.oid = x.indexrelid "
        "JOIN pg_catalog.pg_class c ON c.oid = x.indrelid "
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "CROSS JOIN block "
        "LEFT JOIN pg_catalog.pg_constraint con ON con.conindid = x.indexrelid "
        "  AND con.conrelid = x.indrelid AND con.contype IN ('p', 'u', 'x') "
        "LEFT JOIN measure m ON m.relid = x.indrelid "
        "LEFT JOIN locked_index lk ON lk.indexrelid = x.indexrelid "
        "WHERE c.relkind IN ('r', 'p', 'm') AND " + _USER_RELATION +
        "ORDER BY x.indexrelid"
    )


STATEMENTS_EXTENSION: Final = (
    "SELECT e.extversion, n.nspname AS schema FROM pg_catalog.pg_extension e "
    "JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace "
    "WHERE e.extname = 'pg_stat_statements'"
)
"""Is pg_stat_statements created in this database, which version, in which schema."""


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())


def statements(schema: str, extversion: str) -> sql.Composed:
    """SECTION_STATEMENTS: ``pg_stat_statements(false)`` of this database, top by time.

    Columns follow the extension version (1.8 PG13, 1.9 PG14, 1.10 PG15/16, 1.11 PG17).
    Parameter: the row limit.
    """
    ext = _version_tuple(extversion)
    toplevel: LiteralString = "s.toplevel" if ext >= (1, 9) else "NULL::bool AS toplevel"
    temp_times: LiteralString = (
        "s.temp_blk_read_time, s.temp_blk_write_time" if ext >= (1, 10) else
        "NULL::float8 AS temp_blk_read_time, NULL::float8 AS temp_blk_write_time")
    shared_times: LiteralString = (
        "s.shared_blk_read_time AS blk_read_time, s.shared_blk_write_time AS blk_write_time, "
        "s.stats_since, s.minmax_stats_since" if ext >= (1, 11) else
        "s.blk_read_time, s.blk_write_time, NULL::timestamptz AS stats_since, "
        "NULL::timestamptz AS minmax_stats_since")
    text: LiteralString = (
        "SELECT s.queryid, s.userid, s.dbid, " + toplevel + ", s.calls, s.total_exec_time, "
        "s.min_exec_time, s.max_exec_time, s.mean_exec_time, s.stddev_exec_time, s.rows, "
        "s.plans, s.total_plan_time, s.shared_blks_hit, s.shared_blks_read, "
        "s.shared_blks_dirtied, s.shared_blks_written, s.local_blks_hit, s.local_blks_read, "
        "s.local_blks_dirtied, s.local_blks_written, s.temp_blks_read, s.temp_blks_written, "
        + shared_times + ", " + temp_times + ", s.wal_records, s.wal_fpi, s.wal_bytes "
        "FROM {}.pg_stat_statements(false) s "
        "WHERE s.dbid = " + _CURRENT_DB + " AND s.queryid IS NOT NULL "
        "ORDER BY s.total_exec_time DESC, s.queryid LIMIT %s"
    )
    return sql.SQL(text).format(sql.Identifier(schema))


def statements_info(schema: str, extversion: str) -> sql.Composed | None:
    """pg_stat_statements_info (extension 1.9+, PostgreSQL 14+); None before."""
    if _version_tuple(extversion) < (1, 9):
        return None
    return sql.SQL("SELECT dealloc, stats_reset FROM {}.pg_stat_statements_info").format(
        sql.Identifier(schema))


def statement_texts(schema: str) -> sql.Composed:
    """SECTION_STATEMENT_TEXTS: normalized text of chosen queryids.

    Parameters: the character cut (``MAX_STATEMENT_TEXT_BYTES``) and the queryids (int8[]).
    ``pg_stat_statements(true)`` reads the whole query-text file, so this runs only when a
    queryid needs a text the collector does not hold yet.
    """
    text: LiteralString = (
        "SELECT DISTINCT ON (s.queryid) s.queryid, pg_catalog.left(s.query, %s) AS query, "
        "pg_catalog.octet_length(s.query) AS query_bytes "
        "FROM {}.pg_stat_statements(true) s "
        "WHERE s.dbid = " + _CURRENT_DB + " AND s.queryid = ANY(%s) "
        "ORDER BY s.queryid, s.total_exec_time DESC"
    )
    return sql.SQL(text).format(sql.Identifier(schema))


def sessions(version: int) -> LiteralString:
    """SECTION_SESSIONS: every backend of the cluster (pg_stat_activity).

    ``pg_blocking_pids()`` is evaluated only for backends waiting on a heavyweight lock (it
    takes every lock-manager partition lock). Parameter: the character cut of ``query``.
    """
    query_id = _since(version, PG14, "a.query_id", "int8")
    return (
        "SELECT a.pid, COALESCE(a.datid, 0) AS datid, COALESCE(a.datname, '') AS datname, "
        "COALESCE(a.usesysid, 0) AS usesysid, COALESCE(a.usename, '') AS usename, "
        "COALESCE(a.application_name, '') AS application_name, "
        "COALESCE(pg_catalog.host(a.client_addr), '') AS client_addr, "
        "COALESCE(a.client_port, 0) AS client_port, "
        "COALESCE(a.backend_type, '') AS backend_type, COALESCE(a.state, '') AS state, "
        "a.backend_start, a.xact_start, a.query_start, a.state_change, "
        "COALESCE(a.wait_event_type, '') AS wait_event_type, "
        "COALESCE(a.wait_event, '') AS wait_event, "
        "a.backend_xid::text::int8 AS backend_xid, "
        "pg_catalog.age(a.backend_xid) AS backend_xid_age, "
        "a.backend_xmin::text::int8 AS backend_xmin, "
        "pg_catalog.age(a.backend_xmin) AS backend_xmin_age, "
        "CASE WHEN a.wait_event_type = 'Lock' THEN pg_catalog.pg_blocking_pids(a.pid) END "
        "AS blocking_pids, "
        "pg_catalog.left(a.query, %s) AS query, "
        "pg_catalog.octet_length(a.query) AS query_bytes, "
        + query_id + " AS query_id, a.leader_pid "
        "FROM pg_catalog.pg_stat_activity a ORDER BY a.pid"
    )


def lock_waits(version: int, of_database: bool = False) -> LiteralString:
    """SECTION_LOCK_WAITS: heavyweight lock requests not granted (pg_locks).

    Every waiting backend of the cluster; with ``of_database`` (several databases watched, one
    snapshot each) only the backends connected to this database, where their relations'
    names resolve, and, when the parameter is true (the home database), those connected to
    none. Parameter with ``of_database``: that flag.
    """
    wait_start = _since(version, PG14, "l.waitstart", "timestamptz")
    head: LiteralString = (
        "SELECT l.pid, l.locktype, l.mode, l.database, l.relation, "
        "CASE WHEN l.relation IS NOT NULL AND l.database = " + _CURRENT_DB + " "
        "  THEN l.relation::pg_catalog.regclass::text END AS relation_name, "
        "l.transactionid::text::int8 AS transactionid, " + wait_start + " AS wait_start "
        "FROM pg_catalog.pg_locks l "
    )
    if not of_database:
        return head + "WHERE NOT l.granted AND l.pid IS NOT NULL ORDER BY l.pid"
    return (
        head + "JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid "
        "WHERE NOT l.granted AND l.pid IS NOT NULL "
        "AND (a.datid = " + _CURRENT_DB + " OR (%s AND COALESCE(a.datid, 0) = 0)) "
        "ORDER BY l.pid"
    )


DATABASES: Final = db.OTHER_DATABASES
"""The other databases of the server one can connect to (``databases: all``), oldest first
(``startupmonkey.db.OTHER_DATABASES``: the executor acts in the same ones)."""

TEMPLATES: Final = (
    "SELECT d.datname FROM pg_catalog.pg_database d WHERE d.datistemplate ORDER BY d.oid"
)
"""The server's template databases (``datistemplate``), read on the home connection: a
listed database that is one is not watched, as ``databases: all`` never finds one."""


REPLICATION_SLOTS: Final = (
    "SELECT slot_name, slot_type, COALESCE(plugin, '') AS plugin, "
    "COALESCE(database, '') AS database, temporary, active, active_pid, "
    "xmin::text::int8 AS xmin, pg_catalog.age(xmin) AS xmin_age, "
    "catalog_xmin::text::int8 AS catalog_xmin, "
    "pg_catalog.age(catalog_xmin) AS catalog_xmin_age, "
    "(restart_lsn OPERATOR(pg_catalog.-) '0/0'::pg_catalog.pg_lsn)::int8 AS restart_lsn, "
    "COALESCE(wal_status, '') AS wal_status, "
    "pg_catalog.pg_wal_lsn_diff(CASE WHEN pg_catalog.pg_is_in_recovery() "
    "  THEN pg_catalog.pg_last_wal_receive_lsn() ELSE pg_catalog.pg_current_wal_lsn() END, "
    "  restart_lsn)::int8 AS retained_wal_bytes "
    "FROM pg_catalog.pg_replication_slots ORDER BY slot_name"
)
"""SECTION_REPLICATION_SLOTS: every slot of the cluster, with the xmins it holds."""

PREPARED_XACTS: Final = (
    "SELECT gid, transaction::text::int8 AS transaction, "
    "pg_catalog.age(transaction) AS xid_age, prepared, owner, database "
    "FROM pg_catalog.pg_prepared_xacts ORDER BY prepared"
)
"""SECTION_PREPARED_XACTS: every prepared transaction of the cluster."""


def vacuum_progress(version: int) -> LiteralString:
    """SECTION_VACUUM_PROGRESS: VACUUMs running in this database."""
    dead: LiteralString = "p.num_dead_item_ids" if version >= PG17 else "p.num_dead_tuples"
    return (
        "SELECT p.pid, p.relid, p.phase, p.heap_blks_total, p.heap_blks_scanned, "
        "p.heap_blks_vacuumed, p.index_vacuum_count, " + dead + " AS num_dead_tuples, "
        "COALESCE(a.backend_type = 'autovacuum worker', false) AS autovacuum, "
        "COALESCE(a.query LIKE '%(to prevent wraparound)%', false) "
        "AS to_prevent_wraparound "
        "FROM pg_catalog.pg_stat_progress_vacuum p "
        "LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = p.pid "
        "WHERE p.datid = " + _CURRENT_DB + " ORDER BY p.pid"
    )


INDEX_BUILDS: Final = (
    "SELECT p.pid, p.relid, NULLIF(p.index_relid, 0) AS index_relid, "
    "COALESCE(p.command, '') AS command, COALESCE(p.phase, '') AS phase, "
    "COALESCE(a.application_name, '') AS application_name, "
    "COALESCE(a.usename::text, '') AS usename, a.backend_start, "
    "NULLIF(p.current_locker_pid, 0)::int4 AS current_locker_pid "
    "FROM pg_catalog.pg_stat_progress_create_index p "
    "LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = p.pid "
    "WHERE p.datid = " + _CURRENT_DB + " ORDER BY p.pid"
)
"""SECTION_INDEX_BUILDS: CREATE INDEX and REINDEX running in this database, and who runs
them (PostgreSQL 12+). Without pg_read_all_stats another role's row has pid only (relid,
index_relid and phase are NULL): the analyser then cannot tell which index is being built."""


_CATALOG_RELS: Final = (
    "rels AS (SELECT c.oid, c.xmin AS row_xmin, n.oid AS nspoid, n.xmin AS nsp_xmin, "
    "  n.nspname, c.relname, c.relkind, c.relreplident "
    "  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "  WHERE c.relkind IN ('r', 'p', 'm') AND " + _USER_RELATION + ")"
)

CATALOG_ACTIVITY: Final = (
    "SELECT pg_catalog.concat_ws('/', pg_catalog.sum(n_tup_ins), pg_catalog.sum(n_tup_upd), "
    "pg_catalog.sum(n_tup_del)) AS activity FROM pg_catalog.pg_stat_sys_tables "
    "WHERE schemaname = 'pg_catalog' AND relname IN "
    "('pg_class', 'pg_attribute', 'pg_index', 'pg_constraint', 'pg_namespace', 'pg_inherits', "
    "'pg_type')"
)
"""Row changes of the catalogs the Catalog is built from (cumulative statistics; about a
millisecond whatever the schema size). While it stands still, nothing is re-read; when it
moves (DDL, but also temporary tables), :data:`CATALOG_FINGERPRINT` decides."""

CATALOG_FINGERPRINT: Final = (
    "WITH " + _CATALOG_RELS + " "
    "SELECT pg_catalog.concat_ws('/', "
    " (SELECT pg_catalog.count(*)::text || ':' || COALESCE(pg_catalog.sum(pg_catalog.hashtext("
    "    r.oid::text || '.' || r.row_xmin::text || '.' || r.nsp_xmin::text)), 0)::text "
    "    FROM rels r), "
    " (SELECT pg_catalog.count(*)::text || ':' || COALESCE(pg_catalog.sum(pg_catalog.hashtext("
    "    a.attrelid::text || '.' || a.attnum::text || '.' || a.xmin::text)), 0)::text "
    "    FROM pg_catalog.pg_attribute a JOIN rels r ON r.oid = a.attrelid "
    "   WHERE a.attnum > 0 AND NOT a.attisdropped), "
    " (SELECT pg_catalog.count(*)::text || ':' || COALESCE(pg_catalog.sum(pg_catalog.hashtext("
    "    x.indexrelid::text || '.' || x.xmin::text || '.' || ic.xmin::text || '.' "
    "    || x.indisvalid::text || x.indisready::text || x.indislive::text)), 0)::text "
    "    FROM pg_catalog.pg_index x JOIN rels r ON r.oid = x.indrelid "
    "    JOIN pg_catalog.pg_class ic ON ic.oid = x.indexrelid), "
    " (SELECT pg_catalog.count(*)::text || ':' || COALESCE(pg_catalog.sum(pg_catalog.hashtext("
    "    co.oid::text || '.' || co.xmin::text)), 0)::text "
    "    FROM pg_catalog.pg_constraint co JOIN rels r ON r.oid = co.conrelid)"
    ") AS fingerprint"
)
"""A cheap digest of the catalog rows the Catalog is built from: any transactional change
(new row version, hence new xmin) or change of index state changes it. The collector reads
the full catalog only when this changes (and at least every few minutes regardless)."""

CATALOG_RELATIONS: Final = (
    "WITH " + _CATALOG_RELS + " "
    "SELECT r.oid AS relid, r.nspname AS schema, r.relname AS name, r.relkind::text AS relkind, "
    "p.parent_relid, r.relreplident::text AS replica_identity FROM rels r "
    "LEFT JOIN (SELECT i.inhrelid, pg_catalog.min(i.inhparent::int8) AS parent_relid "
    "  FROM pg_catalog.pg_inherits i GROUP BY i.inhrelid) p ON p.inhrelid = r.oid "
    "ORDER BY r.oid"
)
"""SECTION_CATALOG, relations."""

CATALOG_COLUMNS: Final = (
    "WITH " + _CATALOG_RELS + " "
    "SELECT a.attrelid AS relid, a.attnum, a.attname AS name, "
    "pg_catalog.format_type(a.atttypid, a.atttypmod) AS type_name, "
    "a.atttypid AS type_oid, a.attnotnull AS not_null "
    "FROM pg_catalog.pg_attribute a JOIN rels r ON r.oid = a.attrelid "
    "WHERE a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attrelid, a.attnum"
)
"""SECTION_CATALOG, columns."""


def catalog_indexes(version: int) -> LiteralString:
    """SECTION_CATALOG, index definitions. Parameter (3 times): the definition cut."""
    nulls_not_distinct = _since(version, PG15, "x.indnullsnotdistinct", "bool")
    return (
        "WITH " + _CATALOG_RELS + " "
        "SELECT x.indexrelid, x.indrelid AS relid, ins.nspname AS schema, ic.relname AS name, "
        "am.amname AS method, x.indnkeyatts, x.indkey::int2[] AS indkey, "
        "ARRAY(SELECT opc.opcname::text "
        "      FROM pg_catalog.unnest(x.indclass::pg_catalog.oid[]) WITH ORDINALITY AS u(opc, ord) "
        "      JOIN pg_catalog.pg_opclass opc ON opc.oid = u.opc ORDER BY u.ord) AS opclasses, "
        "x.indoption::int2[] AS indoption, "
        "x.indexprs IS NOT NULL AS has_expressions, "
        "COALESCE(pg_catalog.left(pg_catalog.pg_get_expr(x.indexprs, x.indrelid), %s), '') "
        "AS expressions, "
        "x.indpred IS NOT NULL AS has_predicate, "
        "COALESCE(pg_catalog.left(pg_catalog.pg_get_expr(x.indpred, x.indrelid), %s), '') "
        "AS predicate, "
        "x.indisunique AS \"unique\", x.indisprimary AS \"primary\", "
        "x.indisexclusion AS exclusion, "
        + nulls_not_distinct + " AS nulls_not_distinct, "
        "x.indisvalid AS valid, x.indisready AS ready, x.indislive AS live, "
        "x.indisreplident AS replica_identity, "
        "COALESCE(pg_catalog.left(pg_catalog.pg_get_indexdef(x.indexrelid), %s), '') "
        "AS definition, "
        "con.oid AS constraint_oid, ic.relkind = 'I' AS partitioned "
        "FROM pg_catalog.pg_index x "
        "JOIN rels r ON r.oid = x.indrelid "
        "JOIN pg_catalog.pg_class ic ON ic.oid = x.indexrelid "
        "JOIN pg_catalog.pg_namespace ins ON ins.oid = ic.relnamespace "
        "JOIN pg_catalog.pg_am am ON am.oid = ic.relam "
        "LEFT JOIN pg_catalog.pg_constraint con ON con.conindid = x.indexrelid "
        "  AND con.conrelid = x.indrelid AND con.contype IN ('p', 'u', 'x') "
        "ORDER BY x.indexrelid"
    )


CATALOG_CONSTRAINTS: Final = (
    "WITH " + _CATALOG_RELS + " "
    "SELECT co.oid, co.conname AS name, co.contype::text AS contype, co.conrelid AS relid, "
    "co.conkey AS attnums, NULLIF(co.conindid, 0) AS index_oid, "
    "NULLIF(co.confrelid, 0) AS ref_relid, co.confkey AS ref_attnums, "
    "co.condeferrable AS deferrable, co.convalidated AS validated, "
    "COALESCE(pg_catalog.left(pg_catalog.pg_get_constraintdef(co.oid), %s), '') "
    "AS definition "
    "FROM pg_catalog.pg_constraint co JOIN rels r ON r.oid = co.conrelid "
    "WHERE co.contype IN ('p', 'u', 'f', 'x') ORDER BY co.oid"
)
"""SECTION_CATALOG, constraints. Parameter: the definition cut."""
