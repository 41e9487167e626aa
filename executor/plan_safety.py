"""Refuse to plan a statement that could run code that is not PostgreSQL's or a trusted extension's.

The HypoPG pre-check plans statement text read from pg_stat_statements, which any database
user can put there. Planning is not harmless: the planner folds IMMUTABLE functions with
constant arguments (and evaluates index, constraint and statistics expressions of the tables it
opens), all with the privileges of the session that plans, the executor's. A role with no
rights could otherwise make the executor read what only it can read (and see it in an error
message), or signal sessions it may not signal (docs/safety.md, threat model).

So before a statement is prepared (``PREPARE`` runs no user code: parse analysis and the
rewriter only build trees), :func:`refusal` resolves what it names and what the relations it
reads carry, and refuses it when any of these is not a system object:

- every function it calls (``f(...)``, ``schema.f(...)``, attribute notation ``t.f``), every
  operator it uses (``=``, ``OPERATOR(s.op)``, ``LIKE``, ``IN``, ``BETWEEN``, ``CASE x WHEN``,
  ``ORDER BY ... USING``, ``GREATEST``/``LEAST``) and every type it casts to, looked up by
  name in every schema of the planning ``search_path`` (any object of that name, whatever its
  argument types: overload resolution may pick any of them);
- the functions and operators used by the views and rules of the relations it reads (and of
  the relations those read, transitively, and of their partitions and inheritance children),
  their row-level security policies, indexes (expressions and predicates), constraints and
  extended statistics, and the column defaults of the table it inserts into or updates.

A *system object* is one created by ``initdb`` (OID below 16384), or a member of an extension
owned by a superuser (``citext``'s ``=``, ``pg_trgm``'s ``similarity``): code the server's
administrator installed. Triggers are not looked at: ``EXPLAIN`` does not fire them.

Refusing too much is the safe failure: a refused statement is left out of the cost comparison
and the Remediation says which object made it so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pglast
from pglast import ast
from pglast.enums import A_Expr_Kind, SubLinkType

from startupmonkey import db

FIRST_NORMAL_OID = 16384
"""PostgreSQL's FirstNormalObjectId: every OID below it was made by initdb."""

_COMPARISONS = ("=", "<>", "<", ">", "<=", ">=")
# ``x IN (SELECT ...)`` is an ANY sub-link with no operator written: ``=`` is implied.
_COMPARING_SUBLINKS = (SubLinkType.ANY_SUBLINK, SubLinkType.ALL_SUBLINK,
                       SubLinkType.ROWCOMPARE_SUBLINK)


@dataclasses.dataclass
class Names:
    """What a statement names, as written (schema ``None`` when unqualified)."""

    functions: set[tuple[str | None, str]] = dataclasses.field(default_factory=set)
    attribute_functions: set[str] = dataclasses.field(default_factory=set)
    operators: set[tuple[str | None, str]] = dataclasses.field(default_factory=set)
    types: set[tuple[str | None, str]] = dataclasses.field(default_factory=set)
    relations: set[tuple[str | None, str]] = dataclasses.field(default_factory=set)
    written: set[tuple[str | None, str]] = dataclasses.field(default_factory=set)


def _strings(values: Any) -> tuple[str, ...]:
    return tuple(v.sval or "" for v in values or () if isinstance(v, ast.String))


def _qualified(parts: tuple[str, ...]) -> tuple[str | None, str] | None:
    """``(schema, name)`` of a possibly qualified name (a catalog prefix dropped)."""
    if not parts:
        return None
    return (parts[-2] if len(parts) >= 2 else None), parts[-1]


def _nodes(value: object) -> Iterator[ast.Node]:
    """Every node under ``value``, sub-selects included."""
    stack: list[object] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, tuple | list):
            stack.extend(item)
        elif isinstance(item, ast.Node):
            yield item
            stack.extend(getattr(item, name) for name in getattr(type(item), "__slots__", ()))


def _operators_of(node: ast.A_Expr) -> tuple[tuple[str | None, str], ...]:
    kind = node.kind
    if kind in (A_Expr_Kind.AEXPR_BETWEEN, A_Expr_Kind.AEXPR_NOT_BETWEEN,
                A_Expr_Kind.AEXPR_BETWEEN_SYM, A_Expr_Kind.AEXPR_NOT_BETWEEN_SYM):
        return tuple((None, op) for op in _COMPARISONS)
    name = _qualified(_strings(node.name))
    return (name,) if name else ()


def names(statement: str) -> Names:
    """What ``statement`` names; raises ``pglast.parser.ParseError`` when it does not parse."""
    found = Names()
    for stmt in pglast.parse_sql(statement):
        _collect(stmt.stmt, found)
    return found


