"""What the pre-check's safety check reads out of a statement (executor/plan_safety.py).

Every function, operator, type and relation a statement names must be found, however it is
written: quoted, qualified, nested in sub-selects or CTEs, or implied by syntax (BETWEEN,
CASE x WHEN, GREATEST). Hypothesis writes the names; psycopg quotes them as a client would.
"""

from __future__ import annotations

import contextlib

import pglast
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg import sql

from startupmonkey.executor import plan_safety

# Names PostgreSQL keeps whole: 1-63 bytes, no NUL.
NAME = st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)),
               min_size=1, max_size=20).filter(lambda s: len(s.encode()) <= 63)


def _quoted(*parts: str) -> str:
    return sql.Identifier(*parts).as_string(None)


@settings(max_examples=200, deadline=None)
@given(schema=NAME, function=NAME, relation=NAME)
def test_a_qualified_function_and_relation_are_found_however_they_are_quoted(
        schema: str, function: str, relation: str) -> None:
    statement = (f"SELECT * FROM (SELECT {_quoted(schema, function)}($1) AS v "
                 f"FROM {_quoted(schema, relation)}) AS s WHERE v > 0")

    found = plan_safety.names(statement)

    assert (schema, function) in found.functions
    assert (schema, relation) in found.relations
    assert (None, ">") in found.operators


@settings(max_examples=200, deadline=None)
@given(function=NAME, type_name=NAME)
def test_names_hidden_in_ctes_sublinks_and_casts_are_found(function: str,
                                                           type_name: str) -> None:
    statement = (f"WITH c AS (SELECT {_quoted(function)}() AS x) SELECT 1 FROM t "
                 f"WHERE EXISTS (SELECT 1 FROM c WHERE x = $1::{_quoted(type_name)})")

    found = plan_safety.names(statement)

    assert (None, function) in found.functions
    assert (None, type_name) in found.types
    assert (None, "t") in found.relations


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=200))
def test_any_text_either_parses_into_names_or_is_a_parse_error(text: str) -> None:
    with contextlib.suppress(pglast.parser.ParseError):
        plan_safety.names(text)


@pytest.mark.parametrize(("statement", "operators"), [
    ("SELECT 1 FROM t WHERE a BETWEEN $1 AND $2", {"<=", ">="}),
    ("SELECT CASE a WHEN $1 THEN 1 END FROM t", {"="}),
    ("SELECT GREATEST(a, $1) FROM t", {"<", ">"}),
    ("SELECT 1 FROM t WHERE a IN (SELECT b FROM u)", {"="}),
    ("SELECT 1 FROM t WHERE a OPERATOR(s.===) $1", {"==="}),
    ("SELECT a FROM t ORDER BY a USING ~<~", {"~<~"}),
    ("SELECT 1 FROM t WHERE a LIKE $1", {"~~"}),
])
def test_operators_implied_by_syntax_are_found(statement: str, operators: set[str]) -> None:
    found = {name for _, name in plan_safety.names(statement).operators}

    assert operators <= found


def test_attribute_notation_and_written_tables_are_found() -> None:
    found = plan_safety.names("UPDATE s.t SET a = $1 FROM u WHERE u.computed = t.b")

    assert "computed" in found.attribute_functions
    assert found.written == {("s", "t")}
