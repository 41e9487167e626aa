"""Index candidates from statement text: what a statement filters and joins its tables by.

Where it sits: the ``missing_index`` detector (``detectors/statements.py``) hands the
normalized text of each hot statement (pg_stat_statements, ``$1`` for constants) to
:func:`parse`, resolves the result against the snapshot's catalog with :func:`uses`, and turns
each use of a table into btree candidates with :func:`candidates`. Three steps, so the
expensive one is done once per text:

1. :func:`parse` (pglast, i.e. PostgreSQL's own parser): the query levels of the statement
   (the statement itself, every sub-select, CTE body and set-operation arm), each with its
   FROM items and the conjuncts of its WHERE / inner JOIN ON that an index can serve:
   ``col = x``, ``col IN (...)``, ``col = ANY(x)``, ``col IN (SELECT ...)``, ``col < x``
   (``<=``, ``>``, ``>=``, ``BETWEEN``), and ``a.col = b.col`` joins (also ``USING``).
   Anything under OR or NOT, casts or functions on the column side, LIKE and IS NULL are not
   candidates. A text that does not parse, is truncated, holds several statements or is not
   DML is :class:`Skipped` with a reason, counted once per text (:func:`take_skipped`); it
   never raises. Results are cached by text.
2. :func:`uses`: names against the catalog. Unqualified relation names follow an *assumed*
   search_path: a name that exists in one schema of the catalog is that relation; in several,
   ``public`` wins; otherwise (or a ``pg_`` name, which would be pg_catalog's first) it is
   left unresolved. The role's own ``"$user"`` schema cannot be known (pg_stat_statements
   gives a role oid, not a name). CTE names shadow tables; aliases hide the table name as in
   PostgreSQL; unqualified columns belong to the one FROM item that has them, else to an
   enclosing level (correlated sub-selects).
3. :func:`candidates`: per use, a filter candidate (equality columns, then one range column)
   and a join candidate (the join-equality columns); the detector orders and cuts them to
   one or two leading columns (``Candidate.columns``).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Final, Literal

from pglast import ast, enums
from pglast import parser as pg_parser

from startupmonkey.v1 import snapshot_pb2

Kind = Literal["eq", "range", "order"]
Reason = Literal["truncated", "empty", "syntax", "multiple", "utility", "too_complex", "error"]
Column = tuple[str, ...]
"""A column reference as written: ``("o", "customer_id")``, ``("customer_id",)``."""

MAX_LEVELS: Final = 64
"""Query levels (sub-selects, CTEs, set-operation arms) of one statement; more: too_complex."""
MAX_CONDITIONS: Final = 512
"""Usable predicates of one statement; more: too_complex."""
CACHE_SIZE: Final = 4096
"""Parsed texts kept (a hot statement is parsed once, not every snapshot)."""
MAX_WIDTH: Final = 2
"""Leading columns of a candidate index: one or two."""
AGGREGATES: Final = frozenset({
    "count", "sum", "avg", "min", "max", "array_agg", "string_agg", "bool_and", "bool_or",
    "every", "json_agg", "jsonb_agg", "json_object_agg", "jsonb_object_agg", "xmlagg",
    "bit_and", "bit_or", "bit_xor", "stddev", "stddev_pop", "stddev_samp", "variance",
    "var_pop", "var_samp", "percentile_cont", "percentile_disc", "mode", "corr",
    "covar_pop", "covar_samp", "range_agg", "range_intersect_agg", "any_value"})
"""Names that make a target list aggregate (rows per call then say nothing about matches)."""
_RANGE_OPS: Final = frozenset({"<", "<=", ">", ">="})
_SETOP_NONE: Final = enums.SetOperation.SETOP_NONE
_AND: Final = enums.BoolExprType.AND_EXPR
_INNER: Final = enums.JoinType.JOIN_INNER
_K = enums.A_Expr_Kind


# ---- parse results


@dataclasses.dataclass(frozen=True)
class Source:
    """One FROM item of a query level, as the level's columns refer to it."""

    visible: str
    """The name that qualifies its columns: the alias, else the relation name."""
    schema: str | None
    """Schema as written (None: unqualified)."""
    relname: str | None
    """Relation name; None for a derived item (sub-select, CTE reference, function)."""
    aliased: bool


