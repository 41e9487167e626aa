"""The HypoPG pre-check of a ``create_index``: build only what the planner says pays off.

Flow: the table still exists, is not partitioned, has the columns, is under its index budget
and has no valid index that already covers the columns; then every statement the index would
serve is planned twice, without and with a HypoPG hypothetical index, and the estimated size
of that index is checked against the build-size budget (PostgreSQL has no portable SQL view of
free disk, so a configured budget is the check). The verdict carries every number, so a
rejected Remediation says why.

Planning normalized statements (``WHERE v = $1``) on PostgreSQL 15, which has no
``EXPLAIN (GENERIC_PLAN)``: ``PREPARE`` under ``plan_cache_mode = force_generic_plan`` and
``EXPLAIN (FORMAT JSON) EXECUTE name(NULL, ...)``, with a **new** prepared statement for each
plan, because a cached generic plan ignores a hypothetical index created after it. The
statement text comes from a message, so it is parsed first (exactly one SELECT, INSERT,
UPDATE or DELETE), prepared over the extended protocol (which refuses a second statement) and
planned inside a READ ONLY transaction that is always rolled back.

Planning runs code: the planner folds IMMUTABLE functions and index expressions with the
executor's privileges, and the text comes from whoever ran the statement. So a statement is
planned only when everything it names, and everything the relations it reads carry, is a
system object (``plan_safety``); it is planned with ``pg_catalog`` first on the search path,
and a planning error is recorded as its class and SQLSTATE only, never the server's message,
which could carry what a hostile statement made the server read.

Partitioned tables are refused with the manual procedure in the message: PostgreSQL 15 cannot
build an index CONCURRENTLY on a partitioned table, and building one per partition then
attaching them is a multi-step change we do not automate (see docs/indexes.md).
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Sequence
from typing import Any

import pglast
import psycopg
from psycopg import sql

from startupmonkey import db
from startupmonkey.executor import index_catalog, indexes, outcome, plan_safety

_LOCK_NOT_AVAILABLE = "55P03"
_PLANNABLE = frozenset({"SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt"})
_STATEMENTS = """
SELECT DISTINCT s.query FROM {schema}.pg_stat_statements(true) AS s
WHERE s.dbid = (SELECT d.oid FROM pg_catalog.pg_database AS d
                WHERE d.datname = pg_catalog.current_database())
  AND s.queryid = ANY(%s)
