"""The engine: snapshots in, Detection v1 messages out (no network)."""

from __future__ import annotations

from typing import Any

import prometheus_client

from startupmonkey import settings
from startupmonkey.analyser import engine, metrics
from startupmonkey.models import messages, monitor
from startupmonkey.models.enums import DetectorId, RemediationState
from startupmonkey.v1 import ingest_pb2
from startupmonkey.v1 import snapshot_pb2 as pb
from tests.support import snapshots_build as build

Status = ingest_pb2.AckStatus


def config(**thresholds: Any) -> settings.ComponentConfig:
    spec = monitor.DatabaseMonitorSpec.model_validate({
        "database": {"host": "127.0.0.1", "dbname": build.DBNAME,
                     "credentialsSecret": {"name": "s"}},
        "thresholds": thresholds})
    return settings.ComponentConfig(
        monitor=settings.MonitorRef(namespace=build.NAMESPACE, name=build.MONITOR), spec=spec)


def make(**thresholds: Any) -> engine.Engine:
    return engine.Engine(config(**thresholds),
                         metrics.Metrics(prometheus_client.CollectorRegistry()))


IDLE = {"idle_in_transaction": {"maxDuration": "30s"}}


def idle_snapshot(at_s: float, seq: int, **kwargs: Any) -> pb.Snapshot:
    held = build.session(300, state="idle in transaction", state_change=build.at(-60),
                         xact_start=build.at(-61))
    return build.snapshot(at_s, seq=seq, sessions=[held], **kwargs)


def test_a_detection_carries_everything_a_consumer_needs() -> None:
    core = make(**IDLE)
    applied = core.apply(idle_snapshot(0, 1))
    assert applied.status == Status.ACK_STATUS_ACCEPTED
    [(occurrence, detection)] = applied.due
    assert detection.subject == "startupmonkey.v1.prod.shop.detections.idle_in_transaction"
    assert detection.key == "prod/shop/idle_in_transaction/" + occurrence.finding.target_key
    assert detection.database == "shop" and detection.risk_class.value == "session"
    decoded = messages.parse_detection(detection.encode())
    assert decoded.target.pid == 300
    assert decoded.target.state_change == build.at(-60)
    assert decoded.first_seen == build.at(0) and len(detection.encode()) < 4096


def test_duplicates_wrong_monitor_and_older_snapshots() -> None:
    core = make(**IDLE)
    assert core.apply(idle_snapshot(10, 2)).status == Status.ACK_STATUS_ACCEPTED
    assert core.apply(idle_snapshot(10, 2)).status == Status.ACK_STATUS_DUPLICATE
    assert core.apply(idle_snapshot(5, 1)).status == Status.ACK_STATUS_DUPLICATE
    # Another collector process with an older snapshot of the same database: not applied.
    assert core.apply(idle_snapshot(5, 1, collector_id="b")).status == Status.ACK_STATUS_DUPLICATE
    other = idle_snapshot(20, 3)
    other.monitor.name = "elsewhere"
    assert core.apply(other).status == Status.ACK_STATUS_REJECTED


def test_persistent_problem_keeps_its_id_and_is_republished() -> None:
    core = make(**IDLE)
    ids = []
    for n in range(13):
        for occurrence, detection in core.apply(idle_snapshot(n, n + 1)).due:
            core.published(occurrence)
            ids.append(detection.id)
    assert len(ids) == 3 and len(set(ids)) == 1


def test_statistics_reset_raises_nothing_but_the_lost_counters() -> None:
    core = make(cache_hit_ratio={"window": "20s", "minBlocks": 10},
                dead_tuples={"autovacuumGrace": "0s"})
    good = build.table(1, "orders", n_dead_tup=100, n_mod_since_analyze=10)
    for n in range(4):
        snap = build.snapshot(n * 10, seq=n + 1, tables=[good],
                              database={"blks_hit": 1_000_000 + n * 1000, "blks_read": 100})
        assert not core.apply(snap).due
    zeroed = build.table(1, "orders", n_live_tup=0, n_dead_tup=0, n_mod_since_analyze=0)
    raised = []
    for n in range(4, 10):  # counters restart near zero after pg_stat_reset()
        snap = build.snapshot(n * 10, seq=n + 1, tables=[zeroed], stats_reset=35,
                              database={"blks_hit": (n - 3) * 1000, "blks_read": 1})
        raised += [(n, d.detector, d.evidence.get("statistics_lost"))
                   for _, d in core.apply(snap).due]
    # The one detection the reset raises is the one it should: the counters of orders'
    # 100,000 rows were lost, and stay lost for LOST_GRACE (30 s: from the sample at 40 s).
    assert raised[0][0] == 7
    assert {(detector, lost) for _, detector, lost in raised} == {
        (DetectorId.STALE_STATISTICS, True)}


def test_connection_error_and_missing_sections_fire_nothing_and_resolve_nothing() -> None:
    core = make(**IDLE)
    core.apply(idle_snapshot(0, 1))
    lost = build.snapshot(1, seq=2)
    lost.collector.connection_error = "connection refused"
    del lost.collector.sections[:]
    assert core.apply(lost).status == Status.ACK_STATUS_ACCEPTED
    for n in range(2, 10):
        core.apply(build.snapshot(n, seq=n + 1, sections=[pb.SECTION_DATABASE]))
    assert len(core.lifecycle.active) == 1


def test_standby_proposes_no_action() -> None:
    core = make(**IDLE)
    assert not core.apply(idle_snapshot(0, 1, identity={"in_recovery": True})).due


def test_hot_reload_changes_thresholds_and_disables_detectors() -> None:
    core = make()
    assert not core.apply(idle_snapshot(0, 1)).due  # default limit 30m
    core.configure(config(**IDLE))
    assert core.apply(idle_snapshot(1, 2)).due
    core.configure(config(idle_in_transaction={"enabled": False}))
    core.apply(idle_snapshot(2, 3))
    assert not core.lifecycle.active


def test_remediation_event_starts_the_detectors_cooldown() -> None:
    core = make(idle_in_transaction={"maxDuration": "30s", "cooldown": "10s"})
    [(occurrence, _)] = core.apply(idle_snapshot(0, 1)).due
    event = messages.RemediationEvent(
        namespace="prod", monitor="shop", remediation="r", key=occurrence.key,
        detection_id=occurrence.id, detector=DetectorId.IDLE_IN_TRANSACTION,
        action=occurrence.finding.action, state=RemediationState.REJECTED, time=build.at(1))
    assert core.remediation_event(event)
    assert not core.apply(idle_snapshot(5, 2)).due
    later = core.apply(idle_snapshot(12, 3)).due
    assert later and later[0][1].id != occurrence.id


def test_a_broken_detector_is_skipped_and_counted(monkeypatch: Any) -> None:
    def boom(*_: Any) -> list[Any]:
        raise RuntimeError("bug")

    core = make(**IDLE)
    broken = tuple(d if d.id is not DetectorId.IDLE_IN_TRANSACTION else type(d)(d.id, boom)
                   for d in engine.REGISTRY)
    monkeypatch.setattr(engine, "REGISTRY", broken)
    assert core.apply(idle_snapshot(0, 1)).status == Status.ACK_STATUS_ACCEPTED
    assert core.meters.detector_errors.labels("idle_in_transaction")._value.get() == 1
