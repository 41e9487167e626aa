"""One collector watching several databases of one server (``collector.databases``).

Real PostgreSQL 15: the shared cluster for explicit lists (each test makes its own databases,
one with quotes, a space and a non-ASCII letter in its name), a private cluster for ``all``
(it sees every database of the server). The collector logs in as a role with only pg_monitor
and a password; what it streams goes to the recording server of
``test_collector_ingest_server.py`` or to the real analyser ingest server and engine.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
from psycopg import sql

from startupmonkey import settings
from startupmonkey.analyser import engine, metrics, server
from startupmonkey.collector import service
from startupmonkey.localserv import postgres
from startupmonkey.models import messages
from startupmonkey.models.enums import DetectorId
from startupmonkey.v1 import snapshot_pb2 as pb
from tests.integration import test_collector_cli
from tests.integration import test_collector_ingest_server as ingest
from tests.support import components, workloads
from tests.support.eventually import eventually

pytestmark = pytest.mark.integration

monitor_login = test_collector_cli.monitor_role
"""A login role with only pg_monitor, and its password in a 0400 file (the fixture)."""

CLUSTER_WIDE = (pb.SECTION_SESSIONS, pb.SECTION_REPLICATION_SLOTS, pb.SECTION_PREPARED_XACTS)
PER_DATABASE = (pb.SECTION_DATABASE, pb.SECTION_SETTINGS, pb.SECTION_TABLES,
                pb.SECTION_INDEXES, pb.SECTION_STATEMENTS, pb.SECTION_LOCK_WAITS,
                pb.SECTION_VACUUM_PROGRESS, pb.SECTION_INDEX_BUILDS)


@contextlib.contextmanager
def database(cluster: postgres.PostgresCluster, name: str) -> Iterator[postgres.PostgresDatabase]:
    """A new database (from template1: pg_stat_statements is there), dropped afterwards."""
    created = cluster.create_database(name)
    try:
        yield created
    finally:
        cluster.drop_database(name)


def workload(db: postgres.PostgresDatabase, table: str, calls: int = 5) -> int:
    """A table of its own in ``db`` and a statement on it run ``calls`` times; its queryid."""
    with db.connect() as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, v text)").format(
            sql.Identifier(table)))
        for n in range(calls):
            conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE v = %s").format(
                sql.Identifier(table)), (str(n),))
        row = conn.execute(
            "SELECT queryid FROM public.pg_stat_statements WHERE dbid = (SELECT oid FROM "
            "pg_catalog.pg_database WHERE datname = pg_catalog.current_database()) "
            "AND query LIKE %s", (f'SELECT count(*) FROM "{table}" WHERE v = $1%',)).fetchone()
    assert row is not None
    return int(row[0])


def datid(cluster: postgres.PostgresCluster, name: str) -> int:
    with cluster.connect() as conn:
        row = conn.execute("SELECT oid FROM pg_catalog.pg_database WHERE datname = %s",
                           (name,)).fetchone()
    assert row is not None
    return int(row[0])


def watching(config: settings.ComponentConfig, databases: list[str] | str,
             exclude: list[str] | None = None) -> settings.ComponentConfig:
    """``config`` with ``collector.databases`` (validated as a config file is)."""
    assert config.collector is not None
    block = {**config.collector.dump(), "databases": databases,
             "excludeDatabases": exclude or []}
    return settings.ComponentConfig.model_validate({**config.dump(), "collector": block})


def sections(snap: pb.Snapshot) -> dict[int, int]:
    return {s.section: s.state for s in snap.collector.sections}


class AskingRecorder(ingest.IngestRecorder):
    """A recorder that asks for the catalog or for texts only in the Ack of a snapshot of a
    chosen database (the base class asks in the next Ack, whatever its database)."""

    def __init__(self) -> None:
        self.catalog_of: str | None = None
        self.texts_of: tuple[str, list[int]] | None = None
        self.asked: list[tuple[str, int]] = []
        super().__init__()

    async def __aenter__(self) -> AskingRecorder:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _latest(self) -> pb.Snapshot | None:
        return self.received[-1].snapshot if self.received else None

    @property  # type: ignore[override]
    def want_catalog(self) -> bool:
        latest = self._latest()
        return (self.catalog_of is not None and latest is not None
                and latest.database.dbname == self.catalog_of)

    @want_catalog.setter
    def want_catalog(self, value: bool) -> None:
        latest = self._latest()
        if not value and latest is not None and self.catalog_of is not None:
            self.asked.append(("catalog", latest.sequence))
            self.catalog_of = None

    @property  # type: ignore[override]
    def want_texts(self) -> list[int]:
        latest = self._latest()
        if self.texts_of is None or latest is None or \
                latest.database.dbname != self.texts_of[0]:
            return []
        return self.texts_of[1]

    @want_texts.setter
    def want_texts(self, value: list[int]) -> None:
        latest = self._latest()
        if not value and latest is not None and self.texts_of is not None and self.want_texts:
            self.asked.append(("texts", latest.sequence))
            self.texts_of = None




async def test_one_snapshot_per_database_per_round(
        pg_cluster: postgres.PostgresCluster, pg_db: postgres.PostgresDatabase,
        monitor_login: tuple[str, str, Path]) -> None:
    role, password, password_file = monitor_login
    token = secrets.token_hex(3)
    names = [f"sm_dbs_one_{token}", f"sm dbs \u00fc'\"{token}"]  # quotes, space, non-ASCII
    with database(pg_cluster, names[0]) as one, database(pg_cluster, names[1]) as two:
        tables = {pg_db.dbname: "home_t", one.dbname: "one_t", two.dbname: "two_t"}
        queryids = {name: workload(pg_cluster.database(name), table)
                    for name, table in tables.items()}
        ids = {name: datid(pg_cluster, name) for name in tables}
        order = [pg_db.dbname, *names]
        async with AskingRecorder() as recorder:
            config = watching(ingest.collector_config(pg_db, recorder.address, user=role,
                                               password_file=password_file),
                              [*names, pg_db.dbname])  # the home one again: harmless
            async with ingest.running_collector(config) as (collector, obs):
                assert list(collector.sources) == order
                await eventually(lambda: len(recorder.snapshots()) >= 6, timeout=60)
                # Ask for the catalog in the Ack of a snapshot of the second database, and
                # for the home statement's text in the Ack of a snapshot of the home one.
                recorder.catalog_of = names[0]
                recorder.texts_of = (pg_db.dbname, [queryids[pg_db.dbname]])
                await eventually(lambda: len(recorder.asked) == 2, timeout=30)
                last_ask = max(sequence for _, sequence in recorder.asked)
                await eventually(lambda: [s for s in recorder.snapshots()
                                          if s.sequence > last_ask + 2 * len(order)],
                                 timeout=30)
                await eventually(lambda: ingest.metric(obs, "startupmonkey_collector_acks_total",
                                                status="accepted") >= len(recorder.received),
                                 timeout=30)
                assert obs.health.report()["dependencies"]["database"]["ok"]
                assert ingest.metric(obs, "startupmonkey_collector_databases", state="watched") == 3
                for name in order:
                    assert ingest.metric(obs, "startupmonkey_collector_database_reachable",
                                  database=name) == 1

    received = [r.snapshot for r in recorder.received]
    assert all(r.stream == 1 for r in recorder.received)
    assert all(not s.collector.connection_error for s in received), [
        s.collector.connection_error for s in received]
    # One snapshot per database per round, the home one first; one sequence across them.
    sequences = [s.sequence for s in received]
    assert sequences == list(range(1, len(received) + 1))
    dbnames = [s.database.dbname for s in received]
    assert dbnames == [order[n % 3] for n in range(len(received))]
    for snap in received:
        name = snap.database.dbname
        assert snap.database.datid == ids[name]
        assert snap.database.also_watched == (name != pg_db.dbname)
        states = sections(snap)
        for section in PER_DATABASE:
            assert states.get(section) == pb.SECTION_STATE_OK, (name, section, states)
        assert {t.name for t in snap.tables} == {tables[name]}, name
        assert all(s.dbid == ids[name] for s in snap.statements)
        # Each database's first read carries every entry, the later ones the changed ones.
        assert queryids[name] in {s.queryid for s in snap.statements} or (
            snap.sequence > len(order) and snap.statements_info.unchanged_omitted > 0)
        for section in CLUSTER_WIDE:
            assert states.get(section) == pb.SECTION_STATE_OK, (name, states)
        if name == pg_db.dbname:  # cluster-wide sections: read once a round, by the home one
            if snap.sequence > len(order):  # the collector's own sessions, once connected
                assert {s.datname for s in snap.sessions} >= set(order)
        else:  # ... and carried, as read, by the other databases' snapshots of the round
            home = next(h for h in received if h.database.dbname == pg_db.dbname
                        and h.sequence == snap.sequence - order.index(name))
            assert list(snap.sessions) == list(home.sessions)
            assert list(snap.replication_slots) == list(home.replication_slots)
            assert list(snap.prepared_xacts) == list(home.prepared_xacts)
            home_states = {st.section: st for st in home.collector.sections}
            for status in snap.collector.sections:
                if status.section in CLUSTER_WIDE:
                    assert status == home_states[status.section]

    # Catalog: each database's own, on its first snapshot of the stream, and again on the
    # next snapshot of the database whose Ack asked for it, and of no other.
    with_catalog = [s for s in received if s.HasField("catalog")]
    for snap in with_catalog:
        assert snap.catalog.hash == snap.catalog_hash
        assert {r.name for r in snap.catalog.relations} == {tables[snap.database.dbname]}
    firsts = {name: next(s for s in received if s.database.dbname == name) for name in order}
    assert all(s.HasField("catalog") for s in firsts.values())
    catalog_ask = next(sequence for what, sequence in recorder.asked if what == "catalog")
    assert received[catalog_ask - 1].database.dbname == names[0]
    again = [s for s in with_catalog if s.sequence > catalog_ask]
    assert [s.database.dbname for s in again] == [names[0]], [
        (s.sequence, s.database.dbname) for s in again]
    assert again[0].sequence == catalog_ask + len(order)
    assert len(with_catalog) == len(order) + 1

    # Texts: each statement's once on the stream, plus the one asked for again.
    texts: collections.Counter[int] = collections.Counter(
        t.queryid for s in received for t in s.statement_texts)
    for name, queryid in queryids.items():
        text = next(t for s in received for t in s.statement_texts if t.queryid == queryid)
        assert text.text.startswith(f'SELECT count(*) FROM "{tables[name]}" WHERE v = $1')
        assert texts[queryid] == (2 if name == pg_db.dbname else 1), (name, texts)
    texts_ask = next(sequence for what, sequence in recorder.asked if what == "texts")
    assert received[texts_ask - 1].database.dbname == pg_db.dbname
    assert password not in repr(received)


async def test_a_dropped_database_says_so_and_the_others_go_on(
        pg_cluster: postgres.PostgresCluster, pg_db: postgres.PostgresDatabase,
        monitor_login: tuple[str, str, Path]) -> None:
    role, password, password_file = monitor_login
    token = secrets.token_hex(3)
    kept_name, dropped_name = f"sm_dbs_kept_{token}", f"sm_dbs_dropped_{token}"
    with database(pg_cluster, kept_name), database(pg_cluster, dropped_name):
        async with ingest.ingest_server() as recorder:
            config = watching(ingest.collector_config(pg_db, recorder.address, user=role,
                                               password_file=password_file),
                              [kept_name, dropped_name])
            async with ingest.running_collector(config) as (collector, obs):
                await eventually(lambda: len(recorder.snapshots()) >= 6, timeout=60)
                await asyncio.to_thread(pg_cluster.drop_database, dropped_name)

                def gone() -> list[pb.Snapshot]:
                    # The connection is cut first ("lost"), then connecting fails (after the
                    # reconnect backoff, rounds in between repeating the last error).
                    errors = [s for s in recorder.snapshots(connected=False)
                              if s.collector.connection_error]
                    assert any("does not exist" in s.collector.connection_error
                               for s in errors), [s.collector.connection_error for s in errors]
                    return errors

                errors = await eventually(gone, timeout=60)
                dropped_at = errors[0].sequence
                await eventually(lambda: len([
                    s for s in recorder.snapshots() if s.sequence > dropped_at
                    and s.database.dbname in (pg_db.dbname, kept_name)]) >= 6, timeout=60)
                assert list(collector.sources) == [pg_db.dbname, kept_name, dropped_name]
                assert obs.health.report()["dependencies"]["database"]["ok"]
                assert ingest.metric(obs, "startupmonkey_collector_database_reachable",
                              database=dropped_name) == 0
                assert ingest.metric(obs, "startupmonkey_collector_database_reachable",
                              database=kept_name) == 1
    for snap in errors:
        assert snap.database.dbname == dropped_name and snap.database.also_watched
        assert dropped_name in snap.collector.connection_error
        assert not snap.collector.sections and not snap.tables
    assert password not in repr([r.snapshot for r in recorder.received])
    after = [s for s in recorder.snapshots() if s.sequence > dropped_at]
    assert {s.database.dbname for s in after} == {pg_db.dbname, kept_name}
    home = [s for s in after if s.database.dbname == pg_db.dbname]
    assert all(sections(s).get(pb.SECTION_SESSIONS) == pb.SECTION_STATE_OK for s in home)


def collector_sessions(cluster: postgres.PostgresCluster) -> set[str]:
    """Databases the collector has a session in."""
    with cluster.connect() as conn:
        rows = conn.execute("SELECT datname FROM pg_catalog.pg_stat_activity "
                            "WHERE application_name = 'startupmonkey-collector'").fetchall()
    return {str(row[0]) for row in rows}


async def test_a_reload_opens_and_closes_databases(
        pg_private_cluster_factory: components.PrivateClusterFactory, tmp_path: Path) -> None:
    cluster = pg_private_cluster_factory()
    for name in ("app", "first", "second"):
        cluster.create_database(name)
    path = tmp_path / "config.yaml"
    async with ingest.ingest_server() as recorder:
        config = watching(ingest.collector_config(cluster.database("app"), recorder.address),
                          ["first"])
        path.write_text(settings.dump(config))
        async with ingest.running_collector(config, config_path=path) as (collector, _):
            await eventually(lambda: {s.database.dbname for s in recorder.snapshots()}
                             == {"app", "first"}, timeout=60)
            first = collector.sources["first"]
            path.write_text(settings.dump(watching(config, ["first", "second"])))
            await eventually(lambda: "second" in {s.database.dbname
                                                  for s in recorder.snapshots()}, timeout=60)
            assert collector.sources["first"] is first  # kept, connection and all
            path.write_text(settings.dump(watching(config, ["second"])))
            await eventually(lambda: list(collector.sources) == ["app", "second"], timeout=60)
            await eventually(lambda: collector_sessions(cluster) == {"app", "second"},
                             timeout=30)
            reloaded_at = recorder.received[-1].snapshot.sequence
            await eventually(lambda: len([s for s in recorder.snapshots()
                                          if s.sequence > reloaded_at]) >= 4, timeout=60)
    after = {s.database.dbname for s in recorder.snapshots() if s.sequence > reloaded_at}
    assert after == {"app", "second"}
    # Every connection closed on stop; the server notices a closed socket a moment later.
    await eventually(lambda: collector_sessions(cluster) == set(), timeout=30)


async def test_all_follows_the_databases_of_the_server(
        pg_private_cluster_factory: components.PrivateClusterFactory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "DISCOVERY_SECONDS", 1.0)
    cluster = pg_private_cluster_factory()
    for name in ("app", "skipme", "other"):
        cluster.create_database(name)
    async with ingest.ingest_server() as recorder:
        config = watching(ingest.collector_config(cluster.database("app"), recorder.address),
                          "all", exclude=["skipme"])

        def watched(expected: set[str]) -> bool:
            latest_round = {s.database.dbname for s in recorder.snapshots()[-len(expected):]}
            assert latest_round == expected, latest_round
            return True

        async with ingest.running_collector(config) as (collector, obs):
            await eventually(lambda: watched({"app", "postgres", "other"}), timeout=60)
            assert next(iter(collector.sources)) == "app"
            await asyncio.to_thread(cluster.create_database, "later")
            await eventually(lambda: watched({"app", "postgres", "other", "later"}),
                             timeout=60)
            await asyncio.to_thread(cluster.drop_database, "other")
            await eventually(lambda: set(collector.sources) == {"app", "postgres", "later"},
                             timeout=60)
            stopped_at = recorder.received[-1].snapshot.sequence
            await eventually(lambda: len([s for s in recorder.snapshots()
                                          if s.sequence > stopped_at]) >= 6, timeout=60)
            assert ingest.metric(obs, "startupmonkey_collector_databases", state="watched") == 3
    seen = {s.database.dbname for s in recorder.snapshots(connected=False)}
    assert seen == {"app", "postgres", "other", "later"}
    assert not {s.database.dbname for s in recorder.snapshots(connected=False)
                if s.sequence > stopped_at} & {"other"}


async def test_the_analyser_keeps_one_history_per_database(
        pg_cluster: postgres.PostgresCluster, pg_db: postgres.PostgresDatabase) -> None:
    token = secrets.token_hex(3)
    names = [f"sm_dbs_a_{token}", f"sm_dbs_b_{token}"]
    with database(pg_cluster, names[0]) as first, database(pg_cluster, names[1]) as second:
        for db, table in ((pg_db, "home_t"), (first, "a_t"), (second, "b_t")):
            workload(db, table)
        config = watching(ingest.collector_config(pg_db, "127.0.0.1:0"), names)
        analyser_config = _analyser_config(config, names)
        meters = metrics.Metrics(prometheus_client.CollectorRegistry())
        core = engine.Engine(analyser_config, meters)
        published: list[messages.Detection] = []

        async def publish(detection: messages.Detection) -> bool:
            published.append(detection)
            return True

        analyser = server.IngestServer(server.IngestServicer(core, publish, meters,
                                                             analyser_config.monitor))
        port = await analyser.start("127.0.0.1:0")
        try:
            assert config.collector is not None
            config.collector.analyser_address = f"127.0.0.1:{port}"
            def filled() -> bool:
                samples = {h.newest.snapshot.database.dbname: len(h.samples)
                           for h in core.histories.values() if h.newest is not None}
                assert set(samples) == {pg_db.dbname, *names}, samples
                assert min(samples.values()) >= 3, samples
                return True

            def idle_elsewhere() -> messages.Detection:
                found = [d for d in published if d.database == names[0]
                         and d.detector is DetectorId.IDLE_IN_TRANSACTION
                         and d.target.pid == held.pid]
                assert found, [(d.database, d.key) for d in published]
                return found[0]

            # A session of another database, idle in its transaction: seen through the home
            # database's sessions carried in that database's snapshot, judged in its window.
            with workloads.idle_in_transaction(first.conninfo) as held:
                async with ingest.running_collector(config) as (_, obs):
                    await eventually(filled, timeout=60)
                    detection = await eventually(idle_elsewhere, timeout=60)
                    assert ingest.metric(obs, "startupmonkey_collector_acks_total",
                                         status="rejected") == 0
            assert detection.key.startswith(
                f"{config.monitor.namespace}/{config.monitor.name}/idle_in_transaction/"
                f"db={names[0]}/pid={held.pid}@")
            assert not [d for d in published if d.detector is DetectorId.IDLE_IN_TRANSACTION
                        and d.database != names[0]]
        finally:
            await analyser.stop()
    tables = {pg_db.dbname: "home_t", names[0]: "a_t", names[1]: "b_t"}
    assert len(core.histories) == len(tables)
    for hist in core.histories.values():
        newest = hist.newest
        assert newest is not None
        name = newest.snapshot.database.dbname
        assert all(s.snapshot.database.dbname == name for s in hist.samples)
        assert newest.snapshot.database.also_watched == (name != pg_db.dbname)
        assert hist.catalog is not None  # each database's own catalog reached its history
        assert {r.name for r in hist.catalog.relations} == {tables.pop(name)}
    assert not tables  # one history per database


def _analyser_config(config: settings.ComponentConfig, names: list[str]
                     ) -> settings.ComponentConfig:
    """The analyser's config for the same monitor, watching the same databases; a session
    idle in its transaction for a second is a problem."""
    block: dict[str, Any] = {"listenAddress": "127.0.0.1:0", "databases": names}
    spec = config.spec.dump()
    spec.setdefault("thresholds", {})["idle_in_transaction"] = {"maxDuration": "1s"}
    return settings.ComponentConfig.model_validate(
        {"monitor": config.monitor.dump(), "spec": spec, "analyser": block})