@dataclasses.dataclass(frozen=True)
class Condition:
    """A predicate an index could serve: ``column <kind> <other side>``."""

    column: Column
    kind: Kind
    others: tuple[Column, ...] = ()
    """Columns referenced by the other side (empty: parameters and constants only)."""
    joined: bool = False
    """The other side is another relation's column (join, ``IN (SELECT ...)``, USING)."""


@dataclasses.dataclass(frozen=True)
class Level:
    """One query level: its FROM items and usable predicates; ``parent`` is the enclosing
    level its columns may also refer to (correlation)."""

    parent: int | None
    sources: tuple[Source, ...]
    conditions: tuple[Condition, ...]


@dataclasses.dataclass(frozen=True)
class Parsed:
    """A statement that parsed: its command and query levels."""

    command: str
    """select, insert, update, delete or merge."""
    rows_match: bool
    """pg_stat_statements ``rows`` per call count the rows the predicates matched (no
    aggregate, GROUP BY, DISTINCT, LIMIT or set operation at the top)."""
    levels: tuple[Level, ...]


@dataclasses.dataclass(frozen=True)
class Skipped:
    """A statement that cannot be analysed, and why (the Prometheus label)."""

    reason: Reason
    detail: str


class _Unusable(Exception):
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason: Reason = reason
        self.detail = detail


# ---- parsing

_skipped: collections.Counter[str] = collections.Counter()


def take_skipped() -> dict[str, int]:
    """Texts skipped since the last call, by reason (the caller feeds its metric)."""
    counts = dict(_skipped)
    _skipped.clear()
    return counts


def parse(text: str, truncated: bool = False) -> Parsed | Skipped:
    """The query levels of one normalized statement, or why it cannot be analysed. Never
    raises; a skip is counted the first time a text is seen (results are cached)."""
    return _parse_cached(text, truncated)


@functools.lru_cache(maxsize=CACHE_SIZE)
def _parse_cached(text: str, truncated: bool) -> Parsed | Skipped:
    result = _parse(text, truncated)
    if isinstance(result, Skipped):
        _skipped[result.reason] += 1
    return result


def _parse(text: str, truncated: bool) -> Parsed | Skipped:
    if truncated:
        return Skipped("truncated", "the text was cut by the collector")
    try:
        statements = pg_parser.parse_sql(text)
        if not statements:
            return Skipped("empty", "no statement in the text")
        if len(statements) > 1:
            return Skipped("multiple", f"{len(statements)} statements in one text")
        node = statements[0].stmt
        if node is None:
            return Skipped("empty", "no statement in the text")
        builder = _Builder()
        command, rows_match = builder.statement(node)
        return Parsed(command, rows_match, builder.freeze())
    except pg_parser.ParseError as exc:
        return Skipped("syntax", str(exc))
    except _Unusable as exc:
        return Skipped(exc.reason, exc.detail)
    except RecursionError:
        return Skipped("too_complex", "nested too deeply")
    except Exception as exc:  # a parser surprise costs one statement, never the detector
        return Skipped("error", f"{type(exc).__name__}: {exc}")


def _names(values: Sequence[object] | None) -> tuple[str, ...]:
    """The svals of a list of String nodes (operator names, USING columns)."""
    return tuple(v.sval or "" for v in values or () if isinstance(v, ast.String))


def _bare(node: object) -> Column | None:
    """A plain column reference (no cast, no function, no ``*``), as its fields."""
    if not isinstance(node, ast.ColumnRef) or not node.fields:
        return None
    if not all(isinstance(f, ast.String) for f in node.fields):
        return None
    return _names(node.fields)


