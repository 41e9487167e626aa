"""One analyser, several databases of one server (issue 19, item 1, the analyser's part).

A monitor watches its home database (``spec.database.dbname``) and, with
``analyser.databases``, others of the same server. Each database has its own history; a
problem in another database has a key that names it, so ``public.orders`` of two databases
are two problems, and the home database's keys stay what they always were. Snapshots of a
database the monitor does not watch are refused. Facts of the whole server (its connection
limit, its oldest database's transaction age) are judged once, in the home window.
"""

from __future__ import annotations

from typing import Any

import prometheus_client
import pytest
from hypothesis import given
from hypothesis import strategies as st

from startupmonkey import settings
from startupmonkey.analyser import engine, findings, lifecycle, metrics
from startupmonkey.models import remediation
from startupmonkey.models.enums import ActionId, DetectorId
from startupmonkey.v1 import ingest_pb2
from startupmonkey.v1 import snapshot_pb2 as pb
from tests.support import snapshots_build as build
from tests.unit.test_analyser_engine import config

Status = ingest_pb2.AckStatus
DEAD = {"dead_tuples": {"minDeadTuples": 10, "minDeadRatio": 0.01, "autovacuumGrace": "0s"}}


def _engine(databases: Any, exclude: list[str] | None = None, **thresholds: Any
            ) -> engine.Engine:
    cfg = config(**thresholds)
    cfg = cfg.model_copy(update={"analyser": settings.AnalyserSettings.model_validate(
        {"databases": databases, "excludeDatabases": exclude or []})})
    return engine.Engine(cfg, metrics.Metrics(prometheus_client.CollectorRegistry()))


def _snap(dbname: str, datid: int, at_s: float, seq: int, **kwargs: Any) -> pb.Snapshot:
    """A snapshot of ``dbname``: the home database when it is build.DBNAME, else one the
    collector also watches."""
    snap = build.snapshot(at_s, seq=seq, **kwargs)
    snap.database.dbname, snap.database.datid = dbname, datid
    snap.database.also_watched = dbname != build.DBNAME
    return snap


def _snap_other(dbname: str, at_s: float, seq: int) -> pb.Snapshot:
    snap = _snap(dbname, 23_000, at_s, seq)
    snap.database.also_watched = True
    return snap


def _bloated() -> pb.TableStats:
    return build.table(1, "orders", n_live_tup=1_000, n_dead_tup=900, reltuples=1_000.0)


def test_the_same_table_in_two_databases_is_two_problems_and_home_keys_stay() -> None:
    core = _engine(["analytics"], **DEAD)
    home = core.apply(_snap(build.DBNAME, build.DATID, 0, 1, tables=[_bloated()]))
    away = core.apply(_snap("analytics", 20_000, 0, 2, tables=[_bloated()]))
    assert home.status == away.status == Status.ACK_STATUS_ACCEPTED
    [(_, at_home)] = [d for d in home.due if d[1].detector is DetectorId.DEAD_TUPLES]
    [(_, elsewhere)] = [d for d in away.due if d[1].detector is DetectorId.DEAD_TUPLES]
    assert at_home.key == "prod/shop/dead_tuples/public.orders"  # as before
    assert elsewhere.key == "prod/shop/dead_tuples/db=analytics/public.orders"
    assert (at_home.database, elsewhere.database) == ("shop", "analytics")
    assert at_home.id != elsewhere.id
    assert set(core.histories) == {(True, "shop"), (False, "analytics")}
    # A later round of one database does not resolve the other's problem.
    for seq, at in ((3, 10.0), (5, 20.0), (7, 30.0)):
        core.apply(_snap(build.DBNAME, build.DATID, at, seq, tables=[build.table(1, "orders")]))
    assert any(k.endswith("db=analytics/public.orders") for k in core.lifecycle.active)
    assert not any(k.endswith("dead_tuples/public.orders") for k in core.lifecycle.active)


def test_snapshots_of_a_database_the_monitor_does_not_watch_are_refused() -> None:
    core = _engine(["analytics"])
    refused = core.apply(_snap("payroll", 30_000, 0, 1))
    assert refused.status == Status.ACK_STATUS_REJECTED
    assert "'payroll'" in refused.message and "does not watch" in refused.message
    assert (False, "payroll") not in core.histories
    # Without an analyser block only the home database is watched (as before).
    only_home = engine.Engine(config(), metrics.Metrics(prometheus_client.CollectorRegistry()))
    assert only_home.apply(_snap("analytics", 20_000, 0, 1)).status == Status.ACK_STATUS_REJECTED
    assert only_home.apply(_snap(build.DBNAME, build.DATID, 0, 2)).status == (
        Status.ACK_STATUS_ACCEPTED)
    # The home database is the collector's login database, whatever PostgreSQL calls it (a
    # pooler may alias it): its snapshots are taken under any name, keyed as always.
    aliased = _snap("shop_production", build.DATID, 10, 3, tables=[_bloated()])
    aliased.database.also_watched = False
    applied = only_home.apply(aliased)
    assert applied.status == Status.ACK_STATUS_ACCEPTED
    assert (True, "shop_production") in only_home.histories