def _collect(root: object, found: Names) -> None:
    for node in _nodes(root):
        if isinstance(node, ast.FuncCall):
            name = _qualified(_strings(node.funcname))
            if name:
                found.functions.add(name)
        elif isinstance(node, ast.A_Expr):
            found.operators.update(_operators_of(node))
        elif isinstance(node, ast.SubLink) and node.subLinkType in _COMPARING_SUBLINKS:
            found.operators.add(_qualified(_strings(node.operName)) or (None, "="))
        elif isinstance(node, ast.SortBy) and node.useOp:
            name = _qualified(_strings(node.useOp))
            if name:
                found.operators.add(name)
        elif isinstance(node, ast.CaseExpr) and node.arg is not None:
            found.operators.add((None, "="))
        elif isinstance(node, ast.MinMaxExpr):
            found.operators.update((None, op) for op in ("<", ">"))
        elif isinstance(node, ast.TypeName):
            name = _qualified(_strings(node.names))
            if name:
                found.types.add(name)
        elif isinstance(node, ast.ColumnRef):
            fields = _strings(node.fields)
            if len(fields) >= 2 and len(fields) == len(node.fields or ()):
                found.attribute_functions.add(fields[-1])
        elif isinstance(node, ast.A_Indirection):
            # ``(t).f``: attribute notation of a function on a row value
            found.attribute_functions.update(_strings(node.indirection))
        elif isinstance(node, ast.JoinExpr) and (node.usingClause or node.isNatural):
            found.operators.add((None, "="))  # USING (col) and NATURAL compare with =
        elif isinstance(node, ast.RangeVar) and node.relname:
            found.relations.add((node.schemaname, node.relname))
        if isinstance(node, ast.InsertStmt | ast.UpdateStmt) and node.relation is not None:
            found.written.add((node.relation.schemaname, node.relation.relname or ""))


# Trusted: made by initdb, or a member of an extension owned by a superuser.
_TRUSTED = """(
    {oid} < {first} OR (
        EXISTS (SELECT 1 FROM pg_catalog.pg_roles AS r WHERE r.oid = {owner} AND r.rolsuper)
        AND EXISTS (SELECT 1 FROM pg_catalog.pg_depend AS e
                    WHERE e.classid = '{catalog}'::pg_catalog.regclass AND e.objid = {oid}
                      AND e.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass
                      AND e.deptype = 'e')))"""


def _trusted(catalog: str, oid: str, owner: str) -> str:
    return _TRUSTED.format(oid=oid, owner=owner, catalog=catalog, first=FIRST_NORMAL_OID)


_IN_PATH = ("((w.schema IS NULL AND n.nspname = ANY(%(path)s::pg_catalog.name[])) "
            "OR n.nspname = w.schema)")

_NAMED = f"""
SELECT pg_catalog.pg_describe_object('pg_catalog.pg_proc'::pg_catalog.regclass, p.oid, 0)
FROM pg_catalog.pg_proc AS p
JOIN pg_catalog.pg_namespace AS n ON n.oid = p.pronamespace
JOIN ROWS FROM (pg_catalog.unnest(%(f_schema)s::text[]),
                pg_catalog.unnest(%(f_name)s::text[])) AS w(schema, name)
  ON p.proname = w.name
WHERE {_IN_PATH} AND NOT {_trusted('pg_catalog.pg_proc', 'p.oid', 'p.proowner')}
UNION ALL
SELECT pg_catalog.pg_describe_object('pg_catalog.pg_proc'::pg_catalog.regclass, p.oid, 0)
FROM pg_catalog.pg_proc AS p
JOIN pg_catalog.pg_namespace AS n ON n.oid = p.pronamespace
WHERE p.proname = ANY(%(attribute)s::text[]) AND p.pronargs = 1
  AND n.nspname = ANY(%(path)s::pg_catalog.name[])
  AND NOT {_trusted('pg_catalog.pg_proc', 'p.oid', 'p.proowner')}
UNION ALL
SELECT pg_catalog.pg_describe_object('pg_catalog.pg_operator'::pg_catalog.regclass, o.oid, 0)
FROM pg_catalog.pg_operator AS o
JOIN pg_catalog.pg_namespace AS n ON n.oid = o.oprnamespace
JOIN ROWS FROM (pg_catalog.unnest(%(o_schema)s::text[]),
                pg_catalog.unnest(%(o_name)s::text[])) AS w(schema, name)
  ON o.oprname = w.name
WHERE {_IN_PATH} AND NOT {_trusted('pg_catalog.pg_operator', 'o.oid', 'o.oprowner')}
UNION ALL
SELECT pg_catalog.pg_describe_object('pg_catalog.pg_type'::pg_catalog.regclass, t.oid, 0)
FROM pg_catalog.pg_type AS t
JOIN pg_catalog.pg_namespace AS n ON n.oid = t.typnamespace
JOIN ROWS FROM (pg_catalog.unnest(%(t_schema)s::text[]),
                pg_catalog.unnest(%(t_name)s::text[])) AS w(schema, name)
  ON t.typname = w.name
WHERE {_IN_PATH} AND NOT {_trusted('pg_catalog.pg_type', 't.oid', 't.typowner')}
LIMIT 1
"""

