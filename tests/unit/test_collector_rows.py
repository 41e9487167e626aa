"""Rows -> snapshot messages: NULLs stay unset, ages of frozen xids are dropped, texts are cut."""

from __future__ import annotations

import datetime
import decimal
import re

import pytest

from startupmonkey.collector import queries, snapshot
from startupmonkey.v1 import limits
from startupmonkey.v1 import snapshot_pb2 as pb

NOW = datetime.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=datetime.UTC)


def test_null_leaves_optional_fields_unset_and_timestamps_keep_microseconds() -> None:
    message = snapshot.build(pb.TableStats, {"relid": 16384, "idx_scan": None, "last_vacuum": None,
                            "last_autovacuum": NOW, "n_tup_newpage_upd": None,
                            "reltuples": decimal.Decimal("-1")})
    assert message.relid == 16384
    assert not message.HasField("idx_scan") and not message.HasField("n_tup_newpage_upd")
    assert not message.HasField("last_vacuum")
    assert message.last_autovacuum.ToDatetime(tzinfo=datetime.UTC) == NOW
    assert message.reltuples == -1.0


def test_age_of_a_frozen_or_invalid_xid_is_left_unset() -> None:
    message = snapshot.build(pb.Session, {"pid": 1, "backend_xmin": 1234, "backend_xmin_age": 10,
                            "backend_xid_age": 2**31 - 1})
    assert message.backend_xmin_age == 10
    assert not message.HasField("backend_xid_age")


def test_durations_arrive_in_fields_named_with_their_unit() -> None:
    message = snapshot.statement({"queryid": -5, "calls": 3, "total_exec_time": 1.5,
                                  "wal_bytes": decimal.Decimal("123"), "toplevel": None})
    assert message.queryid == -5 and message.total_exec_time_ms == 1.5
    assert message.wal_bytes == 123 and not message.HasField("toplevel")


def test_table_sizes_and_reloptions_of_table_and_toast() -> None:
    message = snapshot.table({
        "relid": 1, "relkind": "p", "table_bytes": 8192, "indexes_bytes": 16384,
        "reloptions": ["autovacuum_enabled=false", "fillfactor=90"],
        "toast_reloptions": ["autovacuum_enabled=true"]})
    assert message.partitioned and message.total_bytes == 24576
    assert dict(message.reloptions) == {"autovacuum_enabled": "false", "fillfactor": "90",
                                        "toast.autovacuum_enabled": "true"}


def test_cut_utf8_never_splits_a_character() -> None:
    text, cut = snapshot.cut_utf8("é" * 10, 5)
    assert (text, cut) == ("éé", True)
    assert snapshot.cut_utf8("abc", 3) == ("abc", False)


def test_session_query_cut_to_the_limit_and_flagged() -> None:
    long_query = "SELECT '" + "ü" * limits.MAX_SESSION_QUERY_BYTES + "'"
    row = {"pid": 7, "query": long_query[:limits.MAX_SESSION_QUERY_BYTES],
           "query_bytes": len(long_query.encode()), "query_id": 0}
    message = snapshot.session(row, 1024 * 1024)
    assert len(message.query.encode()) <= limits.MAX_SESSION_QUERY_BYTES
    assert message.query_truncated and not message.HasField("query_id")


def test_session_query_cut_by_the_server_is_flagged() -> None:
    row = {"pid": 7, "query": "x" * 1023, "query_bytes": 1023, "query_id": 42}
    message = snapshot.session(row, 1024)
    assert message.query_truncated and message.query_id == 42
    assert not snapshot.session({"pid": 7, "query": "SELECT 1", "query_bytes": 8},
                                1024).query_truncated


def test_statement_text_cut_and_flagged() -> None:
    text = snapshot.statement_text({"queryid": 1, "query": "x" * limits.MAX_STATEMENT_TEXT_BYTES,
                                    "query_bytes": limits.MAX_STATEMENT_TEXT_BYTES + 10})
    assert text.truncated and len(text.text) == limits.MAX_STATEMENT_TEXT_BYTES