def test_all_databases_but_the_excluded_and_the_templates() -> None:
    core = _engine("all", exclude=["scratch", build.DBNAME])
    assert core.apply(_snap("reports", 21_000, 0, 1)).status == Status.ACK_STATUS_ACCEPTED
    assert core.apply(_snap("scratch", 22_000, 0, 2)).status == Status.ACK_STATUS_REJECTED
    assert core.apply(_snap("template1", 1, 0, 3)).status == Status.ACK_STATUS_REJECTED
    # Excluding the home database does not exclude it: it is the monitor's own.
    assert core.apply(_snap(build.DBNAME, build.DATID, 0, 4)).status == (
        Status.ACK_STATUS_ACCEPTED)
    # The home database's name seen as another database (a second source of the same name)
    # is excluded like any other and never shares the home database's history.
    assert core.apply(_snap_other(build.DBNAME, 0, 5)).status == Status.ACK_STATUS_REJECTED


def _crowd(datid: int, count: int) -> list[pb.Session]:
    return [build.session(1_000 + n, datid=datid, state="idle") for n in range(count)]


def test_the_servers_connection_limit_is_judged_once_in_the_home_window() -> None:
    # 90 of 97 usable connections, all of them in the other database (no datconnlimit).
    crowd = _crowd(20_000, 90)
    core = _engine(["analytics"])
    home = core.apply(_snap(build.DBNAME, build.DATID, 0, 1, sessions=crowd))
    away = core.apply(_snap("analytics", 20_000, 0, 2, sessions=crowd))
    saturation = DetectorId.CONNECTION_SATURATION
    assert [d.key for _, d in home.due if d.detector is saturation] == [
        "prod/shop/connection_saturation/connections/shop"]
    assert [d for _, d in away.due if d.detector is saturation] == []
    # The other database's own limit is still judged in its window.
    limited = _snap("analytics", 20_000, 10, 3, sessions=crowd, database={"datconnlimit": 91})
    found = core.apply(limited).due
    assert [d.key for _, d in found if d.detector is saturation] == [
        "prod/shop/connection_saturation/db=analytics/connections/analytics"]


def test_the_oldest_databases_transaction_age_is_judged_once_in_the_home_window() -> None:
    old = {"datfrozenxid_age": 1_000, "cluster_max_datfrozenxid_age": 1_900_000_000}
    core = _engine(["analytics"])
    home = core.apply(_snap(build.DBNAME, build.DATID, 0, 1, database=old))
    away = core.apply(_snap("analytics", 20_000, 0, 2, database=old))
    wraparound = DetectorId.XID_WRAPAROUND
    assert [d.key for _, d in home.due if d.detector is wraparound] == [
        "prod/shop/xid_wraparound/database/shop"]
    assert [d for _, d in away.due if d.detector is wraparound] == []
    own = {"datfrozenxid_age": 1_900_000_000, "cluster_max_datfrozenxid_age": 1_900_000_000}
    found = core.apply(_snap("analytics", 20_000, 10, 3, database=own)).due
    assert [d.database for _, d in found if d.detector is wraparound] == ["analytics"]


def _finding(target: str) -> findings.Finding:
    return findings.Finding(DetectorId.DEAD_TUPLES, target, remediation.Target(),
                            ActionId.VACUUM, "warning", "s", {})


_names = st.text(min_size=1, max_size=63)
_targets = st.builds(findings.table_key, _names, _names) | st.sampled_from(
    ["connections/shop", "database/shop", "queryid=7", "pid=1@x/y"])


@given(a=st.tuples(_names, _targets), b=st.tuples(_names, _targets))
def test_keys_of_two_databases_never_collide(a: tuple[str, str], b: tuple[str, str]) -> None:
    """Any database names (a name with '/', '"' or '=' included) and any targets: two
    different (database, target) pairs never share a key, nor the home database's keys
    (the bare targets)."""
    life = lifecycle.Lifecycle("prod", "shop")
    key_a = life.key_of(_finding(a[1]), a[0])
    key_b = life.key_of(_finding(b[1]), b[0])
    assert (key_a == key_b) == (a == b)
    home = life.key_of(_finding(b[1]))
    assert home == f"prod/shop/dead_tuples/{b[1]}" and home != key_a