def _walk(value: object) -> Iterator[ast.Node]:
    """Every node under ``value`` (itself included), not descending into sub-selects."""
    stack: list[object] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, tuple | list):
            stack.extend(reversed(item))
            continue
        if not isinstance(item, ast.Node):
            continue
        yield item
        if isinstance(item, ast.SubLink | ast.SelectStmt):
            continue
        fields: Iterable[str] = getattr(type(item), "__slots__", ())
        stack.extend(getattr(item, name) for name in reversed(tuple(fields)))


def _columns(node: object) -> tuple[Column, ...]:
    """Column references in an expression (not inside its sub-selects)."""
    found = (_bare(n) for n in _walk(node) if isinstance(n, ast.ColumnRef))
    return tuple(c for c in found if c is not None)


def _side(column: Column, kind: Kind, other: object) -> Condition:
    others = _columns(other)
    return Condition(column, kind, others, joined=bool(others))


def _binary(left: object, right: object, kind: Kind) -> list[Condition]:
    """``left op right``: a condition for each side that is a plain column; row
    comparisons ``(a, b) = ($1, $2)`` pair up element by element."""
    if (kind == "eq" and isinstance(left, ast.RowExpr) and isinstance(right, ast.RowExpr)
            and len(left.args or ()) == len(right.args or ())):
        pairs = zip(left.args or (), right.args or (), strict=True)
        return [c for a, b in pairs for c in _binary(a, b, kind)]
    out = []
    for column, other in ((_bare(left), right), (_bare(right), left)):
        if column is not None:
            out.append(_side(column, kind, other))
    return out


def _a_expr(expr: ast.A_Expr) -> list[Condition]:
    op = _names(expr.name)[-1:] or ("",)
    kind, name = expr.kind, op[0]
    if kind == _K.AEXPR_OP and (name == "=" or name in _RANGE_OPS):
        return _binary(expr.lexpr, expr.rexpr, "eq" if name == "=" else "range")
    column = _bare(expr.lexpr)
    if column is None:
        return []
    if (kind in (_K.AEXPR_OP_ANY, _K.AEXPR_IN) and name == "=") or kind in (
            _K.AEXPR_BETWEEN, _K.AEXPR_BETWEEN_SYM):
        return [_side(column, "eq" if name == "=" else "range", expr.rexpr)]
    return []


def conditions_of(expr: object) -> list[Condition]:
    """The usable predicates of one conjunct (not looking under OR/NOT)."""
    if isinstance(expr, ast.A_Expr):
        return _a_expr(expr)
    if isinstance(expr, ast.SubLink) and expr.subLinkType == enums.SubLinkType.ANY_SUBLINK:
        column = _bare(expr.testexpr)
        if column is not None and _names(expr.operName) in ((), ("=",)):
            return [Condition(column, "eq", (), joined=True)]
    return []


def _aggregated(select: ast.SelectStmt) -> bool:
    for node in _walk(select.targetList):
        if isinstance(node, ast.FuncCall) and node.over is None and (
                node.agg_star or node.agg_distinct or node.agg_filter is not None
                or node.agg_order or (_names(node.funcname)[-1:] or ("",))[0] in AGGREGATES):
            return True
    return False


def rows_match(select: ast.SelectStmt) -> bool:
    """True when a SELECT's rows are the rows its predicates matched."""
    return select.limitCount is None and rows_match_but_limit(select)


def top_n_order(select: ast.SelectStmt) -> Column | None:
    """The first ORDER BY key of a ``... ORDER BY col [ASC|DESC] LIMIT n`` level when it is
    a plain column (an index ending with it reads only the first n rows), else None. Not
    for set operations, GROUP BY, DISTINCT or aggregates (the order is of the result)."""
    limit = select.limitCount
    if limit is None or (isinstance(limit, ast.A_Const) and limit.isnull):  # LIMIT ALL
        return None
    if not select.sortClause or not rows_match_but_limit(select):
        return None
    first = select.sortClause[0]
    if not isinstance(first, ast.SortBy) or first.useOp:
        return None
    return _bare(first.node)


