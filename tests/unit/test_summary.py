"""What a Remediation changed, in words (issue 21.3): one sentence per action kind with units
and thousands separators, the time saved per hour only where it was measured, unknown keys
shown rather than dropped, and never an exception whatever the numbers hold."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from startupmonkey import summary
from startupmonkey.models.enums import ActionId, RemediationState
from startupmonkey.models.remediation import Decision, RemediationStatus

SUCCEEDED = RemediationState.SUCCEEDED


def _said(action: ActionId | str, state: RemediationState = SUCCEEDED, *,
          before: dict[str, float] | None = None, after: dict[str, float] | None = None,
          decision: Decision | None = None, executed: int = 1) -> summary.Summary:
    return summary.describe(action, RemediationStatus(
        state=state, before=before or {}, after=after or {}, decision=decision,
        executed_sql=["SELECT 1"] * executed))


def _decision(keep: bool = True, **numbers: float | None) -> Decision:
    values: dict[str, float | None] = {"before_mean_ms": 11.7, "after_mean_ms": 0.07,
                                       "before_calls": 320, "after_calls": 404,
                                       "improvement": 1 - 0.07 / 11.7}
    values.update(numbers)
    return Decision.model_validate({"keep": keep, "reason": "r", **{
        k: v for k, v in values.items() if v is not None}})


@pytest.mark.parametrize(("value", "text"), [
    (0.07, "0.07 ms"), (0.0049, "0.0049 ms"), (0.00001, "0.000 ms"), (11.7, "11.7 ms"),
    (123.4, "123 ms"), (2300, "2.3 s"), (250_000, "4.2 min"), (9_000_000, "2.5 h"),
    (-5, "-5 ms"), (math.nan, "unknown"), (math.inf, "infinite")])
def test_durations_carry_their_unit(value: float, text: str) -> None:
    assert summary.duration_ms(value) == text


@pytest.mark.parametrize(("value", "text"), [
    (512, "512 bytes"), (8192, "8.0 kB"), (12 * 1024 ** 2 + 1, "12 MB"), (1, "1 byte"),
    (1048575, "1.0 MB"), (1023, "1,023 bytes"),
    (1.5 * 1024 ** 3, "1.5 GB"), (3 * 1024 ** 5, "3,072 TB")])
def test_sizes_read_in_1024_based_units(value: float, text: str) -> None:
    assert summary.size(value) == text


def test_counts_have_thousands_separators() -> None:
    assert summary.count(50_000) == "50,000"
    assert summary.count(8120.4) == "8,120"
    assert summary.count(1e20) == "1e+20"


def test_vacuum_says_how_many_dead_rows_went() -> None:
    said = _said(ActionId.VACUUM, before={"n_dead_tup": 50_000, "n_live_tup": 100_000,
                                          "vacuum_count": 0},
                 after={"n_dead_tup": 0, "n_live_tup": 100_000, "vacuum_count": 1,
                        "dead_removed": 50_000, "dead_not_removable": 0})
    assert said == summary.Summary("50,000 dead rows removed (100,000 live rows)", "")


def test_vacuum_names_the_table_size_when_it_was_measured() -> None:
    said = _said(ActionId.VACUUM, before={"table_bytes": 12 * 1024 ** 2},
                 after={"dead_removed": 50_000})
    assert said.text == "50,000 dead rows removed (12 MB table)"


def test_a_blocked_vacuum_says_what_could_not_be_removed() -> None:
    said = _said(ActionId.VACUUM, RemediationState.FAILED, before={"n_live_tup": 10},
                 after={"dead_removed": 100, "dead_not_removable": 9_900})
    assert said.text.startswith("100 dead rows removed, 9,900 not removable yet")


def test_a_rejected_vacuum_says_nothing_ran_and_what_was_measured() -> None:
    said = _said(ActionId.VACUUM, RemediationState.REJECTED, executed=0,
                 before={"n_dead_tup": 500, "n_live_tup": 100_000, "trigger": 20_050})
    assert said.text == "nothing ran: 500 dead rows beside 100,000 live"


def test_analyze_says_how_many_changed_rows_it_caught_up_with() -> None:
    said = _said(ActionId.ANALYZE, before={"n_mod_since_analyze": 8120, "analyze_count": 1},
                 after={"n_mod_since_analyze": 0, "analyze_count": 2})
    assert said.text == "statistics refreshed after 8,120 changed rows"
    stuck = _said(ActionId.ANALYZE, RemediationState.FAILED,
                  before={"n_mod_since_analyze": 8120, "analyze_count": 1},
                  after={"n_mod_since_analyze": 8120, "analyze_count": 1})
    assert stuck.text == "statistics not refreshed: 8,120 changed rows"


def test_a_kept_index_shows_the_time_per_call_and_the_time_saved_per_hour() -> None:
    said = _said(ActionId.CREATE_INDEX, decision=_decision(),
                 after={"index_bytes": 2.2e6, "after_window_seconds": 20.0,
                        "verify_start.calls.42": 7, "after_window_calls": 404})
    assert said.text == "11.7 ms -> 0.07 ms per call over 320 / 404 calls; index 2.1 MB"
    # (11.7 - 0.07) ms x 404 calls / 20 s x 3600 s/h = 845,744 ms: 14.1 min per hour.
    assert said.benefit == "14.1 min saved per hour (72,720 calls/h)"


@pytest.mark.parametrize(("why", "state", "decision", "after"), [
    ("no after window length", SUCCEEDED, _decision(), {}),
    ("reverted", RemediationState.ROLLED_BACK, _decision(keep=False),
     {"after_window_seconds": 20.0}),
    ("rolled back on request", RemediationState.ROLLED_BACK, _decision(),
     {"after_window_seconds": 20.0}),
    ("not faster", SUCCEEDED, _decision(after_mean_ms=12.0), {"after_window_seconds": 20.0}),
    ("no time before", SUCCEEDED, _decision(before_mean_ms=None),
     {"after_window_seconds": 20.0}),
    ("no calls after", SUCCEEDED, _decision(after_calls=0), {"after_window_seconds": 20.0}),
    ("NaN", SUCCEEDED, _decision(before_mean_ms=math.nan), {"after_window_seconds": 20.0}),
    ("kept unverified: too few calls to compare", SUCCEEDED, _decision(improvement=None),
     {"after_window_seconds": 20.0}),
])
def test_no_benefit_is_invented(why: str, state: RemediationState, decision: Decision,
                                after: dict[str, float]) -> None:
    assert _said(ActionId.CREATE_INDEX, state, decision=decision, after=after).benefit == "", why


def test_a_reverted_index_says_so() -> None:
    said = _said(ActionId.CREATE_INDEX, RemediationState.ROLLED_BACK,
                 decision=_decision(keep=False, after_mean_ms=11.5))
    assert said.text == "index dropped again: 11.7 ms -> 11.5 ms per call over 320 / 404 calls"


def test_an_index_being_verified_says_it_was_built() -> None:
    said = _said(ActionId.CREATE_INDEX, RemediationState.VERIFYING,
                 after={"index_bytes": 2.2e6, "build_seconds": 1.26})
    assert said.text == "index built (2.1 MB) in 1.3 s; verifying"


def test_a_refused_index_shows_the_planner_costs() -> None:
    said = _said(ActionId.CREATE_INDEX, RemediationState.REJECTED, executed=0,
                 before={"cost_before": 1234.5, "cost_after": 1200.0, "table_rows": 1e6})
    assert said.text == "nothing built: planner cost 1,234 -> 1,200 with the index"


def test_session_actions_say_what_was_cancelled_or_terminated() -> None:
    terminated = _said(ActionId.TERMINATE_SESSION,
                       before={"idle_seconds": 12.3, "transaction_seconds": 75},
                       after={"session_gone": 1.0})
    assert terminated.text == "terminated a session idle for 12.3 s in a transaction open " \
                              "for 75 s"
    at_once = _said(ActionId.TERMINATE_SESSION,
                    before={"idle_seconds": 11.62, "transaction_seconds": 11.64},
                    after={"session_gone": 1.0})
    assert at_once.text == "terminated a session idle in a transaction for 11.6 s"
    cancelled = _said(ActionId.CANCEL_QUERY, before={"query_seconds": 300},
                      after={"still_running": 0.0})
    assert cancelled.text == "cancelled a query running for 5 min"
    escalated = _said(ActionId.CANCEL_QUERY, before={"query_seconds": 300},
                      after={"still_running": 0.0}, executed=2)
    assert escalated.text.startswith("terminated the session of a query running for 5 min")
    root = _said(ActionId.TERMINATE_SESSION,
                 before={"blocked_sessions": 3, "longest_wait_seconds": 45,
                         "idle_seconds": 50, "transaction_seconds": 60},
                 after={"session_gone": 1.0, "blocked_sessions": 0})
    assert root.text.endswith("it held up 3 session(s), the longest waiting 45 s; "
                              "0 still blocked")


def test_index_drops_and_rebuilds_say_the_size() -> None:
    dropped = _said(ActionId.DROP_INDEX, before={"index_bytes": 819_200, "idx_scan": 0},
                    after={"dropped": 1.0})
    assert dropped.text == "index dropped, 800 kB freed (it had 0 scans)"
    rebuilt = _said(ActionId.REINDEX, before={"index_bytes": 8_192_000, "valid": 0},
                    after={"index_bytes": 4_915_200, "valid": 1.0})
    assert rebuilt.text == "index rebuilt, valid: 7.8 MB -> 4.7 MB"


def test_unknown_keys_are_shown_readably_not_dropped() -> None:
    said = _said(ActionId.VACUUM, before={"holder_xmin_age": 3, "new_thing_bytes": 12e6,
                                          "wait_seconds": 90},
                 after={"dead_removed": 10, "wait_seconds": 30, "odd": math.nan})
    assert said.text == ("10 dead rows removed; new thing bytes: 11 MB; "
                         "wait seconds: 90 s -> 30 s; odd: unknown")


def test_a_clean_failure_says_when_it_is_retried() -> None:
    said = _said(ActionId.VACUUM, RemediationState.APPROVED,
                 after={"retry_after_seconds": 30.0})
    assert said.text == "retry in 30 s"


def test_an_unknown_action_still_gets_its_numbers() -> None:
    said = _said("defragment", before={"pages": 1e6}, after={"pages": 2e5})
    assert said.text == "pages: 1,000,000 -> 200,000"


def test_a_long_sentence_is_cut() -> None:
    said = _said("defragment", before={f"key_number_{i}x": float(i) for i in range(200)})
    assert len(said.text) <= summary.MAX_SUMMARY and said.text.endswith("...")
    assert said.text.startswith("key number 0x: 0; key number 1x: 1; ")


def test_an_object_is_read_as_the_executor_wrote_it_or_described_anew() -> None:
    written = {"spec": {"action": "vacuum"},
               "status": {"state": "Succeeded", "summary": "as written", "benefit": ""}}
    assert summary.of_object(written) == summary.Summary("as written", "")
    older = {"spec": {"action": "vacuum"},
             "status": {"state": "Succeeded", "after": {"deadRemoved": 1, "dead_removed": 5}}}
    assert summary.of_object(older).text.startswith("5 dead rows removed")
    assert summary.of_object({"spec": "?", "status": {"state": "Nonsense"}}) == \
        summary.Summary()


NUMBERS = st.dictionaries(
    st.one_of(st.sampled_from(["n_dead_tup", "n_live_tup", "dead_removed", "dead_not_removable",
                               "n_mod_since_analyze", "analyze_count", "index_bytes",
                               "build_seconds", "valid", "dropped", "idx_scan",
                               "still_running", "session_gone", "query_seconds",
                               "idle_seconds", "transaction_seconds", "blocked_sessions",
                               "longest_wait_seconds", "after_window_seconds", "cost_before",
                               "cost_after", "retry_after_seconds", "table_bytes",
                               "builders_cancelled", "limit_seconds"]),
              st.text(max_size=30)),
    st.floats(allow_nan=True, allow_infinity=True) | st.integers(-10 ** 30, 10 ** 30).map(float),
    max_size=12)
OPTIONAL_FLOAT = st.none() | st.floats(allow_nan=True, allow_infinity=True)
OPTIONAL_INT = st.none() | st.integers(-10 ** 30, 10 ** 30)


@settings(max_examples=400, deadline=None)
@given(action=st.sampled_from(list(ActionId)) | st.text(max_size=20),
       state=st.sampled_from(list(RemediationState)), before=NUMBERS, after=NUMBERS,
       decision=st.none() | st.builds(
           Decision, keep=st.booleans(), reason=st.just("r"), before_mean_ms=OPTIONAL_FLOAT,
           after_mean_ms=OPTIONAL_FLOAT, before_calls=OPTIONAL_INT, after_calls=OPTIONAL_INT,
           improvement=OPTIONAL_FLOAT),
       executed=st.integers(0, 3))
def test_any_numbers_give_a_sentence_without_raising(
        action: ActionId | str, state: RemediationState, before: dict[str, float],
        after: dict[str, float], decision: Decision | None, executed: int) -> None:
    said = _said(action, state, before=before, after=after, decision=decision,
                 executed=executed)
    assert isinstance(said.text, str) and isinstance(said.benefit, str)
    assert len(said.text) <= summary.MAX_SUMMARY and len(said.benefit) <= 256
    assert "\n" not in said.text
    # A number is never invented: a benefit only with a kept, measured decision.
    if said.benefit:
        assert state is SUCCEEDED and decision is not None and decision.keep
    # Every key the module does not know is in the sentence (unless it was cut).
    if len(said.text) < summary.MAX_SUMMARY:
        for key in {*before, *after}:
            if not summary._quiet(key):
                assert f"{summary._label(key)}: " in said.text, key


@settings(max_examples=300, deadline=None)
@given(value=st.floats(allow_nan=True, allow_infinity=True))
def test_every_unit_formats_any_float(value: float) -> None:
    for formatter in (summary.count, summary.number, summary.size, summary.duration_ms,
                      summary.seconds):
        text = formatter(value)
        assert text and "\n" not in text, (formatter, value)
        if math.isfinite(value) and abs(value) < 1e15:
            assert "e+" not in text and "e-" not in text, (formatter, value, text)


@pytest.mark.parametrize(("value", "text"), [(999.9999, "1,000"), (12.345, "12.3"),
                                             (0.0004, "0.0004")])
def test_a_number_never_takes_an_exponent(value: float, text: str) -> None:
    assert summary.number(value) == text
