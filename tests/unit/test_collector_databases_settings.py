"""Several databases in one collector, without a server: the ``databases`` setting, which
sources the collector keeps (and in which role), and the stream's per-database catalog and
text requests. The real thing runs in ``tests/integration/test_collector_databases.py``.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import prometheus_client
import pydantic
import pytest
import yaml
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from startupmonkey import observability, settings
from startupmonkey.collector import metrics, queries, service, source, state, stream
from startupmonkey.models import monitor
from startupmonkey.v1 import ingest_pb2
from startupmonkey.v1 import snapshot_pb2 as pb

HOME = "shop"


def collector_block(**fields: Any) -> dict[str, Any]:
    return {"database": {"host": "db", "dbname": HOME, "user": "collector"}, **fields}


def collector_settings(**fields: Any) -> settings.CollectorSettings:
    return settings.CollectorSettings.model_validate(collector_block(**fields))


def config(**fields: Any) -> settings.ComponentConfig:
    spec = monitor.DatabaseMonitorSpec.model_validate({
        "database": {"host": "db", "dbname": HOME, "credentialsSecret": {"name": "s"}},
        "interval": "1s"})
    return settings.ComponentConfig(
        monitor=settings.MonitorRef(namespace="prod", name="shop"), spec=spec,
        collector=collector_settings(**fields))


def problems(**fields: Any) -> str:
    with pytest.raises(pydantic.ValidationError) as caught:
        collector_settings(**fields)
    return "; ".join(str(e["msg"]) for e in caught.value.errors())


# -- the setting ------------------------------------------------------------------------------


def test_the_default_watches_the_home_database_and_renders_as_before() -> None:
    block = collector_settings()
    assert block.databases == [] and block.exclude_databases == []
    assert block.other_databases() == []
    assert "databases" not in block.dump() and "excludeDatabases" not in block.dump()


def test_a_list_a_home_named_again_and_all() -> None:
    listed = collector_settings(databases=["billing", HOME, "crm"])
    assert listed.other_databases() == ["billing", "crm"]
    assert listed.dump()["databases"] == ["billing", HOME, "crm"]
    everything = collector_settings(databases="all", excludeDatabases=["scratch"])
    assert everything.databases == "all" and everything.other_databases() == []
    assert everything.dump()["excludeDatabases"] == ["scratch"]
    # Names as PostgreSQL takes them: any UTF-8 up to 63 bytes (a 2-byte letter 31 times).
    odd = ["a b", "Ü'\"x", "\u00e9" * 31, "x" * 63, " "]
    assert collector_settings(databases=odd).other_databases() == odd


@pytest.mark.parametrize(("fields", "expected"), [
    ({"databases": "ALL"}, "a list of database names or the word all, not 'ALL'"),
    ({"databases": ["a", ""]}, "cannot be empty"),
    ({"databases": ["x" * 64]}, "is 64 bytes long; a database name has at most 63"),
    ({"databases": ["\u00e9" * 32]}, "is 64 bytes long"),
    ({"databases": ["a\0b"]}, "contains a NUL character"),
    ({"databases": ["\ud800"]}, "is not valid UTF-8"),
    ({"databases": ["a", "b", "a"]}, "'a' is listed twice"),
    ({"databases": [HOME, HOME]}, f"'{HOME}' is listed twice"),
    ({"databases": [2024]}, "2024 is not a string (quote it)"),
    ({"databases": {"a": 1}}, "databases is a list of database names"),
    ({"databases": [f"d{n}" for n in range(settings.MAX_DATABASES)]},
     f"names {settings.MAX_DATABASES} databases besides the home one; at most "
     f"{settings.MAX_DATABASES - 1}"),
    ({"excludeDatabases": ["a"]}, "excludeDatabases applies only with databases: all"),
    ({"databases": "all", "excludeDatabases": [HOME]}, "names the home database 'shop'"),
    ({"databases": "all", "excludeDatabases": ["a", "a"]}, "'a' is listed twice"),
])
def test_refused_with_a_message_that_says_why(fields: dict[str, Any], expected: str) -> None:
    assert expected in problems(**fields)


def test_every_bad_name_is_named_at_once_and_long_ones_are_cut() -> None:
    message = problems(databases=["", "y" * 500, "ok", "ok"])
    assert "empty" in message and "500 bytes long" in message and "listed twice" in message
    assert "y" * 60 not in message


def test_a_config_file_with_a_bad_list_names_the_field(tmp_path: Path) -> None:
    good = config()
    text = yaml.safe_load(settings.dump(good))
    text["collector"]["databases"] = ["billing", ""]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(text))
    with pytest.raises(ValueError, match=r"collector\.databases: .*cannot be empty"):
        settings.load(path)
    text["collector"]["databases"] = "all"
    text["collector"]["excludeDatabases"] = ["scratch"]
    path.write_text(yaml.safe_dump(text))
    loaded = settings.load(path).collector
    assert loaded is not None and loaded.exclude_databases == ["scratch"]


# Any strings: ASCII, any letters, surrogates, NULs, empties, long ones; and not-strings.
NAMES = st.one_of(st.text(max_size=70), st.text(alphabet=st.characters(categories=["Cs"]),
                                                max_size=3),
                  st.sampled_from(["", "\0", "a\0", "x" * 63, "x" * 64, HOME, "all"]))
JUNK = st.one_of(st.lists(st.one_of(NAMES, st.integers(), st.none()), max_size=40), NAMES,
                 st.integers(), st.none(), st.dictionaries(NAMES, NAMES, max_size=2))
# Mostly acceptable lists too, so both outcomes are common.
PLAUSIBLE = st.lists(st.text(st.characters(exclude_characters="\0"), min_size=1,
                             max_size=15), max_size=6, unique=True)
DATABASES = st.integers(0, 9).flatmap(
    lambda n: PLAUSIBLE if n < 4 else st.just("all") if n < 7 else JUNK)
EXCLUDE = st.integers(0, 9).flatmap(
    lambda n: st.just([]) if n < 5 else PLAUSIBLE if n < 8 else JUNK)


def _valid(name: object) -> bool:
    if not isinstance(name, str) or not name or "\0" in name:
        return False
    try:
        return len(name.encode("utf-8")) <= 63
    except UnicodeEncodeError:
        return False


def _accepted(databases: object, exclude: object) -> bool:
    """What the setting should accept, said independently of its code."""
    if not isinstance(exclude, list) or not all(_valid(n) for n in exclude) \
            or len(set(exclude)) != len(exclude) or HOME in exclude:
        return False
    if databases == "all":
        return True
    if exclude:
        return False
    if not isinstance(databases, list) or not all(_valid(n) for n in databases):
        return False
    return len(set(databases)) == len(databases) and \
        len(set(databases) - {HOME}) < settings.MAX_DATABASES


@given(databases=DATABASES, exclude=EXCLUDE)
@hsettings(max_examples=400, deadline=None)
def test_any_input_is_accepted_or_refused_with_a_reason(databases: object,
                                                       exclude: object) -> None:
    fields = {"databases": databases, "excludeDatabases": exclude}
    try:
        block = collector_settings(**fields)
    except pydantic.ValidationError as exc:
        assert not _accepted(databases, exclude), exc
        for error in exc.errors():
            assert error["msg"] and len(error["msg"]) < 4000
            assert "Traceback" not in error["msg"]
        return
    assert _accepted(databases, exclude), fields
    if databases != "all":
        assert block.other_databases() == [n for n in databases  # type: ignore[union-attr]
                                           if n != HOME]


# -- which sources the collector keeps --------------------------------------------------------


def collector(**fields: Any) -> service.Collector:
    return make(**fields)[0]


def make(**fields: Any) -> tuple[service.Collector, observability.Observability]:
    obs = observability.Observability("collector")
    return service.Collector(config(**fields), obs), obs


def sample(obs: observability.Observability, name: str, **labels: str) -> float:
    return obs.registry.get_sample_value(name, labels) or 0.0


def roles(c: service.Collector) -> list[tuple[str, bool, bool]]:
    return [(name, s.role.home, s.role.alone) for name, s in c.sources.items()]


def test_one_database_is_today_s_collector() -> None:
    c = collector()
    assert roles(c) == [(HOME, True, True)]
    assert c.buffer.capacity == 30 and c.texts.capacity == 2000
    assert c.home.login.dbname == HOME and c.home.login == c.login
    # LOCK_WAITS as before: every wait of the cluster, no parameter.
    everything = queries.lock_waits(150000)
    assert "%s" not in everything and "pg_stat_activity" not in everything
    assert queries.lock_waits(150000, of_database=True).count("%s") == 1


def test_sources_for_a_list_share_the_login_and_size_the_stores() -> None:
    c = collector(databases=["billing", HOME, "crm"], bufferSnapshots=10, topStatements=400)
    assert roles(c) == [(HOME, True, False), ("billing", False, False),
                        ("crm", False, False)]
    for name, database in c.sources.items():
        assert database.login.dbname == name
        assert database.login.user == "collector" and database.login.host == "db"
        assert database.catalogs is c.catalogs.store(name)
    assert c.buffer.capacity == 30  # bufferSnapshots rounds of three snapshots
    assert c.texts.capacity == 10 * 400  # as for one database: room for ten rounds' tops
    many = collector(databases=[f"d{n}" for n in range(11)], topStatements=100)
    assert many.texts.capacity == 2 * 100 * 12  # room for two rounds of every database's


async def test_a_reload_opens_and_closes_sources() -> None:
    c = collector(databases=["billing", "crm"])
    billing = c.sources["billing"]
    c.texts.want(7, "crm")
    await c.reload(config(databases=["billing", "hr"]))
    assert list(c.sources) == [HOME, "billing", "hr"]
    assert c.sources["billing"] is billing  # kept, with its connection and state
    assert c.texts.wanted == set()  # crm's request went with it
    await c.reload(config())
    assert roles(c) == [(HOME, True, True)]
    assert c.buffer.capacity == 30


async def test_all_watches_what_the_server_lists_less_the_excluded(
        monkeypatch: pytest.MonkeyPatch) -> None:
    c = collector(databases="all", excludeDatabases=["scratch"])
    assert list(c.sources) == [HOME]  # nothing found yet
    listings = [["postgres", HOME, "scratch", "billing"], ["postgres", HOME, "crm"]]

    async def names() -> list[str] | None:
        return listings[0]

    monkeypatch.setattr(c.home, "database_names", names)
    await c._discover()
    assert list(c.sources) == [HOME, "postgres", "billing"]
    assert roles(c)[0] == (HOME, True, False)
    listings.pop(0)
    await c._discover()  # not due yet
    assert list(c.sources) == [HOME, "postgres", "billing"]
    c._rediscover = True  # a watched one was unreachable: look again at once
    await c._discover()
    assert list(c.sources) == [HOME, "postgres", "crm"]
    # An exclude list changed by a reload applies at once, before the next listing.
    await c.reload(config(databases="all", excludeDatabases=["crm"]))
    assert list(c.sources) == [HOME, "postgres"]


async def test_all_beyond_the_limit_leaves_the_newest_out(
        monkeypatch: pytest.MonkeyPatch) -> None:
    c, obs = make(databases="all")
    found = [f"d{n:03}" for n in range(settings.MAX_DATABASES + 4)]

    async def names() -> list[str] | None:
        return found

    monkeypatch.setattr(c.home, "database_names", names)
    await c._discover()
    assert list(c.sources) == [HOME, *found[:settings.MAX_DATABASES - 1]]
    databases = "startupmonkey_collector_databases"
    assert sample(obs, databases, state="watched") == settings.MAX_DATABASES
    assert sample(obs, databases, state="left_out") == 5


async def test_a_home_that_cannot_list_keeps_what_is_watched(
        monkeypatch: pytest.MonkeyPatch) -> None:
    c = collector(databases="all")

    async def unreachable() -> list[str] | None:
        return None

    monkeypatch.setattr(c.home, "database_names", unreachable)
    await c._discover()
    assert list(c.sources) == [HOME]


# -- the stream: catalogs and texts per database ----------------------------------------------


class Stream:
    def __init__(self) -> None:
        registry = prometheus_client.CollectorRegistry()
        self.buffer = state.SnapshotBuffer(10, lambda e, why: None)
        self.texts = state.TextStore()
        self.catalogs = state.Catalogs()
        self.client = stream.StreamClient("127.0.0.1:1", self.buffer, self.texts,
                                          self.catalogs, metrics.Metrics(registry),
                                          observability.Health(registry))
        self.session = stream._Session()
        now = datetime.datetime.now(datetime.UTC)
        for name in ("a", "b"):
            catalog = pb.Catalog(hash=f"h-{name}")
            catalog.relations.add(relid=1, name=f"t_{name}")
            self.catalogs.store(name).put(state.StoredCatalog(catalog, now, 0.1))
        self.texts.put(pb.StatementText(queryid=1, text="SELECT 1"))

    def send(self, sequence: int, database: str) -> pb.Snapshot:
        entry = state.Entry(pb.Snapshot(sequence=sequence, catalog_hash=f"h-{database}"),
                            (1,), database=database)
        self.buffer.add(entry)
        snap, flight = self.client.complete(entry, self.session)
        self.session.in_flight[sequence] = flight
        return snap

    def ack(self, sequence: int, **kwargs: Any) -> None:
        self.client.handle_ack(ingest_pb2.Ack(sequence=sequence,
                                              status=ingest_pb2.ACK_STATUS_ACCEPTED, **kwargs),
                               self.session)


def test_each_database_s_catalog_goes_once_and_again_when_its_ack_asks() -> None:
    s = Stream()
    first_a, first_b = s.send(1, "a"), s.send(2, "b")
    assert first_a.catalog.relations[0].name == "t_a"
    assert first_b.catalog.relations[0].name == "t_b"
    assert [t.queryid for t in first_a.statement_texts] == [1] and not first_b.statement_texts
    s.ack(1)
    s.ack(2, want_catalog=True)  # on b's snapshot: b's catalog again, not a's
    assert not s.send(3, "a").HasField("catalog")
    assert s.send(4, "b").catalog.hash == "h-b"
    s.ack(3)
    s.ack(4)
    assert not s.send(5, "a").HasField("catalog") and not s.send(6, "b").HasField("catalog")


def test_an_unapplied_snapshot_carries_its_database_s_catalog_again() -> None:
    s = Stream()
    s.send(1, "a")
    s.send(2, "b")
    s.client.handle_ack(ingest_pb2.Ack(sequence=1, status=ingest_pb2.ACK_STATUS_REJECTED),
                        s.session)
    assert s.send(3, "a").HasField("catalog")
    assert not s.send(4, "b").HasField("catalog")


def test_texts_asked_for_are_read_in_the_database_whose_ack_asked() -> None:
    s = Stream()
    s.send(1, "a")
    s.send(2, "b")
    s.ack(2, want_statement_texts=[55, 1])
    assert s.texts.missing([], "a") == []
    assert s.texts.missing([], "b") == [55]
    s.texts.give_up([q for q in s.texts.missing([], "a")])  # a found nothing: b still asks
    assert s.texts.missing([], "b") == [55]
    # The text held already goes with the next snapshot, whichever database it is of.
    assert [t.queryid for t in s.send(3, "a").statement_texts] == [1]
    assert s.texts.wanted == {55}


def test_catalogs_are_kept_per_database_and_found_by_hash() -> None:
    catalogs = state.Catalogs()
    now = datetime.datetime.now(datetime.UTC)
    for name in ("a", "b", "c"):
        for n in range(4):  # each database keeps its last three
            catalogs.store(name).put(state.StoredCatalog(pb.Catalog(hash=f"{name}{n}"), now, 0))
    assert catalogs.get("a0") is None and catalogs.get("a1") is not None
    assert all(catalogs.get(f"{name}3") is not None for name in "abc")
    latest = catalogs.store("b").latest
    assert latest is not None and latest.catalog.hash == "b3"
    catalogs.drop("b")
    assert catalogs.get("b3") is None and catalogs.get("c3") is not None


def test_a_non_home_source_never_touches_readiness() -> None:
    registry = prometheus_client.CollectorRegistry()
    health = observability.Health(registry)
    health.expect("database")
    login = config().collector.database.login()  # type: ignore[union-attr]
    other = source.DatabaseSource(login, metrics.Metrics(registry), health, state.TextStore(),
                                  state.CatalogStore(), source.Role(home=False, alone=False))
    other._failed("cannot connect")
    other.report_ready("connected")
    assert health.report()["dependencies"]["database"]["detail"] != "cannot connect"
    assert not health.report()["dependencies"]["database"]["ok"]


def test_a_listed_database_that_is_the_home_one_under_another_name_sends_nothing() -> None:
    """Behind a pooler the home database may be listed under its real name: same server, same
    oid. Its snapshot then carries only the envelope and a connection_error saying why, so
    the analyser reports nothing twice."""
    from types import SimpleNamespace

    from startupmonkey.collector import service
    from startupmonkey.v1 import snapshot_pb2 as pb

    def snap(dbname: str, datid: int) -> pb.Snapshot:
        made = pb.Snapshot(collector_id="c", sequence=2)
        made.database.dbname, made.database.datid = dbname, datid
        made.database.system_identifier = 7
        made.tables.add(relid=1, name="orders")
        made.sessions.add(pid=5)
        made.collector.sections.add(section=pb.SECTION_TABLES)
        return made

    home, alias, other = snap("shop", 16384), snap("shop_real", 16384), snap("billing", 20000)
    assert service._same_database(home, alias) and not service._same_database(home, other)
    holder = SimpleNamespace(_aliases_logged=set())
    service.Collector._home_again(holder, "shop_real", alias)  # type: ignore[arg-type]
    assert not alias.tables and not alias.sessions and not alias.collector.sections
    assert alias.database.datid == 16384 and alias.sequence == 2
    assert "home database under another name" in alias.collector.connection_error
    assert holder._aliases_logged == {"shop_real"}