def rows_match_but_limit(select: ast.SelectStmt) -> bool:
    """True when the level reads rows one by one (no set operation, GROUP BY, DISTINCT,
    HAVING or aggregate), whatever its LIMIT."""
    return not (select.op not in (None, _SETOP_NONE) or select.groupClause
                or select.distinctClause or select.havingClause is not None
                or _aggregated(select))


class _Builder:
    """Collects the query levels of one statement."""

    def __init__(self) -> None:
        self.levels: list[tuple[int | None, list[Source], list[Condition]]] = []
        self.count = 0

    def freeze(self) -> tuple[Level, ...]:
        return tuple(Level(p, tuple(s), tuple(c)) for p, s, c in self.levels)

    def level(self, parent: int | None) -> int:
        if len(self.levels) >= MAX_LEVELS:
            raise _Unusable("too_complex", f"more than {MAX_LEVELS} query levels")
        self.levels.append((parent, [], []))
        return len(self.levels) - 1

    def add(self, level: int, condition: Condition) -> None:
        self.count += 1
        if self.count > MAX_CONDITIONS:
            raise _Unusable("too_complex", f"more than {MAX_CONDITIONS} predicates")
        self.levels[level][2].append(condition)

    # -- statements

    def statement(self, node: ast.Node) -> tuple[str, bool]:
        if isinstance(node, ast.SelectStmt):
            self.select(node, None, frozenset())
            return "select", rows_match(node)
        if isinstance(node, ast.InsertStmt):
            ctes = self.with_clause(node.withClause, None, frozenset())
            select = node.selectStmt
            if isinstance(select, ast.SelectStmt):
                self.select(select, None, ctes)
            return "insert", isinstance(select, ast.SelectStmt) and rows_match(select)
        if isinstance(node, ast.UpdateStmt | ast.DeleteStmt):
            ctes = self.with_clause(node.withClause, None, frozenset())
            level = self.level(None)
            self.from_item(node.relation, level, ctes)
            extra = node.fromClause if isinstance(node, ast.UpdateStmt) else node.usingClause
            for item in extra or ():
                self.from_item(item, level, ctes)
            self.where(node.whereClause, level, ctes)
            if isinstance(node, ast.UpdateStmt):
                self.sublinks(node.targetList, level, ctes)
            return ("update" if isinstance(node, ast.UpdateStmt) else "delete"), True
        if isinstance(node, ast.MergeStmt):
            ctes = self.with_clause(node.withClause, None, frozenset())
            level = self.level(None)
            self.from_item(node.relation, level, ctes)
            self.from_item(node.sourceRelation, level, ctes)
            self.where(node.joinCondition, level, ctes)
            return "merge", False
        raise _Unusable("utility", f"{type(node).__name__} is not a query")

    def with_clause(self, clause: ast.WithClause | None, parent: int | None,
                    ctes: frozenset[str]) -> frozenset[str]:
        if clause is None:
            return ctes
        names = ctes | {c.ctename for c in clause.ctes or ()
                        if isinstance(c, ast.CommonTableExpr) and c.ctename}
        for cte in clause.ctes or ():
            if isinstance(cte, ast.CommonTableExpr):
                self.query(cte.ctequery, parent, names)
        return names

    def query(self, node: object, parent: int | None, ctes: frozenset[str]) -> None:
        """A nested query: a sub-select, or DML inside a CTE."""
        if isinstance(node, ast.SelectStmt):
            self.select(node, parent, ctes)
        elif isinstance(node, ast.InsertStmt | ast.UpdateStmt | ast.DeleteStmt):
            # Data-modifying CTEs: analysed like a statement of their own.
            nested = _Builder()
            nested.count = self.count
            nested.statement(node)
            offset = len(self.levels)
            for p, s, c in nested.levels:
                self.levels.append((parent if p is None else p + offset, s, c))
            self.count = nested.count
            if len(self.levels) > MAX_LEVELS:
                raise _Unusable("too_complex", f"more than {MAX_LEVELS} query levels")

    def select(self, node: ast.SelectStmt, parent: int | None, ctes: frozenset[str]) -> None:
        ctes = self.with_clause(node.withClause, parent, ctes)
        if node.op not in (None, _SETOP_NONE):
            for arm in (node.larg, node.rarg):
                if arm is not None:
                    self.select(arm, parent, ctes)
            return
        level = self.level(parent)
        for item in node.fromClause or ():
            self.from_item(item, level, ctes)
        self.where(node.whereClause, level, ctes)
        order = top_n_order(node)
        if order is not None and len(self.levels[level][1]) == 1:
            self.add(level, Condition(order, "order"))
        for part in (node.targetList, node.havingClause, node.valuesLists, node.sortClause,
                     node.groupClause, node.limitCount, node.limitOffset):
            self.sublinks(part, level, ctes)

    # -- FROM

    def source(self, level: int, source: Source) -> list[Source]:
        self.levels[level][1].append(source)
        return [source]

    def from_item(self, item: object, level: int, ctes: frozenset[str]) -> list[Source]:
        """Add a FROM item's sources (and its join predicates) to ``level``."""
        if isinstance(item, ast.RangeVar):
            alias = item.alias.aliasname if item.alias is not None else None
            name = item.relname or ""
            derived = item.schemaname is None and name in ctes
            return self.source(level, Source(alias or name, None if derived else item.schemaname,
                                             None if derived else name, alias is not None))
        if isinstance(item, ast.JoinExpr):
            left = self.from_item(item.larg, level, ctes)
            right = self.from_item(item.rarg, level, ctes)
            self.where(item.quals, level, ctes, filters=item.jointype == _INNER)
            if len(left) == 1 and len(right) == 1:
                for name in _names(item.usingClause):
                    for side in (left[0], right[0]):
                        self.add(level, Condition((side.visible, name), "eq", (), joined=True))
            return left + right
        if isinstance(item, ast.RangeSubselect):
            alias = item.alias.aliasname if item.alias is not None else None
            self.query(item.subquery, level, ctes)
            return self.source(level, Source(alias or "", None, None, True))
        alias_node = getattr(item, "alias", None)
        alias = alias_node.aliasname if isinstance(alias_node, ast.Alias) else None
        self.sublinks(item, level, ctes)
        return self.source(level, Source(alias or "", None, None, True))

    # -- predicates

    def where(self, expr: object, level: int, ctes: frozenset[str], filters: bool = True
              ) -> None:
        """The conjuncts of a WHERE or ON; ``filters`` False (outer joins) keeps only the
        join predicates, since a filter in an outer join's ON filters nothing."""
        if expr is None:
            return
        if isinstance(expr, ast.BoolExpr) and expr.boolop == _AND:
            for arg in expr.args or ():
                self.where(arg, level, ctes, filters)
            return
        for condition in conditions_of(expr):
            if filters or condition.joined:
                self.add(level, condition)
        self.sublinks(expr, level, ctes)

    def sublinks(self, expr: object, level: int, ctes: frozenset[str]) -> None:
        """Sub-selects anywhere in an expression become child levels of ``level``."""
        for node in _walk(expr):
            if isinstance(node, ast.SubLink):
                self.query(node.subselect, level, ctes)
                self.sublinks(node.testexpr, level, ctes)
            elif isinstance(node, ast.SelectStmt) and node is not expr:
                self.select(node, level, ctes)


