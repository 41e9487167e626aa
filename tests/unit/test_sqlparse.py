"""The SQL side of missing_index: normalized statement text -> tables, predicates, candidates.

Each test is one statement shape against a small hand-built catalog; candidates are shown as
(table, key columns, predicate kind) so the expected index reads like the advice it becomes.
"""

from __future__ import annotations

import pytest

from startupmonkey.analyser import sqlparse
from startupmonkey.v1 import snapshot_pb2 as pb

Shape = tuple[str, tuple[str, ...], str]


def catalog() -> pb.Catalog:
    cat = pb.Catalog(hash="sqlparse-test")
    tables = [
        (1, "public", "orders", ["id", "customer_id", "status", "created_at", "total"]),
        (2, "public", "customers", ["id", "email", "region"]),
        (3, "Sales Data", "Line; Items", ["id", "Order Id", "qty"]),
        (4, "billing", "invoices", ["id", "order_id", "due"]),
        (5, "billing", "orders", ["id", "amount"]),
        (6, "public", "MixedCase", ["Id", "Email"]),
    ]
    for relid, schema, name, columns in tables:
        cat.relations.add(relid=relid, schema=schema, name=name, relkind="r")
        for attnum, column in enumerate(columns, start=1):
            cat.columns.add(relid=relid, attnum=attnum, name=column)
    return cat


NAMES = sqlparse.Names(catalog())


def shapes(text: str) -> list[Shape]:
    parsed = sqlparse.parse(text)
    assert isinstance(parsed, sqlparse.Parsed), parsed
    return sorted((use.table.name, c.columns(), c.predicate)
                  for use in sqlparse.uses(parsed, NAMES)
                  for c in sqlparse.candidates(use))


@pytest.mark.parametrize(("text", "expected"), [
    # simple equality
    ("SELECT * FROM orders WHERE customer_id = $1",
     [("orders", ("customer_id",), "equality")]),
    # two columns: equality before range, whatever the order in the text
    ("SELECT id FROM orders WHERE created_at >= $1 AND status = $2",
     [("orders", ("status", "created_at"), "equality+range")]),
    # two equalities keep their order in the text (ranked by statement time later)
    ("SELECT id FROM orders WHERE status = $1 AND customer_id = $2",
     [("orders", ("status", "customer_id"), "equality")]),
    # IN lists, = ANY and row comparisons are equality
    ("SELECT * FROM orders WHERE status IN ($1, $2, $3)", [("orders", ("status",), "equality")]),
    ("SELECT * FROM orders WHERE customer_id = ANY($1)",
     [("orders", ("customer_id",), "equality")]),
    ("SELECT * FROM orders WHERE (customer_id, status) = ($1, $2)",
     [("orders", ("customer_id", "status"), "equality")]),
    # range: BETWEEN, and the column on the right-hand side
    ("SELECT * FROM orders WHERE created_at BETWEEN $1 AND $2",
     [("orders", ("created_at",), "range")]),
    ("SELECT * FROM orders WHERE $1 < total", [("orders", ("total",), "range")]),
    # casts on the parameter are fine
    ("SELECT * FROM orders WHERE created_at > $1::timestamptz",
     [("orders", ("created_at",), "range")]),
])
def test_predicates(text: str, expected: list[Shape]) -> None:
    assert shapes(text) == expected


@pytest.mark.parametrize("text", [
    "SELECT * FROM orders WHERE status = $1 OR total = $2",   # OR: no single index
    "SELECT * FROM orders WHERE NOT status = $1",
    "SELECT * FROM orders WHERE lower(status) = $1",          # expression on the column
    "SELECT * FROM orders WHERE customer_id::text = $1",      # cast on the column
    "SELECT * FROM orders WHERE status LIKE $1",
    "SELECT * FROM orders WHERE status IS NULL",
    "SELECT * FROM orders WHERE status <> $1",
    "SELECT * FROM orders WHERE total > customer_id",         # the table against itself
    "SELECT * FROM orders",
    "SELECT * FROM pg_class WHERE relname = $1",              # not a user table
    "SELECT * FROM temp_unknown WHERE id = $1",               # not in the catalog
    "INSERT INTO orders (id, status) VALUES ($1, $2)",
])
def test_nothing_an_index_serves(text: str) -> None:
    assert shapes(text) == []