_RELATION = "SELECT pg_catalog.to_regclass(%s)::oid"

# The relations a statement reads, closed over what their views and rules read, their
# partitions and inheritance children; then every object the planner may evaluate for them.
_CARRIED = f"""
WITH RECURSIVE rels(oid) AS (
    SELECT pg_catalog.unnest(%(read)s::oid[])
  UNION
    SELECT x.child FROM rels AS r CROSS JOIN LATERAL (
        SELECT d.refobjid FROM pg_catalog.pg_rewrite AS rw
        JOIN pg_catalog.pg_depend AS d
          ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.objid = rw.oid
        WHERE rw.ev_class = r.oid
          AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
        UNION ALL
        SELECT d.refobjid FROM pg_catalog.pg_policy AS po
        JOIN pg_catalog.pg_depend AS d
          ON d.classid = 'pg_catalog.pg_policy'::pg_catalog.regclass AND d.objid = po.oid
        WHERE po.polrelid = r.oid
          AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
        UNION ALL
        SELECT i.inhrelid FROM pg_catalog.pg_inherits AS i WHERE i.inhparent = r.oid
    ) AS x(child)
),
named_types(oid) AS (
    SELECT t.oid FROM pg_catalog.pg_type AS t
    JOIN pg_catalog.pg_namespace AS n ON n.oid = t.typnamespace
    JOIN ROWS FROM (pg_catalog.unnest(%(t_schema)s::text[]),
                    pg_catalog.unnest(%(t_name)s::text[])) AS w(schema, name)
      ON t.typname = w.name
    WHERE {_IN_PATH}
),
types(oid) AS (  -- every type whose casts, domain checks or defaults planning may run
    SELECT a.atttypid FROM pg_catalog.pg_attribute AS a
    WHERE a.attrelid IN (SELECT oid FROM rels) AND a.attnum > 0 AND NOT a.attisdropped
  UNION
    SELECT c.reltype FROM pg_catalog.pg_class AS c WHERE c.oid IN (SELECT oid FROM rels)
  UNION
    SELECT oid FROM named_types
),
in_play(oid) AS (  -- and the base types of the domains among them
    SELECT oid FROM types
  UNION
    SELECT t.typbasetype FROM pg_catalog.pg_type AS t
    WHERE t.oid IN (SELECT oid FROM types) AND t.typtype = 'd'
),
carriers(classid, objid) AS (
    SELECT 'pg_catalog.pg_class'::pg_catalog.regclass, oid FROM rels
  UNION ALL
    SELECT 'pg_catalog.pg_rewrite'::pg_catalog.regclass, rw.oid FROM pg_catalog.pg_rewrite AS rw
    WHERE rw.ev_class IN (SELECT oid FROM rels)
  UNION ALL
    SELECT 'pg_catalog.pg_policy'::pg_catalog.regclass, po.oid FROM pg_catalog.pg_policy AS po
    WHERE po.polrelid IN (SELECT oid FROM rels)
  UNION ALL
    SELECT 'pg_catalog.pg_class'::pg_catalog.regclass, i.indexrelid FROM pg_catalog.pg_index AS i
    WHERE i.indrelid IN (SELECT oid FROM rels)
  UNION ALL
    SELECT 'pg_catalog.pg_constraint'::pg_catalog.regclass, c.oid
    FROM pg_catalog.pg_constraint AS c WHERE c.conrelid IN (SELECT oid FROM rels)
  UNION ALL
    SELECT 'pg_catalog.pg_statistic_ext'::pg_catalog.regclass, s.oid
    FROM pg_catalog.pg_statistic_ext AS s WHERE s.stxrelid IN (SELECT oid FROM rels)
  UNION ALL
    SELECT 'pg_catalog.pg_attrdef'::pg_catalog.regclass, a.oid FROM pg_catalog.pg_attrdef AS a
    WHERE %(writes)s AND a.adrelid IN (SELECT oid FROM rels)
  UNION ALL  -- domain CHECK constraints
    SELECT 'pg_catalog.pg_constraint'::pg_catalog.regclass, c.oid
    FROM pg_catalog.pg_constraint AS c WHERE c.contypid IN (SELECT oid FROM in_play)
  UNION ALL  -- domain defaults, range functions and the like hang off the type itself
    SELECT 'pg_catalog.pg_type'::pg_catalog.regclass, oid FROM in_play
  UNION ALL  -- casts from or to any type in play
    SELECT 'pg_catalog.pg_cast'::pg_catalog.regclass, ca.oid FROM pg_catalog.pg_cast AS ca
    WHERE ca.castsource IN (SELECT oid FROM in_play) OR ca.casttarget IN (SELECT oid FROM in_play)
)
SELECT pg_catalog.pg_describe_object(d.refclassid, d.refobjid, 0),
       pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid)
FROM carriers AS c
JOIN pg_catalog.pg_depend AS d ON d.classid = c.classid AND d.objid = c.objid
LEFT JOIN pg_catalog.pg_proc AS p
  ON d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND p.oid = d.refobjid
LEFT JOIN pg_catalog.pg_operator AS o
  ON d.refclassid = 'pg_catalog.pg_operator'::pg_catalog.regclass AND o.oid = d.refobjid
WHERE d.deptype IN ('n', 'a')
  AND ((p.oid IS NOT NULL AND NOT {_trusted('pg_catalog.pg_proc', 'p.oid', 'p.proowner')})
    OR (o.oid IS NOT NULL
        AND NOT {_trusted('pg_catalog.pg_operator', 'o.oid', 'o.oprowner')}))
LIMIT 1
"""