# ---- names


@dataclasses.dataclass(frozen=True)
class Table:
    """A catalog relation and its columns."""

    relid: int
    schema: str
    name: str
    relkind: str
    columns: Mapping[str, int]
    """Column name -> attnum."""


class Names:
    """The catalog by name, for resolving parsed references (see the module docstring for
    the search_path assumption)."""

    def __init__(self, catalog: snapshot_pb2.Catalog) -> None:
        columns: dict[int, dict[str, int]] = collections.defaultdict(dict)
        for c in catalog.columns:
            columns[c.relid][c.name] = c.attnum
        self.tables = {r.relid: Table(r.relid, r.schema, r.name, r.relkind, columns[r.relid])
                       for r in catalog.relations}
        self.qualified = {(t.schema, t.name): t for t in self.tables.values()}
        self.unqualified: dict[str, list[Table]] = collections.defaultdict(list)
        for t in sorted(self.tables.values(), key=lambda t: (t.schema, t.name)):
            self.unqualified[t.name].append(t)

    def relation(self, schema: str | None, name: str) -> Table | None:
        """The relation a (possibly unqualified) name refers to, or None."""
        if schema is not None:
            return self.qualified.get((schema, name))
        if name.startswith("pg_"):
            return None  # pg_catalog comes first in every search_path
        found = self.unqualified.get(name, [])
        if len(found) == 1:
            return found[0]
        return next((t for t in found if t.schema == "public"), None)