def test_join_on_an_unindexed_foreign_key() -> None:
    text = ("SELECT o.id, o.total FROM customers c JOIN orders o ON o.customer_id = c.id "
            "WHERE c.id = $1")
    # customers.id is filtered by a parameter too (its join candidate would be the same).
    assert shapes(text) == [("customers", ("id",), "equality"),
                            ("orders", ("customer_id",), "join")]


def test_join_using_and_left_join_keep_only_join_keys() -> None:
    assert shapes("SELECT * FROM orders JOIN customers USING (id) WHERE email = $1") == [
        ("customers", ("email",), "equality"), ("customers", ("id",), "join"),
        ("orders", ("id",), "join")]
    # A filter in an outer join's ON filters nothing: only the join key is a candidate.
    text = ("SELECT * FROM customers c LEFT JOIN orders o ON o.customer_id = c.id "
            "AND o.status = $1")
    assert ("orders", ("customer_id",), "join") in shapes(text)
    assert ("orders", ("status",), "equality") not in shapes(text)


def test_quoted_mixed_case_space_and_semicolon_names() -> None:
    assert shapes('SELECT * FROM "Sales Data"."Line; Items" li WHERE li."Order Id" = $1') == [
        ("Line; Items", ("Order Id",), "equality")]
    assert shapes('SELECT * FROM "MixedCase" WHERE "Email" = $1') == [
        ("MixedCase", ("Email",), "equality")]
    # Unquoted names fold to lower case: "MixedCase" is not mixedcase, Email is not "Email".
    assert shapes("SELECT * FROM MixedCase WHERE Email = $1") == []


def test_schemas_and_the_assumed_search_path() -> None:
    # A name in one schema only is that relation.
    assert shapes("SELECT * FROM invoices WHERE order_id = $1") == [
        ("invoices", ("order_id",), "equality")]
    # In several schemas: public wins unless qualified.
    assert shapes("SELECT * FROM orders WHERE status = $1") == [
        ("orders", ("status",), "equality")]
    parsed = sqlparse.parse("SELECT * FROM billing.orders bo WHERE bo.amount > $1")
    assert isinstance(parsed, sqlparse.Parsed)
    [use] = sqlparse.uses(parsed, NAMES)
    assert (use.table.schema, use.table.name, use.ranges) == ("billing", "orders", ["amount"])
    # A fully qualified column reference.
    assert shapes("SELECT * FROM billing.invoices WHERE billing.invoices.due < $1") == [
        ("invoices", ("due",), "range")]


def test_aliases_hide_the_table_name() -> None:
    assert shapes("SELECT * FROM orders o WHERE o.status = $1") == [
        ("orders", ("status",), "equality")]
    # As in PostgreSQL, the aliased table's own name no longer qualifies its columns.
    assert shapes("SELECT * FROM orders o WHERE orders.status = $1") == []


def test_ctes() -> None:
    text = ("WITH recent AS (SELECT * FROM orders WHERE created_at > $1) "
            "SELECT * FROM recent r JOIN customers c ON c.id = r.customer_id WHERE c.email = $2")
    assert shapes(text) == [("customers", ("email",), "equality"),
                            ("customers", ("id",), "join"),
                            ("orders", ("created_at",), "range")]
    # A CTE named like a table shadows it: its columns are not the table's.
    assert shapes("WITH orders AS (SELECT 1 AS status) SELECT * FROM orders "
                  "WHERE status = $1") == []
    # Data-modifying CTEs are analysed too.
    assert shapes("WITH gone AS (DELETE FROM orders WHERE status = $1 RETURNING *) "
                  "SELECT count(*) FROM gone") == [("orders", ("status",), "equality")]


def test_sub_selects() -> None:
    # IN (SELECT ...): the outer column is joined, the inner filter is a candidate.
    assert shapes("SELECT * FROM customers WHERE id IN "
                  "(SELECT customer_id FROM orders WHERE total > $1)") == [
        ("customers", ("id",), "join"), ("orders", ("total",), "range")]
    # Correlated EXISTS: the inner table's join column and its filter.
    assert shapes("SELECT * FROM customers c WHERE EXISTS (SELECT 1 FROM orders o "
                  "WHERE o.customer_id = c.id AND o.status = $1)") == [
        ("customers", ("id",), "join"), ("orders", ("customer_id",), "join"),
        ("orders", ("status",), "equality")]
    # A sub-select in FROM: predicates on its output are not a table's.
    assert shapes("SELECT * FROM (SELECT * FROM orders WHERE total = $1) s "
                  "WHERE s.status = $2") == [("orders", ("total",), "equality")]
    # A scalar sub-select compared with a column is a value, like a parameter.
    assert shapes("SELECT * FROM orders WHERE created_at = (SELECT max(created_at) "
                  "FROM orders)") == [("orders", ("created_at",), "equality")]
    # Set operations: both arms.
    assert shapes("SELECT id FROM orders WHERE status = $1 UNION ALL "
                  "SELECT id FROM customers WHERE email = $2") == [
        ("customers", ("email",), "equality"), ("orders", ("status",), "equality")]