"""
_PARAMS = """
SELECT pg_catalog.cardinality(parameter_types) FROM pg_catalog.pg_prepared_statements
WHERE name = %s
"""
_PREPARED = "SELECT name FROM pg_catalog.pg_prepared_statements WHERE name = ANY(%s)"
_PARTITIONED = (
    "{table} is a partitioned table: PostgreSQL cannot build an index CONCURRENTLY on it, "
    "and this version does not automate the per-partition build. By hand: CREATE INDEX ... "
    "ON ONLY the parent (an invalid parent index), CREATE INDEX CONCURRENTLY on each "
    "partition, then ALTER INDEX parent_index ATTACH PARTITION each one")


@dataclasses.dataclass(frozen=True)
class Selectivity:
    """The planner's estimate of the fraction of the table the index's equality columns
    select: rows of ``SELECT 1 FROM ONLY table WHERE c1 = $1 AND ...`` (generic plan) over
    rows of ``SELECT 1 FROM ONLY table``. ``error``: why there is no estimate."""

    columns: tuple[str, ...]
    rows: float | None = None
    table_rows: float | None = None
    limited: bool = False
    """The statements read at most LIMIT rows through the index (ORDER BY ... LIMIT): the
    fraction does not bound what the index saves, so it refuses nothing."""
    error: str | None = None

    @property
    def fraction(self) -> float | None:
        if self.rows is None or not self.table_rows:
            return None
        return min(1.0, self.rows / self.table_rows)

    def numbers(self) -> dict[str, float | None]:
        return {"selectivity": self.fraction, "selectivity_rows": self.rows,
                "selectivity_table_rows": self.table_rows,
                "selectivity_columns": float(len(self.columns)),
                "selectivity_limited": float(self.limited)}

    def describe(self) -> str:
        where = " AND ".join(f"{c} = $n" for c in self.columns)
        if self.fraction is None:
            return f"selectivity of {where} unknown ({self.error or 'not estimated'})"
        return (f"the planner expects {self.rows:.0f} of {self.table_rows:.0f} rows "
                f"({self.fraction:.2%}) for {where}")


@dataclasses.dataclass(frozen=True)
class StatementCost:
    """One served statement: planner cost without and with the hypothetical index."""

    statement: str
    cost_before: float | None = None
    cost_after: float | None = None
    uses_index: bool = False
    error: str | None = None

    @property
    def planned(self) -> bool:
        """Both plans were made."""
        return self.cost_before is not None and self.cost_after is not None


@dataclasses.dataclass(frozen=True)
class PrecheckResult:
    """The verdict (``build``), why (``reason``) and every number it was made from.

    ``retry``: not a verdict on the index; nothing could be planned because a lock on the
    table was not granted in time (``lock_timeout``), so try again later.
    """

    build: bool
    reason: str
    statements: tuple[StatementCost, ...] = ()
    cost_before: float | None = None
    cost_after: float | None = None
    estimated_bytes: int | None = None
    existing_indexes: int | None = None
    table_rows: float | None = None
    table_bytes: int | None = None
    min_cost_reduction: float | None = None
    max_build_bytes: int | None = None
    max_indexes_per_table: int | None = None
    retry: bool = False
    selectivity: Selectivity | None = None
    max_selectivity: float | None = None
    keys: tuple[tuple[tuple[str, ...], float | None], ...] = ()
    """Each key considered (the target's first) and the summed planner cost of the served
    statements with a hypothetical index on it (None: could not be planned)."""

    @property
    def cost_reduction(self) -> float | None:
        """``1 - after/before`` of the summed planner cost of the planned statements."""
        if self.cost_before is None or self.cost_after is None or self.cost_before <= 0:
            return None
        return 1.0 - self.cost_after / self.cost_before

    def numbers(self) -> dict[str, float]:
        """The numbers for the Remediation status (``before``), unknown ones left out."""
        values: dict[str, float | int | None] = {
            "cost_before": self.cost_before, "cost_after": self.cost_after,
            "cost_reduction": self.cost_reduction, "estimated_index_bytes": self.estimated_bytes,
            "existing_indexes": self.existing_indexes, "table_rows": self.table_rows,
            "table_bytes": self.table_bytes,
            "statements_planned": float(sum(s.planned for s in self.statements)),
            "statements_using_index": float(sum(s.uses_index for s in self.statements)),
            "min_cost_reduction": self.min_cost_reduction,
            "max_build_bytes": self.max_build_bytes,
            "max_indexes_per_table": self.max_indexes_per_table,
            "max_selectivity": self.max_selectivity}
        if self.selectivity is not None:
            values.update(self.selectivity.numbers())
        for n, (_, cost) in enumerate(self.keys, start=1):
            values[f"key_{n}_cost_after"] = cost
        return {k: float(v) for k, v in values.items() if v is not None}

    def rejected(self) -> outcome.Outcome:
        """The Rejected outcome of a negative verdict (nothing ran)."""
        return outcome.Outcome.rejected(self.reason, **self.numbers())


def planning_error(exc: psycopg.Error) -> str:
    """What failed, without the server's message: the text of an error raised while planning
    a statement someone else wrote can carry whatever that statement made the server read
    (a function raising the contents of a table), so only its class and SQLSTATE are kept."""
    sqlstate = exc.sqlstate or ""
    try:
        psycopg.errors.lookup(sqlstate)
    except KeyError:  # a code of the statement's own choosing would carry its data: its class
        sqlstate = f"class {sqlstate[:2]}" if len(sqlstate) >= 2 else "unknown"
    what = f"{type(exc).__name__} (SQLSTATE {sqlstate})"
    return f"lock timeout: {what}" if exc.sqlstate == _LOCK_NOT_AVAILABLE else what


def plannable(statement: str) -> str | None:
    """Why ``statement`` cannot be costed here, or None when it can."""
    try:
        parsed = pglast.parse_sql(statement)
    except pglast.parser.ParseError as exc:
        return f"does not parse: {exc}"
    if len(parsed) != 1:
        return f"is {len(parsed)} statements, not one"
    node = parsed[0].stmt
    kind = type(node).__name__
    if kind not in _PLANNABLE:
        return f"is a {kind}, not a query the planner costs"
    if isinstance(node, pglast.ast.SelectStmt) and node.intoClause is not None:
        return "is SELECT INTO"
    return None


async def statements_for(conn: db.Conn,
                         queryids: Sequence[str | int]) -> list[str]:
    """The normalized text of ``queryids`` in this database (what the pre-check plans).

    Reads text for these entries only (REFERENCE.md: no text on the hot path). Empty when
    pg_stat_statements is not installed or the entries were evicted.
    """
    schema = await index_catalog.extension_schema(conn, "pg_stat_statements")
    if schema is None:
        return []
    cursor = await conn.execute(sql.SQL(_STATEMENTS).format(schema=sql.Identifier(schema)),
                                ([int(q) for q in queryids],))
    return sorted(str(row[0]) for row in await cursor.fetchall())


def _covering(found: Sequence[index_catalog.IndexInfo],
              target: indexes.IndexTarget) -> index_catalog.IndexInfo | None:
    width = len(target.columns)
    return next((i for i in found if i.valid and i.method == "btree" and not i.has_predicate
                 and tuple(i.columns[:width]) == target.columns), None)


async def _table_refusal(conn: db.Conn, target: indexes.IndexTarget,
                         table: index_catalog.TableInfo | None,
                         max_indexes_per_table: int) -> str | None:
    label = f"{target.schema}.{target.table}"
    if table is None:
        return f"table {label} does not exist (any more)"
    if table.relkind == "p":
        return _PARTITIONED.format(table=label)
    if table.relkind not in ("r", "m"):
        return f"{label} is not a table or materialized view (relkind {table.relkind!r})"
    missing = [c for c in target.columns if c not in table.columns]
    if missing:
        return f"{label} has no column(s) {', '.join(missing)}"
    if table.indexes >= max_indexes_per_table:
        return (f"{label} already has {table.indexes} indexes; the budget is "
                f"{max_indexes_per_table} per table (limits.maxIndexesPerTable)")
    covering = _covering(await index_catalog.table_indexes(conn, table.oid), target)
    if covering is not None:
        return (f"index {covering.qualified} ({', '.join(covering.columns)}) already covers "
                f"{target.label}")
    return None


def _uses(plan_json: Any, hypothetical: str) -> bool:
    return hypothetical in json.dumps(plan_json)


class _Planner:
    """Plans statements inside the pre-check's transaction, one new prepared statement each."""

    def __init__(self, conn: db.Conn) -> None:
        self.conn = conn
        self.names: list[str] = []

    async def cost(self, statement: str) -> tuple[float, Any]:
        name = f"sm_precheck_{uuid.uuid4().hex[:16]}"
        self.names.append(name)
        prepare = sql.SQL("PREPARE {} AS ").format(sql.Identifier(name)) + sql.SQL(statement)
        async with self.conn.transaction():  # a savepoint: one bad statement spoils no other
            await self.conn.execute(prepare, binary=True)  # extended protocol: one statement
            params = int(await index_catalog.scalar(self.conn, _PARAMS, (name,)) or 0)
            explain = sql.SQL("EXPLAIN (FORMAT JSON) EXECUTE {}").format(sql.Identifier(name))
            if params:
                explain += sql.SQL("({})").format(sql.SQL(", ").join([sql.NULL] * params))
            cursor = await self.conn.execute(explain)
            row = await cursor.fetchone()
        assert row is not None
        document = row[0]
        return float(document[0]["Plan"]["Total Cost"]), document

    async def deallocate(self) -> None:
        cursor = await self.conn.execute(_PREPARED, (self.names,))
        for (name,) in await cursor.fetchall():
            await self.conn.execute(sql.SQL("DEALLOCATE {}").format(sql.Identifier(name)))


async def _before(planner: _Planner, statements: Sequence[str]) -> list[StatementCost]:
    costs = []
    for statement in statements:
        why = plannable(statement)
        if why is not None:
            costs.append(StatementCost(statement, error=f"statement {why}"))
            continue
        unsafe = await plan_safety.refusal(planner.conn, statement)
        if unsafe is not None:
            costs.append(StatementCost(statement, error=f"statement {unsafe}; not planned"))
            continue
        try:
            cost, _ = await planner.cost(statement)
        except psycopg.Error as exc:
            costs.append(StatementCost(statement, error=planning_error(exc)))
            continue
        costs.append(StatementCost(statement, cost_before=cost))
    return costs


async def _after(planner: _Planner, costs: list[StatementCost],
                 hypothetical: str) -> list[StatementCost]:
    result = []
    for item in costs:
        if item.cost_before is None:
            result.append(item)
            continue
        try:
            cost, document = await planner.cost(item.statement)
        except psycopg.Error as exc:
            result.append(dataclasses.replace(item, error=planning_error(exc)))
            continue
        result.append(dataclasses.replace(item, cost_after=cost,
                                          uses_index=_uses(document, hypothetical)))
    return result


async def _hypothetical(conn: db.Conn, hypopg: str,
                        target: indexes.IndexTarget) -> tuple[str, int]:
    create = sql.SQL("SELECT indexrelid, indexname FROM {}.hypopg_create_index(%s)").format(
        sql.Identifier(hypopg))
    cursor = await conn.execute(create, (indexes.create_index_sql(target, concurrently=False),))
    row = await cursor.fetchone()
    assert row is not None
    size = await index_catalog.scalar(conn, sql.SQL(
        "SELECT {}.hypopg_relation_size(%s)").format(sql.Identifier(hypopg)).as_string(conn),
        (row[0],))
    return str(row[1]), int(size or 0)


async def _search_path(conn: db.Conn) -> str:
    """The session's schemas with ``pg_catalog`` first: a name the statement leaves
    unqualified resolves to the system's object before any user's of the same name."""
    cursor = await conn.execute("SELECT pg_catalog.current_schemas(false)")
    row = await cursor.fetchone()
    schemas = [str(s) for s in (row[0] if row else []) if s != "pg_catalog"]
    return ", ".join(['pg_catalog'] + ['"' + s.replace('"', '""') + '"' for s in schemas])


async def _planning(conn: db.Conn, plan_timeout: float) -> None:
    """The planning transaction's settings (call first inside it): READ ONLY, generic
    plans, its own statement timeout, ``pg_catalog`` first on the search path."""
    await conn.execute("SET TRANSACTION READ ONLY")
    await conn.execute(
        "SELECT pg_catalog.set_config('plan_cache_mode', 'force_generic_plan', true), "
        "pg_catalog.set_config('statement_timeout', %s, true), "
        "pg_catalog.set_config('search_path', %s, true)",
        (f"{max(1, round(plan_timeout * 1000))}ms", await _search_path(conn)))


def _filtered_scan(conn: db.Conn, target: indexes.IndexTarget,
                   columns: Sequence[str]) -> str:
    """``SELECT 1 FROM ONLY "schema"."table" [WHERE "c1" = $1 AND ...]``: built here from
    quoted identifiers, never from a statement's text."""
    query = sql.SQL("SELECT 1 FROM ONLY {}.{}").format(sql.Identifier(target.schema),
                                                       sql.Identifier(target.table))
    if columns:
        query += sql.SQL(" WHERE ") + sql.SQL(" AND ").join(
            sql.SQL("{} = {}").format(sql.Identifier(c), sql.SQL(f"${n}"))
            for n, c in enumerate(columns, start=1))
    return query.as_string(conn)


async def _rows(planner: _Planner, statement: str) -> float:
    """The planner's estimate of the rows ``statement`` returns (the top node's)."""
    unsafe = await plan_safety.refusal(planner.conn, statement)
    if unsafe is not None:
        raise _Refused(f"statement {unsafe}; not planned")
    _, document = await planner.cost(statement)
    return float(document[0]["Plan"]["Plan Rows"])


class _Refused(Exception):
    """plan_safety refused a statement: its reason, safe to record."""


async def estimate_selectivity(conn: db.Conn, target: indexes.IndexTarget,
                               columns: Sequence[str], *, limited: bool = False,
                               plan_timeout: float = 30.0) -> Selectivity:
    """What fraction of ``target``'s table the equality ``columns`` select, by the
    planner's own estimate (pg_stats, extended statistics) of a filtered scan that this
    function writes. Planned under the same rules as the served statements: the same
    refusal (``plan_safety``: a user's ``=`` operator, or a user function in an index or
    policy of the table, is not planned), the same READ ONLY transaction, and an error is
    recorded as its class and SQLSTATE only. Raises LockNotAvailable / QueryCanceled (the
    caller retries)."""
    base = Selectivity(tuple(columns), limited=limited)
    if not columns:
        return dataclasses.replace(base, error="no equality column")
    planner = _Planner(conn)
    try:
        async with conn.transaction(force_rollback=True):
            await _planning(conn, plan_timeout)
            try:
                total = await _rows(planner, _filtered_scan(conn, target, ()))
                rows = await _rows(planner, _filtered_scan(conn, target, columns))
            except _Refused as exc:
                return dataclasses.replace(base, error=str(exc))
            except (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled):
                raise
            except psycopg.Error as exc:
                return dataclasses.replace(base, error=planning_error(exc))
    finally:
        if not (conn.closed or conn.broken):
            await planner.deallocate()
    return dataclasses.replace(base, rows=rows, table_rows=total)


async def plan_costs(conn: db.Conn, hypopg: str,
                     target: indexes.IndexTarget, statements: Sequence[str],
                     plan_timeout: float = 30.0) -> tuple[list[StatementCost], int | None]:
    """Costs of each statement without and with a hypothetical ``target``, and its size.

    Runs in a READ ONLY transaction that is rolled back; prepared statements (which outlive
    transactions) are deallocated and hypothetical indexes reset afterwards.
    """
    planner = _Planner(conn)
    try:
        async with conn.transaction(force_rollback=True):
            await _planning(conn, plan_timeout)
            costs = await _before(planner, statements)
            if not any(c.cost_before is not None for c in costs):
                return costs, None
            hypothetical, size = await _hypothetical(conn, hypopg, target)
            costs = await _after(planner, costs, hypothetical)
    finally:
        if not (conn.closed or conn.broken):
            await planner.deallocate()
            await conn.execute(sql.SQL("SELECT {}.hypopg_reset()").format(
                sql.Identifier(hypopg)))
    return costs, size


def _verdict(base: PrecheckResult, costs: list[StatementCost],
             size: int | None) -> PrecheckResult:
    planned = [c for c in costs if c.planned]
    result = dataclasses.replace(
        base, statements=tuple(costs), estimated_bytes=size,
        cost_before=sum(c.cost_before or 0.0 for c in planned) if planned else None,
        cost_after=sum(c.cost_after or 0.0 for c in planned) if planned else None)
    if not planned:
        errors = "; ".join(f"{c.statement[:80]!r}: {(c.error or '')[:200]}"
                           for c in costs[:8]) or "none given"
        locked = any(f"SQLSTATE {_LOCK_NOT_AVAILABLE}" in (c.error or "") for c in costs)
        return dataclasses.replace(result, retry=locked,
                                   reason=f"no statement could be planned ({errors})")
    numbers = (f"planner cost {result.cost_before:.1f} -> {result.cost_after:.1f} "
               f"({result.cost_reduction or 0.0:.1%} lower) over {len(planned)} statement(s), "
               f"estimated index size {size} bytes")
    if base.selectivity is not None:
        numbers += f"; {base.selectivity.describe()}"
        if base.selectivity.limited:
            numbers += " (read at most LIMIT rows: not a refusal)"
    if base.max_build_bytes is not None and (size or 0) > base.max_build_bytes:
        return dataclasses.replace(result, reason=f"rejected: {numbers} exceeds the build-size "
                                   f"budget of {base.max_build_bytes} bytes "
                                   "(limits.maxIndexBuildSize)")
    if (result.cost_reduction or 0.0) < (base.min_cost_reduction or 0.0):
        return dataclasses.replace(result, reason=f"rejected: {numbers}; needs at least "
                                   f"{base.min_cost_reduction:.0%} lower "
                                   "(thresholds.missing_index.minCostReduction)")
    return dataclasses.replace(result, build=True, reason=f"worth building: {numbers}")


def key_label(key: Sequence[str]) -> str:
    """``(a, b)``: a key as the reasons name it."""
    return "(" + ", ".join(key) + ")"


def parse_candidate_keys(text: object, limit: int = 4) -> list[tuple[str, ...]]:
    """The keys a detection considered (evidence ``candidate_keys``: a JSON list of column
    lists), at most ``limit``; anything else in that place is ignored."""
    try:
        keys = json.loads(str(text))
    except ValueError:
        return []
    if not isinstance(keys, list):
        return []
    return [tuple(k) for k in keys[:limit] if isinstance(k, list) and 0 < len(k) <= 4
            and all(isinstance(c, str) for c in k)]


async def compare_keys(conn: db.Conn, hypopg: str, target: indexes.IndexTarget,
                       keys: Sequence[Sequence[str]], statements: Sequence[str],
                       plan_timeout: float = 30.0
                       ) -> tuple[tuple[tuple[str, ...], float | None], ...]:
    """The summed planner cost of ``statements`` with a hypothetical index on each key (as
    Dexter chooses): the same planning, refusal and error rules as the pre-check."""
    out: list[tuple[tuple[str, ...], float | None]] = []
    for key in keys:
        try:
            other = indexes.IndexTarget(target.schema, target.table, tuple(key))
        except ValueError:
            continue
        costs, _ = await plan_costs(conn, hypopg, other, statements, plan_timeout)
        planned = [c for c in costs if c.planned]
        out.append((other.columns, sum(c.cost_after or 0.0 for c in planned)
                    if planned else None))
    return tuple(out)


def _key_comparison(result: PrecheckResult) -> str:
    costed = [(k, c) for k, c in result.keys if c is not None]
    if len(result.keys) < 2 or not costed:
        return ""
    best_key = min(costed, key=lambda kc: kc[1])[0]
    listed = ", ".join(f"{key_label(k)} {'-' if c is None else f'{c:.1f}'}"
                       for k, c in result.keys)
    winner = ("the target is the cheapest" if best_key == result.keys[0][0] else
              f"{key_label(best_key)} would be cheaper now; the key chosen at intake "
              "(planned and hashed then) is judged on its own numbers")
    return f"; keys considered by planner cost with each hypothetical index: {listed}: {winner}"


async def precheck_create_index(
        conn: db.Conn, schema: str, table: str, columns: Sequence[str],
        statements: Sequence[str], *, min_cost_reduction: float, max_build_bytes: int,
        max_indexes_per_table: int, plan_timeout: float = 30.0,
        max_selectivity: float | None = None, equality_columns: int | None = None,
        limited: bool = False, alternatives: Sequence[Sequence[str]] = ()) -> PrecheckResult:
    """Build or reject a btree on ``columns`` of ``schema.table``, with the numbers.

    ``statements``: the (normalized) statements the index would serve, as
    pg_stat_statements shows them. The connection should be the executor's autocommit one.
    ``max_selectivity``: refuse, before any cost comparison, when the planner expects the
    leading ``equality_columns`` (all columns when None) to select more than this fraction
    of the table; ``limited``: the statements stop after LIMIT rows (ORDER BY ... LIMIT),
    so the fraction is recorded but refuses nothing. ``alternatives``: other keys the
    detection considered; each is costed with its own hypothetical index and the comparison
    recorded (``keys``, ``key_<n>_cost_after``, the reason).
    """
    base = PrecheckResult(False, "", min_cost_reduction=min_cost_reduction,
                          max_build_bytes=max_build_bytes,
                          max_indexes_per_table=max_indexes_per_table,
                          max_selectivity=max_selectivity)
    try:
        target = indexes.IndexTarget(schema, table, tuple(columns))
    except ValueError as exc:
        return dataclasses.replace(base, reason=str(exc))
    hypopg = await index_catalog.extension_schema(conn, "hypopg")
    if hypopg is None:
        return dataclasses.replace(base, reason="the hypopg extension is not installed in "
                                   "this database (an admin must CREATE EXTENSION hypopg)")
    info = await index_catalog.table_info(conn, schema, table)
    if info is not None:
        base = dataclasses.replace(base, existing_indexes=info.indexes, table_rows=info.rows,
                                   table_bytes=info.bytes)
    refusal = await _table_refusal(conn, target, info, max_indexes_per_table)
    if refusal is not None:
        return dataclasses.replace(base, reason=refusal)
    try:
        if max_selectivity is not None:
            width = len(target.columns) if equality_columns is None else equality_columns
            estimate = await estimate_selectivity(conn, target, target.columns[:width],
                                                  limited=limited, plan_timeout=plan_timeout)
            base = dataclasses.replace(base, selectivity=estimate)
            fraction = estimate.fraction
            if fraction is not None and fraction > max_selectivity and not limited:
                return dataclasses.replace(base, reason=(
                    f"rejected: {estimate.describe()}, above "
                    f"thresholds.missing_index.maxSelectivity ({max_selectivity:.2%}): an "
                    "index scan would read too much of the table to beat a seq scan"))
        costs, size = await plan_costs(conn, hypopg, target, statements, plan_timeout)
        others = [k for k in alternatives if tuple(k) != target.columns]
        if others and any(c.planned for c in costs):
            planned = [c for c in costs if c.planned]
            mine = (target.columns, sum(c.cost_after or 0.0 for c in planned))
            base = dataclasses.replace(base, keys=(mine, *await compare_keys(
                conn, hypopg, target, others, statements, plan_timeout)))
    except (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled) as exc:
        return dataclasses.replace(base, retry=True, reason="the pre-check could not plan in "
                                   f"time ({planning_error(exc)}); try again later")
    result = _verdict(base, costs, size)
    return dataclasses.replace(result, reason=result.reason + _key_comparison(result))