def _pairs(items: set[tuple[str | None, str]]) -> tuple[list[str | None], list[str]]:
    ordered = sorted(items, key=lambda item: (item[0] or "", item[1]))
    return [s for s, _ in ordered], [n for _, n in ordered]


def _regclass_text(schema: str | None, name: str) -> str:
    quoted = '"' + name.replace('"', '""') + '"'
    if schema is None:
        return quoted
    return '"' + schema.replace('"', '""') + '".' + quoted


async def _oids(conn: db.Conn,
                relations: set[tuple[str | None, str]]) -> list[int]:
    oids = []
    for schema, name in sorted(relations, key=lambda item: (item[0] or "", item[1])):
        cursor = await conn.execute(_RELATION, (_regclass_text(schema, name),))
        row = await cursor.fetchone()
        if row is not None and row[0] is not None:  # None: a CTE's name, or nothing
            oids.append(int(row[0]))
    return oids


async def refusal(conn: db.Conn, statement: str) -> str | None:
    """Why planning ``statement`` here could run code that is not a system object, or None.

    Call it inside the planning transaction, after its ``search_path`` is set: names are
    resolved the way the planner will resolve them. The checking queries themselves run with
    ``search_path = pg_catalog`` alone, so an operator or function a user put in a schema of
    the path (``public.<(oid, integer)``) can never be picked by our own comparisons.
    """
    try:
        found = names(statement)
    except pglast.parser.ParseError as exc:
        return f"does not parse: {exc}"
    except RecursionError:
        return "is nested too deeply to be checked"
    cursor = await conn.execute("SELECT pg_catalog.current_schemas(true), "
                                "pg_catalog.current_setting('search_path')")
    row = await cursor.fetchone()
    assert row is not None
    path, planning_path = [str(schema) for schema in row[0]], str(row[1])
    read = await _oids(conn, found.relations)
    f_schema, f_name = _pairs(found.functions)
    o_schema, o_name = _pairs(found.operators)
    t_schema, t_name = _pairs(found.types)
    await conn.execute("SELECT pg_catalog.set_config('search_path', 'pg_catalog', true)")
    try:
        cursor = await conn.execute(_NAMED, {
            "f_schema": f_schema, "f_name": f_name, "o_schema": o_schema, "o_name": o_name,
            "t_schema": t_schema, "t_name": t_name, "path": path,
            "attribute": sorted(found.attribute_functions)})
        row = await cursor.fetchone()
        if row is not None:
            return f"names {row[0]}, which is not a system object"
        cursor = await conn.execute(_CARRIED, {
            "read": read, "writes": bool(found.written), "path": path,
            "t_schema": t_schema, "t_name": t_name})
        row = await cursor.fetchone()
        if row is not None:
            return f"reads {row[1]}, which uses {row[0]}, not a system object"
        return None
    finally:
        if not (conn.closed or conn.broken):
            await conn.execute("SELECT pg_catalog.set_config('search_path', %s, true)",
                               (planning_path,))
