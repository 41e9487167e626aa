"""pg_stat_statements read every few rounds (issue 19 item 3): what the analyser does with
snapshots that leave SECTION_STATEMENTS out (not listed: "not collected this round").

Rates are taken between the samples that have the section, over their own sample times; the
statement detectors wait on the other rounds without counting them as "no data" and without
resolving or re-opening anything, and their detections stay on the re-publication schedule;
a statements section listed as failed is still "no data"; the history's thinning keeps the
sparser statement samples spread out."""

from __future__ import annotations

import itertools
from typing import Any

import prometheus_client
import pytest
from hypothesis import given
from hypothesis import strategies as st

from startupmonkey import settings
from startupmonkey.analyser import engine, findings, history, lifecycle, metrics
from startupmonkey.analyser.detectors import statements
from startupmonkey.models import monitor
from startupmonkey.models.enums import DetectorId
from startupmonkey.v1 import ingest_pb2
from startupmonkey.v1 import snapshot_pb2 as pb
from tests.support import snapshots_build as build

S = pb.Section
WITHOUT_STATEMENTS = [s for s in build.ALL_SECTIONS if s != S.SECTION_STATEMENTS]
SLOW, FAST = 501, 502
KEY = (SLOW, 10, build.DATID, True)


def _calls(t: float, rate: float) -> int:
    return int(rate * t)


def _stmts(t: float, slow_rate: float = 20.0, fast_rate: float = 50.0
           ) -> list[pb.StatementStats]:
    """A slow statement (30 ms per call) and a fast one (0.1 ms), cumulative at ``t``."""
    return [pb.StatementStats(queryid=SLOW, userid=10, dbid=build.DATID, toplevel=True,
                              calls=_calls(t, slow_rate),
                              total_exec_time_ms=_calls(t, slow_rate) * 30.0),
            pb.StatementStats(queryid=FAST, userid=10, dbid=build.DATID, toplevel=True,
                              calls=_calls(t, fast_rate),
                              total_exec_time_ms=_calls(t, fast_rate) * 0.1)]


def _snap(t: float, seq: int, read: bool, *, statement_lag: float = 0.0,
          failed: bool = False) -> pb.Snapshot:
    """A round at ``t``: with the statements section read (its own sample time ``t +
    statement_lag``), skipped (not listed), or listed as failed."""
    if read:
        snap = build.snapshot(t, seq=seq, statements=_stmts(t + statement_lag))
        for status in snap.collector.sections:
            if status.section == S.SECTION_STATEMENTS:
                status.collected_at.CopyFrom(build.ts(t + statement_lag))
        return snap
    snap = build.snapshot(t, seq=seq, sections=WITHOUT_STATEMENTS)
    snap.ClearField("statements_info")
    if failed:
        snap.collector.sections.add(section=S.SECTION_STATEMENTS,
                                    state=pb.SECTION_STATE_TIMEOUT, message="canceled")
    return snap


def _history(reads: list[bool], interval: float = 10.0, lag: float = 0.0) -> history.History:
    hist = history.History(retention=3600)
    for n, read in enumerate(reads):
        hist.add(history.Sample(_snap(n * interval, n + 1, read, statement_lag=lag)))
    return hist


@given(period=st.integers(1, 5), rounds=st.integers(2, 30),
       lag=st.floats(0.0, 0.9, allow_nan=False))
def test_the_rate_over_a_gap_is_the_true_rate(period: int, rounds: int, lag: float) -> None:
    reads = [n % period == 0 for n in range(rounds)]
    reads[-1] = True
    hist = _history(reads, lag=lag)
    window = hist.window()
    read_at = [n * 10.0 + lag for n, r in enumerate(reads) if r]
    deltas = window.statement_deltas(("calls", "total_exec_time_ms"))
    if len(read_at) < 2:
        assert deltas == {}
        return
    delta = deltas[KEY]
    # The base is the previous read, over the statements' own sample times (not the rounds').
    assert delta.seconds == pytest.approx(read_at[-1] - read_at[-2])
    true_calls = _calls(read_at[-1], 20.0) - _calls(read_at[-2], 20.0)
    assert delta["calls"] == true_calls
    assert delta.rate("calls") == pytest.approx(true_calls / (read_at[-1] - read_at[-2]))


