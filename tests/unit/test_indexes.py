"""Index actions without a database: names, plans, windows and the keep-or-revert decision."""

from __future__ import annotations

import dataclasses
import re

import pytest

from startupmonkey.executor import index_precheck, index_verify, indexes, outcome
from startupmonkey.models.enums import ActionId, RemediationState

HASHED = re.compile(r"^sm_(.*_)?[0-9a-f]{8}$")


@pytest.mark.parametrize(("schema", "table", "columns"), [
    ("public", "orders", ["customer_id"]),
    ("Shop Floor", 'Order "Items"; DROP TABLE x', ["Customer Id"]),
    ("s", "t" * 63, ["c" * 63, "d" * 63]),
    ("s", "é" * 31, ["ü" * 31]),
    ("s", "注文明細" * 5, ["顧客番号" * 5]),
    ("s", "🐒" * 15, ["🍌" * 15]),
    ("s", "e\u0301" * 21, ["x"]),
])
def test_names_are_short_deterministic_and_valid_utf8(schema: str, table: str,
                                                      columns: list[str]) -> None:
    name = indexes.index_name(schema, table, columns)
    assert name == indexes.index_name(schema, table, list(columns))
    assert len(name.encode()) <= 63
    assert name.encode().decode() == name
    assert HASHED.match(name), name
    assert name == name.lower() and not re.search(r"[\s\";]", name)


def test_readable_names() -> None:
    assert indexes.index_name("public", "orders", ["customer_id"]) == \
        "sm_orders_customer_id_c76c7603"
    hostile = indexes.index_name("Shop Floor", 'Order "Items"; DROP TABLE x', ["Customer Id"])
    assert hostile.startswith("sm_order_items_drop_table_x_customer_id_")


def test_names_differ_by_everything_they_are_made_of() -> None:
    names = {indexes.index_name("a", "t", ["c"]), indexes.index_name("b", "t", ["c"]),
             indexes.index_name("a", "T", ["c"]), indexes.index_name("a", "t", ["c", "d"]),
             indexes.index_name("a", "t", ["d", "c"]), indexes.index_name("a", "t_c", []),
             indexes.index_name("a", "t", ["c_d"]), indexes.index_name("a", "t" * 70, ["c"]),
             indexes.index_name("a", "t" * 71, ["c"])}
    assert len(names) == 9