def test_the_analysers_database_list_is_checked_like_the_collectors() -> None:
    ok = settings.AnalyserSettings.model_validate(
        {"databases": "all", "excludeDatabases": ["scratch"]})
    assert ok.databases == "all" and ok.exclude_databases == ["scratch"]
    for bad, says in (({"databases": ["a", "a"]}, "listed twice"),
                      ({"databases": [""]}, "cannot be empty"),
                      ({"databases": ["x" * 64]}, "at most 63"),
                      ({"databases": "everything"}, "the word all"),
                      ({"databases": ["a"], "excludeDatabases": ["b"]}, "only with databases"),
                      ({"databases": [f"d{n}" for n in range(40)]}, "at most 31")):
        try:
            settings.AnalyserSettings.model_validate(bad)
        except ValueError as exc:
            assert says in str(exc), (bad, str(exc))
        else:
            raise AssertionError(f"accepted {bad}")
    # With the default, the rendered block says nothing of databases (as before).
    assert "databases" not in settings.AnalyserSettings().dump()


def test_the_home_database_and_another_of_the_same_name_never_mix() -> None:
    """Behind a pooler alias the home database may be reported under the name of another
    watched database: two histories, two keys, and neither's rounds resolve the other's."""
    core = _engine(["shop", "db=x"], **DEAD)
    clean = [build.table(1, "orders")]
    home = core.apply(_snap(build.DBNAME, build.DATID, 0, 1, tables=[_bloated()]))
    other = _snap(build.DBNAME, 20_000, 0, 2, tables=[_bloated()])
    other.database.also_watched = True
    assert core.apply(other).status == Status.ACK_STATUS_ACCEPTED
    assert set(core.histories) == {(True, build.DBNAME), (False, build.DBNAME)}
    assert len([d for _, d in home.due if d.detector is DetectorId.DEAD_TUPLES]) == 1
    for seq, at in ((3, 10.0), (4, 20.0), (5, 30.0), (6, 40.0)):  # home rounds only, clean
        core.apply(_snap(build.DBNAME, build.DATID, at, seq, tables=clean))
    assert list(core.lifecycle.active) == ["prod/shop/dead_tuples/db=shop/public.orders"]
    # A home database named like another's history key has its own history too.
    odd = _engine(["x"])
    named = _snap("db=x", build.DATID, 0, 1)
    named.database.also_watched = False
    assert odd.apply(named).status == Status.ACK_STATUS_ACCEPTED
    assert odd.apply(_snap("x", 20_000, 0, 2)).status == Status.ACK_STATUS_ACCEPTED
    assert set(odd.histories) == {(True, "db=x"), (False, "x")}


def test_problems_of_a_database_that_went_silent_are_retired() -> None:
    core = _engine(["analytics"], **DEAD)
    core.apply(_snap("analytics", 20_000, 0, 1, tables=[_bloated()]))
    assert [k for k in core.lifecycle.active if "db=analytics" in k]
    core.apply(_snap(build.DBNAME, build.DATID, engine.RETIRE_AFTER - 1, 2))
    assert [k for k in core.lifecycle.active if "db=analytics" in k]  # not yet
    core.apply(_snap(build.DBNAME, build.DATID, engine.RETIRE_AFTER + 1, 3))
    assert not core.lifecycle.active and (False, "analytics") not in core.histories
    # No longer listed after a reload: retired at once.
    core.apply(_snap("analytics", 20_000, engine.RETIRE_AFTER + 2, 4, tables=[_bloated()]))
    assert core.lifecycle.active
    core.configure(config(**DEAD))
    assert not core.lifecycle.active and (False, "analytics") not in core.histories


def test_a_detector_failing_in_one_database_logs_once(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from startupmonkey.analyser.detectors import database as database_detectors

    real = database_detectors.cache_hit_ratio

    def broken(window: Any, limits: Any) -> Any:
        if not window.home:
            raise RuntimeError("broken on the other database")
        return real(window, limits)

    registry = tuple(findings.Detector(d.id, broken) if d.id is DetectorId.CACHE_HIT_RATIO
                     else d for d in engine.REGISTRY)
    monkeypatch.setattr(engine, "REGISTRY", registry)
    core = _engine(["analytics"])
    for n in range(5):
        core.apply(_snap(build.DBNAME, build.DATID, n * 10.0, 2 * n + 1))
        core.apply(_snap("analytics", 20_000, n * 10.0, 2 * n + 2))
    logged = [r for r in caplog.records if "cache_hit_ratio failed" in r.getMessage()]
    assert len(logged) == 1