_names_cache: collections.OrderedDict[str, Names] = collections.OrderedDict()


def names_of(catalog: snapshot_pb2.Catalog) -> Names:
    """:class:`Names` of a catalog, cached by its content hash (equal hash, equal content)."""
    cached = _names_cache.get(catalog.hash) if catalog.hash else None
    if cached is not None:
        _names_cache.move_to_end(catalog.hash)
        return cached
    names = Names(catalog)
    if catalog.hash:
        _names_cache[catalog.hash] = names
        while len(_names_cache) > 4:
            _names_cache.popitem(last=False)
    return names


@dataclasses.dataclass
class Use:
    """One use of a catalog table in a statement and the columns its predicates name, in
    order of appearance."""

    table: Table
    equal: list[str] = dataclasses.field(default_factory=list)
    ranges: list[str] = dataclasses.field(default_factory=list)
    joins: list[str] = dataclasses.field(default_factory=list)
    order: list[str] = dataclasses.field(default_factory=list)
    """The first key of ``ORDER BY ... LIMIT`` (one level, one FROM item)."""

    def note(self, column: str, kind: Kind, joined: bool) -> None:
        if joined:
            bucket = self.joins if kind == "eq" else None
        elif kind == "order":
            bucket = self.order
        else:
            bucket = self.equal if kind == "eq" else self.ranges
        if bucket is not None and column not in bucket:
            bucket.append(column)


_Place = tuple[int, int]
"""(level, source index) of a resolved FROM item."""


class _Elsewhere:
    """Not in this query level: look in the enclosing one."""


_ELSEWHERE: Final = _Elsewhere()


class _Resolver:
    def __init__(self, parsed: Parsed, names: Names) -> None:
        self.parsed = parsed
        self.tables = [[names.relation(s.schema, s.relname) if s.relname is not None else None
                        for s in level.sources] for level in parsed.levels]

    def column(self, level: int | None, ref: Column) -> tuple[_Place, str] | None:
        """Where a column reference points: its FROM item and column name, or None when it
        is a derived item's, unknown, or ambiguous."""
        name, qualifier = ref[-1], ref[:-1]
        while level is not None:
            found = self._here(level, qualifier, name)
            if not isinstance(found, _Elsewhere):
                return None if found is None else ((level, found), name)
            level = self.parsed.levels[level].parent
        return None

    def _here(self, level: int, qualifier: Column, name: str) -> int | _Elsewhere | None:
        """The FROM item of ``level`` a column belongs to; None when it cannot be told
        (ambiguous, or maybe a derived item's); ELSEWHERE when not in this level."""
        sources, tables = self.parsed.levels[level].sources, self.tables[level]
        if not qualifier:
            having = [i for i, t in enumerate(tables) if t is not None and name in t.columns]
            if len(having) == 1:
                return having[0]
            if having or any(t is None for t in tables):
                return None  # ambiguous, or maybe a column of a derived/unknown item
            return _ELSEWHERE
        rel, schema = qualifier[-1], qualifier[-2] if len(qualifier) >= 2 else None
        for i, source in enumerate(sources):
            table = tables[i]
            if source.visible != rel or (schema is not None and (
                    source.aliased or table is None or table.schema != schema)):
                continue
            return i if table is not None and name in table.columns else None
        return _ELSEWHERE