def test_a_round_without_statements_is_not_judged_nor_counted_as_no_data() -> None:
    core = engine.Engine(_config(slow_statement={"minCalls": 30}),
                         metrics.Metrics(prometheus_client.CollectorRegistry()))
    published: list[str] = []
    for n in range(40):
        applied = core.apply(_snap(n * 10.0, n + 1, read=n % 5 == 0))
        assert applied.status == ingest_pb2.ACK_STATUS_ACCEPTED
        for occurrence, detection in applied.due:
            core.published(occurrence)
            if detection.detector is DetectorId.SLOW_STATEMENT:
                published.append(detection.id)
                # Statement numbers over a gap of 5 rounds: 20 calls/s at 30 ms.
                assert float(detection.evidence["calls_per_s"]) == pytest.approx(20.0)
                assert float(detection.evidence["mean_ms"]) == pytest.approx(30.0)
                assert float(detection.evidence["window_s"]) >= 50.0
    not_judged = core.meters.not_judged.labels(DetectorId.SLOW_STATEMENT.value)._value.get()
    assert not_judged == 1  # the first read only: no earlier sample yet
    # One occurrence, opened at the second read (50 s) and re-published every
    # REPUBLISH_EVERY rounds, skipped rounds included: 40 rounds -> 7 publications.
    assert len(set(published)) == 1
    assert len(published) == 1 + (40 - 6) // lifecycle.REPUBLISH_EVERY
    [occurrence] = [o for o in core.lifecycle.active.values()
                    if o.detector is DetectorId.SLOW_STATEMENT]
    assert occurrence.last_seen == build.at(35 * 10.0)  # the last read, not a skipped round
    assert occurrence.missed == 0


def test_a_failed_statements_section_is_still_no_data() -> None:
    window = build.window(_snap(0, 1, True), _snap(10, 2, False, failed=True))
    with pytest.raises(findings.NoData) as raised:
        statements.slow_statement(window, build.limits())
    assert not isinstance(raised.value, findings.NotCollected)
    skipped = build.window(_snap(0, 1, True), _snap(10, 2, False))
    with pytest.raises(findings.NotCollected):
        statements.slow_statement(skipped, build.limits())
    with pytest.raises(findings.NotCollected):
        statements.missing_index(skipped, build.limits())
    assert statements.wanted_texts(skipped) == ()


def test_a_failed_statements_section_counts_as_no_data_in_the_engine() -> None:
    core = engine.Engine(_config(), metrics.Metrics(prometheus_client.CollectorRegistry()))
    core.apply(_snap(0, 1, True))
    core.apply(_snap(10, 2, True))
    core.apply(_snap(20, 3, False, failed=True))
    core.apply(_snap(30, 4, False))
    value = core.meters.not_judged.labels(DetectorId.SLOW_STATEMENT.value)._value.get()
    assert value == 2  # the first read (no base yet) and the failed round, not the skipped


def test_a_detection_resolves_after_judged_reads_only() -> None:
    core = engine.Engine(_config(slow_statement={"minCalls": 30}),
                         metrics.Metrics(prometheus_client.CollectorRegistry()))
    for n in range(11):
        core.apply(_snap(n * 10.0, n + 1, read=n % 5 == 0))
    assert any(o.detector is DetectorId.SLOW_STATEMENT for o in core.lifecycle.active.values())
    # The slow statement stops (its counters stay); reads every 5th round.
    frozen = _stmts(100.0)
    resolved_at = None
    for n in range(11, 90):
        read = n % 5 == 0
        snap = _snap(n * 10.0, n + 1, read)
        if read:
            del snap.statements[:]
            fast = _stmts(n * 10.0)[1]
            snap.statements.extend([frozen[0], fast])
        applied = core.apply(snap)
        assert applied.status == ingest_pb2.ACK_STATUS_ACCEPTED
        if not any(o.detector is DetectorId.SLOW_STATEMENT
                   for o in core.lifecycle.active.values()):
            resolved_at = n
            break
    # Resolved on a read round, never a skipped one, after RESOLVE_AFTER judged reads
    # without it once the 300 s recent window no longer holds its calls (stopped at 100 s).
    assert resolved_at is not None and resolved_at % 5 == 0
    assert resolved_at * 10.0 >= 100.0 + statements.RECENT_WINDOW


def test_thinning_keeps_statement_samples_spread() -> None:
    hist = history.History(retention=600, max_samples=20)
    for n in range(300):
        hist.add(history.Sample(_snap(n * 10.0, n + 1, read=n % 5 == 0)))
    assert len(hist.samples) <= 20
    times = [s.time_of(S.SECTION_STATEMENTS).timestamp() for s in hist.samples
             if s.present(S.SECTION_STATEMENTS)]
    # The newest read and reads spread over the retention period, not thinned away first.
    assert len(times) >= 8
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) <= 150.0, gaps
    assert hist.samples[-1].collected_at.timestamp() - times[-1] < 50.0
    assert times[-1] - times[0] >= 600 - 100


def _config(**thresholds: Any) -> settings.ComponentConfig:
    spec = monitor.DatabaseMonitorSpec.model_validate({
        "database": {"host": "127.0.0.1", "dbname": build.DBNAME,
                     "credentialsSecret": {"name": "s"}},
        "thresholds": thresholds})
    return settings.ComponentConfig(
        monitor=settings.MonitorRef(namespace=build.NAMESPACE, name=build.MONITOR), spec=spec)