def _catalog(extra_column: bool = False) -> pb.Catalog:
    relations = [{"relid": 10, "schema": "public", "name": "orders", "relkind": "r",
                  "parent_relid": None, "replica_identity": "d"},
                 {"relid": 11, "schema": "public", "name": "customers", "relkind": "r",
                  "parent_relid": None, "replica_identity": "d"}]
    columns = [{"relid": 10, "attnum": 1, "name": "id", "type_name": "bigint", "type_oid": 20,
                "not_null": True},
               {"relid": 10, "attnum": 2, "name": "customer_id", "type_name": "integer",
                "type_oid": 23, "not_null": False},
               {"relid": 11, "attnum": 1, "name": "id", "type_name": "integer", "type_oid": 23,
                "not_null": True}]
    if extra_column:
        columns.append({"relid": 10, "attnum": 3, "name": "note", "type_name": "text",
                        "type_oid": 25, "not_null": False})
    indexes = [{"indexrelid": 20, "relid": 10, "schema": "public", "name": "orders_expr",
                "method": "btree", "indnkeyatts": 2, "indkey": [2, 0, 1],
                "opclasses": ["int4_ops", "text_ops"], "indoption": [0, 3, 0],
                "has_expressions": True, "expressions": "lower(note)", "has_predicate": False,
                "predicate": "", "unique": False, "primary": False, "exclusion": False,
                "nulls_not_distinct": False, "valid": True, "ready": True, "live": True,
                "replica_identity": False, "definition": "CREATE INDEX ...",
                "constraint_oid": None, "partitioned": False}]
    constraints = [{"oid": 30, "name": "orders_customer_id_fkey", "contype": "f", "relid": 10,
                    "attnums": [2], "index_oid": 40, "ref_relid": 11, "ref_attnums": [1],
                    "deferrable": False, "validated": True,
                    "definition": "FOREIGN KEY (customer_id) REFERENCES customers(id)"}]
    return snapshot.catalog(relations, columns, indexes, constraints)


def test_catalog_names_key_include_and_referenced_columns() -> None:
    catalog = _catalog()
    index = catalog.indexes[0]
    assert list(index.key_attnums) == [2, 0] and list(index.key_columns) == ["customer_id", ""]
    assert list(index.include_attnums) == [1] and list(index.include_columns) == ["id"]
    assert list(index.opclasses) == ["int4_ops", "text_ops"]
    assert list(index.key_options) == [0, 3] and index.has_expressions
    fk = catalog.constraints[0]
    assert fk.type == pb.CONSTRAINT_TYPE_FOREIGN_KEY
    assert list(fk.columns) == ["customer_id"] and list(fk.ref_columns) == ["id"]


def test_catalog_hash_is_stable_and_follows_content() -> None:
    assert _catalog().hash == _catalog().hash
    assert _catalog().hash != _catalog(extra_column=True).hash
    assert snapshot.catalog_hash(_catalog()) == _catalog().hash


@pytest.mark.parametrize("version", [130012, 140009, 150004, 160002, 170000])
def test_every_catalog_object_is_schema_qualified(version: int) -> None:
    texts = [queries.database(version), queries.tables(version), queries.indexes(version),
             queries.sessions(version), queries.lock_waits(version),
             queries.vacuum_progress(version), queries.catalog_indexes(version),
             queries.SETTINGS, queries.REPLICATION_SLOTS, queries.PREPARED_XACTS,
             queries.STATEMENTS_EXTENSION, queries.CATALOG_FINGERPRINT,
             queries.CATALOG_RELATIONS, queries.CATALOG_COLUMNS, queries.CATALOG_CONSTRAINTS]
    ctes = {"locked", "rels", "measure", "rel", "ix", "parent", "block", "locked_index"}
    for text in texts:
        for target in re.findall(r"\b(?:FROM|JOIN)\s+([\w.]+)", text):
            assert target.startswith("pg_catalog.") or target in ctes, (target, text)


def test_version_specific_columns() -> None:
    assert "pg_stat_get_tuples_newpage_updated" not in queries.tables(150004)
    assert "pg_stat_get_tuples_newpage_updated" in queries.tables(160000)
    assert "s.session_time" not in queries.database(130000)
    assert "s.session_time" in queries.database(140000)
    assert "num_dead_item_ids" in queries.vacuum_progress(170000)
    assert "x.indnullsnotdistinct" not in queries.catalog_indexes(140000)
    pg13 = queries.statements("public", "1.8").as_string(None)
    pg17 = queries.statements("public", "1.11").as_string(None)
    assert "NULL::bool AS toplevel" in pg13 and "s.toplevel" in pg17
    assert "shared_blk_read_time" in pg17 and "shared_blk_read_time" not in pg13
    assert '"public".pg_stat_statements(false)' in pg17
    assert queries.statements_info("public", "1.8") is None