def test_update_and_delete_where() -> None:
    assert shapes("UPDATE orders SET status = $1 WHERE customer_id = $2") == [
        ("orders", ("customer_id",), "equality")]
    assert shapes("DELETE FROM orders WHERE created_at < $1") == [
        ("orders", ("created_at",), "range")]
    assert shapes("UPDATE orders o SET total = $1 FROM customers c "
                  "WHERE o.customer_id = c.id AND c.email = $2") == [
        ("customers", ("email",), "equality"), ("customers", ("id",), "join"),
        ("orders", ("customer_id",), "join")]
    assert shapes("DELETE FROM billing.invoices i USING orders o "
                  "WHERE i.order_id = o.id AND o.status = $1") == [
        ("invoices", ("order_id",), "join"), ("orders", ("id",), "join"),
        ("orders", ("status",), "equality")]


@pytest.mark.parametrize(("text", "matches"), [
    ("SELECT * FROM orders WHERE status = $1", True),
    ("UPDATE orders SET total = $1 WHERE status = $2", True),
    ("SELECT count(*) FROM orders WHERE status = $1", False),
    ("SELECT status, sum(total) FROM orders GROUP BY status", False),
    ("SELECT DISTINCT status FROM orders", False),
    ("SELECT * FROM orders WHERE status = $1 LIMIT $2", False),
    ("SELECT id FROM orders UNION SELECT id FROM customers", False),
    ("SELECT id, row_number() OVER () FROM orders", True),
])
def test_rows_match_only_when_rows_are_the_matches(text: str, matches: bool) -> None:
    parsed = sqlparse.parse(text)
    assert isinstance(parsed, sqlparse.Parsed)
    assert parsed.rows_match is matches


def test_unparsable_statements_are_skipped_and_counted_once_per_text() -> None:
    sqlparse.take_skipped()
    cases = {
        "SELEC * FROM orders /* unit-1 */": "syntax",
        "SELECT 1 /* unit-2 */; SELECT 2": "multiple",
        "BEGIN /* unit-3 */": "utility",
        "VACUUM orders /* unit-4 */": "utility",
        "-- unit-5 only a comment": "empty",
    }
    for text, reason in cases.items():
        skipped = sqlparse.parse(text)
        assert isinstance(skipped, sqlparse.Skipped) and skipped.reason == reason, skipped
        assert sqlparse.parse(text) == skipped  # cached: not parsed (or counted) again
    truncated = sqlparse.parse("SELECT * FROM orders WHERE id = $1 /* unit-6 */", True)
    assert isinstance(truncated, sqlparse.Skipped) and truncated.reason == "truncated"
    assert sqlparse.take_skipped() == {"syntax": 1, "multiple": 1, "utility": 2, "empty": 1,
                                       "truncated": 1}
    assert sqlparse.take_skipped() == {}


def test_too_complex_statements_are_skipped_not_crashed() -> None:
    nested = "SELECT * FROM orders WHERE id IN (" * 80 + "SELECT 1" + ")" * 80
    skipped = sqlparse.parse(nested)
    assert isinstance(skipped, sqlparse.Skipped) and skipped.reason == "too_complex"
    many = " AND ".join(f"status = ${n}" for n in range(1, 600))
    skipped = sqlparse.parse(f"SELECT * FROM orders WHERE {many}")
    assert isinstance(skipped, sqlparse.Skipped) and skipped.reason == "too_complex"
    sqlparse.take_skipped()


def test_candidate_ranking_puts_the_busier_equality_column_first() -> None:
    table = NAMES.relation(None, "orders")
    assert table is not None
    candidate = sqlparse.Candidate(table, ("status", "customer_id"), "created_at", join=False)
    assert candidate.columns() == ("status", "customer_id")
    assert candidate.columns({"customer_id": 2.0, "status": 1.0}.get) == ("customer_id",
                                                                          "status")
    assert sqlparse.Candidate(table, ("status",), "created_at", False).columns() == (
        "status", "created_at")