@pytest.mark.parametrize(("columns", "message"), [
    ((), "1 to 32 columns"),
    (tuple(f"c{i}" for i in range(33)), "1 to 32 columns"),
    (("x" * 64,), "not a PostgreSQL identifier"),
    (("é" * 32,), "not a PostgreSQL identifier"),
    (("a\x00b",), "not a PostgreSQL identifier"),
    (("",), "not a PostgreSQL identifier"),
])
def test_targets_refuse_what_postgresql_would_truncate_or_reject(
        columns: tuple[str, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        indexes.IndexTarget("public", "orders", columns)


def test_create_plan_quotes_everything_and_rolls_back_the_same_name() -> None:
    step = indexes.plan_create_index("Shop Floor", 'Order "Items"; DROP TABLE x',
                                     ["Customer Id", "status"])
    name = indexes.index_name("Shop Floor", 'Order "Items"; DROP TABLE x',
                              ["Customer Id", "status"])
    assert step.action is ActionId.CREATE_INDEX
    assert step.sql == (f'CREATE INDEX CONCURRENTLY "{name}" ON "Shop Floor".'
                        '"Order ""Items""; DROP TABLE x" USING btree ("Customer Id", "status")')
    assert step.rollback_sql == f'DROP INDEX CONCURRENTLY IF EXISTS "Shop Floor"."{name}"'
    target = indexes.IndexTarget("Shop Floor", 'Order "Items"; DROP TABLE x',
                                 ("Customer Id", "status"))
    assert indexes.plan_for(target) == step
    assert len(step.sql_hash) == 64


def test_an_explicit_name_is_used() -> None:
    step = indexes.plan_create_index("public", "orders", ["v"], name="orders_v_idx")
    assert step.sql.startswith('CREATE INDEX CONCURRENTLY "orders_v_idx" ON')


def test_repair_plans() -> None:
    drop_invalid = indexes.plan_drop_invalid_index("public", "Bad Index")
    assert drop_invalid.action is ActionId.DROP_INVALID_INDEX
    assert drop_invalid.sql == 'DROP INDEX CONCURRENTLY IF EXISTS "public"."Bad Index"'
    assert drop_invalid.rollback_sql is None
    reindex = indexes.plan_reindex("public", "i")
    assert (reindex.action, reindex.sql) == (ActionId.REINDEX,
                                             'REINDEX INDEX CONCURRENTLY "public"."i"')
    drop = indexes.plan_drop_index("public", "i", "CREATE INDEX i ON public.t USING btree (v)")
    assert drop.action is ActionId.DROP_INDEX
    assert drop.sql == 'DROP INDEX CONCURRENTLY "public"."i"'
    assert drop.rollback_sql == "CREATE INDEX CONCURRENTLY i ON public.t USING btree (v)"
    assert indexes.plan_drop_index("public", "i").rollback_sql is None


def test_concurrent_definitions() -> None:
    assert indexes.concurrent_definition("CREATE UNIQUE INDEX u ON public.t USING btree (v)") \
        == "CREATE UNIQUE INDEX CONCURRENTLY u ON public.t USING btree (v)"
    for bad in ("DROP TABLE t", "CREATE INDEX CONCURRENTLY i ON t (v)"):
        with pytest.raises(ValueError, match="not an index definition"):
            indexes.concurrent_definition(bad)


def test_backoff_doubles_up_to_an_hour() -> None:
    assert [outcome.backoff(n) for n in (1, 2, 3, 4)] == [30.0, 60.0, 120.0, 240.0]
    assert outcome.backoff(20) == 3600.0


def test_index_outcome_is_an_outcome_with_a_retry() -> None:
    result = indexes.IndexOutcome(RemediationState.FAILED, "lock timeout", retry_after=30.0)
    assert result.retry_after == 30.0 and result.leftovers == [] and result.before == {}


@pytest.mark.parametrize(("statement", "why"), [
    ("SELECT * FROM t WHERE v = $1", None),
    ("UPDATE t SET a = $1 WHERE v = $2", None),
    ("DELETE FROM t WHERE v = $1", None),
    ("INSERT INTO t SELECT * FROM u WHERE v = $1", None),
    ('SELECT * FROM "a;b" WHERE "c;" = $1', None),
    ("SELECT 1; DROP TABLE t", "is 2 statements, not one"),
    ("DROP TABLE t", "is a DropStmt"),
    ("SELECT * INTO u FROM t", "is SELECT INTO"),
    ("SELEC 1", "does not parse"),
])
def test_only_single_plannable_statements_are_prepared(statement: str, why: str | None) -> None:
    found = index_precheck.plannable(statement)
    assert (found is None) if why is None else (found is not None and why in found)


def test_precheck_numbers() -> None:
    result = index_precheck.PrecheckResult(
        False, "rejected", (index_precheck.StatementCost("q", 100.0, 80.0),),
        cost_before=100.0, cost_after=80.0, estimated_bytes=8192, existing_indexes=1,
        min_cost_reduction=0.5)
    assert result.cost_reduction == pytest.approx(0.2)
    outcome = result.rejected()
    assert outcome.state is RemediationState.REJECTED and outcome.message == "rejected"
    assert outcome.before == {"cost_before": 100.0, "cost_after": 80.0,
                              "cost_reduction": pytest.approx(0.2),
                              "estimated_index_bytes": 8192.0, "existing_indexes": 1.0,
                              "statements_planned": 1.0, "statements_using_index": 0.0,
                              "min_cost_reduction": 0.5}
    assert index_precheck.PrecheckResult(False, "x").cost_reduction is None


def _sample(at: float, counters: dict[str, tuple[int, float]],
            reset: float | None = 1.0) -> index_verify.Sample:
    return index_verify.Sample(at, reset, {q: c for q, (c, _) in counters.items()},
                               {q: t for q, (_, t) in counters.items()})


def test_a_window_is_the_difference_of_two_samples() -> None:
    start = _sample(100.0, {"1": (10, 100.0), "2": (5, 50.0)})
    end = _sample(110.0, {"1": (30, 300.0), "2": (5, 50.0), "3": (4, 8.0)})
    measured = index_verify.window(start, end)
    assert (measured.seconds, measured.calls, measured.total_ms) == (10.0, 24, 208.0)
    assert not measured.reset
    assert measured.per_query == {"1": (20, 200.0), "2": (0, 0.0), "3": (4, 8.0)}
    assert measured.mean_ms == pytest.approx(208.0 / 24)


def test_counters_that_went_backwards_count_from_zero() -> None:
    start = _sample(0.0, {"1": (100, 1000.0), "2": (50, 500.0)})
    one_reset = _sample(5.0, {"1": (3, 6.0), "2": (60, 600.0)})
    measured = index_verify.window(start, one_reset)
    assert measured.reset and measured.per_query == {"1": (3, 6.0), "2": (10, 100.0)}
    full = _sample(5.0, {"1": (200, 2000.0), "2": (70, 700.0)}, reset=2.0)
    assert index_verify.window(start, full).per_query == {"1": (200, 2000.0), "2": (70, 700.0)}
    assert index_verify.window(start, full).reset
    evicted = index_verify.window(start, _sample(5.0, {"2": (50, 500.0)}))
    assert evicted.reset and evicted.calls == 0


def test_samples_round_trip_through_a_status_map() -> None:
    start = _sample(12.5, {"-42": (7, 3.5), "9": (1, 0.25)}, reset=None)
    values = start.as_status("before.")
    assert values["before.calls.-42"] == 7.0
    assert index_verify.Sample.from_status(values, "before.") == start
    assert index_verify.Sample.from_status({}, "before.") is None
    started = dataclasses.replace(start, server_started=1_700_000_000.5)
    assert index_verify.Sample.from_status(started.as_status("v."), "v.") == started


def test_a_window_spans_a_restart_only_when_both_ends_say_when_the_server_started() -> None:
    start = dataclasses.replace(_sample(1.0, {"1": (5, 5.0)}), server_started=100.0)
    same = dataclasses.replace(_sample(9.0, {"1": (9, 9.0)}), server_started=100.0)
    again = dataclasses.replace(_sample(9.0, {"1": (2, 2.0)}), server_started=105.0)
    unknown = _sample(9.0, {"1": (9, 9.0)})  # a window begun by an older executor
    assert not index_verify.restarted(start, same)
    assert index_verify.restarted(start, again)
    assert not index_verify.restarted(unknown, again)
    assert not index_verify.restarted(start, unknown)


def _window(calls: int, mean_ms: float) -> index_verify.Window:
    return index_verify.Window(seconds=60.0, calls=calls, total_ms=calls * mean_ms)


def test_decide_keeps_a_faster_index() -> None:
    decision = index_verify.decide(_window(100, 10.0), _window(80, 1.0), 20, 0.1)
    assert decision.keep and decision.improvement == pytest.approx(0.9)
    assert (decision.before_mean_ms, decision.after_mean_ms) == (10.0, 1.0)
    assert (decision.before_calls, decision.after_calls) == (100, 80)
    assert decision.reason.startswith("keep: mean 10.000 ms -> 1.000 ms per call (90.0% faster")


@pytest.mark.parametrize(("after_mean", "keep"), [(9.5, False), (9.0, True), (12.0, False)])
def test_decide_reverts_below_the_margin(after_mean: float, keep: bool) -> None:
    decision = index_verify.decide(_window(100, 10.0), _window(100, after_mean), 20, 0.1)
    assert decision.keep is keep
    assert decision.reason.startswith("keep" if keep else "revert")


@pytest.mark.parametrize(("before_calls", "after_calls"), [(5, 100), (100, 19), (0, 0)])
def test_decide_keeps_unverified_without_enough_calls(before_calls: int,
                                                      after_calls: int) -> None:
    decision = index_verify.decide(_window(before_calls, 10.0), _window(after_calls, 50.0),
                                   20, 0.1)
    assert decision.keep and decision.reason.startswith("unverified, kept")
    assert decision.improvement is None


def test_decide_without_a_before_time_keeps_unverified() -> None:
    decision = index_verify.decide(_window(100, 0.0), _window(100, 1.0), 20, 0.1)
    assert decision.keep and "no measurable time" in decision.reason


def test_decision_numbers() -> None:
    decision = index_verify.decide(_window(100, 10.0), _window(100, 12.0), 20, 0.1)
    numbers = index_verify.decision_numbers(decision)
    assert numbers["kept"] == 0.0 and numbers["improvement"] == pytest.approx(-0.2)
    assert numbers["before_calls"] == 100.0