def uses(parsed: Parsed, names: Names) -> list[Use]:
    """The catalog tables a parsed statement uses, with the columns of their usable
    predicates. A predicate comparing a table with itself (``t.a = t.b``) serves nothing."""
    resolver = _Resolver(parsed, names)
    found: dict[_Place, Use] = {}
    for index, level in enumerate(parsed.levels):
        for condition in level.conditions:
            where = resolver.column(index, condition.column)
            if where is None:
                continue
            place, column = where
            others = [resolver.column(index, o) for o in condition.others]
            if any(o is not None and o[0] == place for o in others):
                continue
            table = resolver.tables[place[0]][place[1]]
            assert table is not None  # resolved places are catalog tables
            use = found.setdefault(place, Use(table))
            use.note(column, condition.kind, condition.joined)
    return list(found.values())


# ---- candidates


@dataclasses.dataclass(frozen=True)
class Candidate:
    """An index a statement's use of a table could use: equality columns (order of
    appearance), then at most one range column or, without one, the ``ORDER BY ... LIMIT``
    column (``WHERE a = $1 ORDER BY b DESC LIMIT 20``: ``(a, b)`` reads 20 rows)."""

    table: Table
    equal: tuple[str, ...]
    range: str | None
    join: bool
    order: str | None = None

    def columns(self, rank: Callable[[str], float] | None = None) -> tuple[str, ...]:
        """The index key: equality columns first, ordered by ``rank`` (higher first; ties by
        order of appearance), then the range column, else the order column; at most
        :data:`MAX_WIDTH`."""
        return self._key(self.range or self.order, rank)

    def alternatives(self, rank: Callable[[str], float] | None = None
                     ) -> tuple[tuple[str, ...], ...]:
        """Other keys the statement could use: with a range and a different order column,
        the one ending with the order column (the executor's HypoPG costs tell)."""
        if self.range and self.order and self.order != self.range:
            other = self._key(self.order, rank)
            return (other,) if other != self.columns(rank) else ()
        return ()

    def _key(self, last: str | None, rank: Callable[[str], float] | None
             ) -> tuple[str, ...]:
        order = {c: n for n, c in enumerate(self.equal)}
        equal = sorted(self.equal, key=lambda c: (-(rank(c) if rank else 0.0), order[c]))
        return (*equal, *((last,) if last else ()))[:MAX_WIDTH]

    @property
    def limited(self) -> bool:
        """The key ends with the ORDER BY ... LIMIT column: an index scan stops after LIMIT
        rows, so the equality columns' selectivity does not bound the saving."""
        key = self.columns()
        return self.order is not None and self.range in (None, self.order) and (
            key[-1] == self.order)

    @property
    def predicate(self) -> str:
        """join, equality, equality+range, range, equality+order or order (evidence)."""
        if self.join:
            return "join"
        last = "range" if self.range else ("order" if self.order else None)
        if self.equal and last and len(self.equal) < MAX_WIDTH:
            return f"equality+{last}"
        return "equality" if self.equal else (last or "range")


def candidates(use: Use) -> list[Candidate]:
    """The filter candidate and the join candidate of one use (either may be absent)."""
    out = []
    if use.equal or use.ranges or use.order:
        rng = next((c for c in use.ranges if c not in use.equal), None)
        order = next((c for c in use.order if c not in use.equal), None)
        out.append(Candidate(use.table, tuple(use.equal), rng, join=False, order=order))
    joins = tuple(c for c in use.joins if c not in use.equal)
    if joins:
        out.append(Candidate(use.table, joins, None, join=True))
    return out
