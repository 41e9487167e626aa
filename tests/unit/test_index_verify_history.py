"""Keep-or-revert with the before figure from the detection (issue 17): the analyser's window
read from the evidence, the plan-time cumulative cross-check, and the rule that an index whose
own idx_scan did not grow is reverted whatever the timing says."""

from __future__ import annotations

import pytest

from startupmonkey.executor import index_verify


def _window(calls: int, mean_ms: float) -> index_verify.Window:
    return index_verify.Window(seconds=60.0, calls=calls, total_ms=calls * mean_ms)


def test_the_before_window_comes_from_the_evidence() -> None:
    window = index_verify.history_window({"before_calls": "900", "before_total_ms": "36000.5",
                                          "before_mean_ms": "40.0", "before_window_s": "60.0"})
    assert window == index_verify.Window(seconds=60.0, calls=900, total_ms=36000.5)
    assert window is not None and window.mean_ms == pytest.approx(40.0, abs=1e-3)


@pytest.mark.parametrize("evidence", [
    {}, {"before_calls": "900"}, {"before_calls": "x", "before_total_ms": "1"},
    {"before_calls": "-1", "before_total_ms": "1"},
    {"before_calls": "nan", "before_total_ms": "1"},
    {"before_calls": "10", "before_total_ms": "inf"}])
def test_evidence_without_a_usable_figure_gives_none(evidence: dict[str, str]) -> None:
    assert index_verify.history_window(evidence) is None


def test_the_cumulative_cross_check_sums_every_queryid() -> None:
    now = index_verify.Sample(10.0, None, {"1": 100, "2": 50}, {"1": 1000.0, "2": 250.0})
    window = index_verify.cumulative_window(now)
    assert (window.calls, window.total_ms) == (150, 1250.0)
    assert window.per_query == {"1": (100, 1000.0), "2": (50, 250.0)}


@pytest.mark.parametrize(("before", "after"), [
    (_window(100, 10.0), _window(100, 1.0)),   # the timing says keep
    (_window(5, 10.0), _window(5, 1.0)),       # too few calls: would be kept unverified
    (_window(100, 0.0), _window(100, 1.0)),    # no before time: would be kept unverified
    (_window(100, 10.0), _window(100, 12.0))])  # the timing says revert too
def test_an_index_that_was_not_scanned_is_reverted_whatever_the_timing(
        before: index_verify.Window, after: index_verify.Window) -> None:
    decision = index_verify.decide(before, after, 20, 0.1, index_scans=0)
    assert not decision.keep
    assert decision.reason.startswith("revert: the index was not scanned")
    assert (decision.before_calls, decision.after_calls) == (before.calls, after.calls)


def test_a_scanned_index_is_judged_by_its_timing() -> None:
    assert index_verify.decide(_window(100, 10.0), _window(100, 1.0), 20, 0.1,
                               index_scans=3).keep
    slower = index_verify.decide(_window(100, 10.0), _window(100, 12.0), 20, 0.1,
                                 index_scans=3)
    assert not slower.keep and slower.reason.startswith("revert: mean")
    # Unknown growth (the index vanished, an old status): the timing alone decides.
    assert index_verify.decide(_window(100, 10.0), _window(100, 1.0), 20, 0.1).keep
