"""Changed-only statement reads and an analyser that cannot read them (review of issue 19
items 3 and 4): one that lost a database's history while the collector's stream kept what it
had carried of it, one that does not know changed-only reads (an older version), and a
database the collector stops watching.

No network: the real :class:`stream.StreamClient` (``complete``, ``handle_ack``) and real
:class:`engine.Engine` objects, the acks built as the server builds them
(``engine.Applied.ack``). The whole set of rounds is also fed, as the collector read it, to a
second engine: the reference of what full reads give.
"""

from __future__ import annotations

import prometheus_client

from startupmonkey import observability, settings
from startupmonkey.analyser import engine
from startupmonkey.analyser import metrics as analyser_metrics
from startupmonkey.collector import metrics, state, stream
from startupmonkey.v1 import ingest_pb2
from startupmonkey.v1 import snapshot_pb2 as pb
from tests.support import snapshots_build as build
from tests.unit.test_analyser_engine import config

S = pb.Section
WITHOUT_STATEMENTS = [s for s in build.ALL_SECTIONS if s != S.SECTION_STATEMENTS]
SLOW = {"slow_statement": {"minCalls": 1, "minMeanTime": "1ms", "minShare": 0.5}}
OTHER, OTHER_DATID = "analytics", 20_000


def _engine() -> engine.Engine:
    cfg = config(**SLOW)
    cfg = cfg.model_copy(update={"analyser": settings.AnalyserSettings.model_validate(
        {"databases": [OTHER]})})
    return engine.Engine(cfg, analyser_metrics.Metrics(prometheus_client.CollectorRegistry()))


def _snapshot(dbname: str, datid: int, at: float, seq: int,
              server: dict[int, list[float]] | None) -> pb.Snapshot:
    """A read of ``dbname``; ``server``: its pg_stat_statements (queryid: [calls, total ms]),
    None: a round that does not read them."""
    if server is None:
        snap = build.snapshot(at, seq=seq, sections=WITHOUT_STATEMENTS)
        snap.ClearField("statements_info")
    else:
        entries = [pb.StatementStats(queryid=q, userid=10, dbid=datid, toplevel=True,
                                     calls=int(c), total_exec_time_ms=t, rows=int(c))
                   for q, (c, t) in sorted(server.items())]
        snap = build.snapshot(at, seq=seq, statements=entries)
        snap.statements_info.stats_reset.CopyFrom(build.ts(-1000))
        snap.statements_info.dealloc = 0
    snap.database.dbname, snap.database.datid = dbname, datid
    snap.database.also_watched = dbname != build.DBNAME
    return snap


def without_statements(snap: pb.Snapshot) -> pb.Snapshot:
    """``snap`` as a round that did not read pg_stat_statements."""
    out = pb.Snapshot()
    out.CopyFrom(snap)
    kept = [s for s in out.collector.sections if s.section != S.SECTION_STATEMENTS]
    del out.collector.sections[:]
    out.collector.sections.extend(kept)
    out.ClearField("statements")
    out.ClearField("statements_info")
    return out


class Chain:
    """A collector's stream (real ``complete`` and ``handle_ack``) to an engine, and the same
    rounds read in full by a reference engine (their statements left out where the streamed
    engine could not read them, as that is what it then answers like)."""

    def __init__(self, understands: bool = True) -> None:
        registry = prometheus_client.CollectorRegistry()
        self.buffer = state.SnapshotBuffer(100, lambda e, why: None)
        self.client = stream.StreamClient("127.0.0.1:1", self.buffer, state.TextStore(),
                                          state.Catalogs(), metrics.Metrics(registry),
                                          observability.Health(registry))
        self.session = stream._Session()
        self.streamed, self.full = _engine(), _engine()
        self.understands = understands
        self.seq, self.at = 0, 0.0
        self.applied: list[engine.Applied] = []

    def round(self, dbname: str, datid: int, server: dict[int, list[float]] | None,
              gap: float = 10.0) -> pb.Snapshot:
        self.seq += 1
        self.at += gap
        read = _snapshot(dbname, datid, self.at, self.seq, server)
        entry = state.Entry(read, (), database=dbname)
        self.buffer.add(entry)
        sent, flight = self.client.complete(entry, self.session)
        self.session.in_flight[self.seq] = flight
        written = pb.Snapshot()
        written.CopyFrom(sent)  # as written: the engine may drop statements it cannot read
        applied = self.streamed.apply(sent, {})
        self.applied.append(applied)
        self.full.apply(without_statements(read) if applied.want_full_statements else read, {})
        ack = applied.ack(self.seq)
        if not self.understands:  # an analyser from before changed-only reads
            ack.ClearField("understands_changed_only_statements")
            ack.ClearField("want_full_statements")
        self.client.handle_ack(ack, self.session)
        return written


def _slow(core: engine.Engine) -> list[str]:
    return sorted(k for k in core.lifecycle.active if "slow_statement" in k)


def _omitted(snap: pb.Snapshot) -> int:
    return snap.statements_info.unchanged_omitted


def test_a_retired_history_gets_the_full_set_and_no_false_finding() -> None:
    """The analyser retires a database's history after RETIRE_AFTER s without its snapshots;
    the collector's stream still holds what it carried of it. When the database comes back,
    its first read is changed-only: the analyser must not read it against a history it does
    not have (statement A, fast, always moving, would look like the whole database time;
    the slow B, unchanged that round, would be missing), and asks for the full set."""
    c = Chain()
    server = {q: [1.0, 1.0] for q in range(1, 21)}
    sent = [c.round(OTHER, OTHER_DATID, server) for _ in range(4)]
    # The capability came with the 1st ack; the history keeps no view of the newest values
    # before its first changed-only read (full reads only cost nothing more): that one is
    # unreadable and asked again in full.
    assert [_omitted(s) for s in sent] == [0, 20, 0, 20]
    assert [a.want_full_statements for a in c.applied] == [False, True, False, False]
    for _ in range(int(engine.RETIRE_AFTER / 10) + 10):  # analytics silent; home goes on
        c.round(build.DBNAME, build.DATID, None)
    assert (False, OTHER) not in c.streamed.histories  # retired
    assert OTHER in c.session.statements  # the stream still remembers analytics' entries
    omitted, asked = [], []
    for r in range(1, 9):
        server[1][0] += 20
        server[1][1] += 20 * 5.0  # A: 5 ms a call, every round
        if r % 2 == 0:
            server[2][0] += 40
            server[2][1] += 40 * 50.0  # B: 50 ms a call, every other round
        sent_now = c.round(OTHER, OTHER_DATID, server)
        omitted.append(_omitted(sent_now))
        asked.append(c.applied[-1].want_full_statements)
        assert _slow(c.streamed) == _slow(c.full), r
    # Back: changed-only (unreadable: ignored, the full set asked for), then full, then
    # changed-only again against the history the full one started.
    assert omitted[:3] == [19, 0, 19] and asked == [True] + [False] * 7
    assert _slow(c.full) and _slow(c.streamed) == _slow(c.full)  # B is slow, and only B
    assert [k.rsplit("/", 1)[1] for k in _slow(c.full)] == ["queryid=2"]


def test_an_unreadable_changed_only_read_is_a_round_without_statements() -> None:
    """A new history whose first statement sample is changed-only: the statement detectors
    wait (not collected) instead of judging the incomplete entries."""
    core = _engine()
    snap = _snapshot(build.DBNAME, build.DATID, 10.0, 1, {1: [5.0, 5.0], 2: [1.0, 1.0]})
    snap.statements_info.unchanged_omitted = 7
    applied = core.apply(snap, {})
    assert applied.status == ingest_pb2.ACK_STATUS_ACCEPTED and applied.want_full_statements
    ack = applied.ack(1)
    assert ack.want_full_statements and ack.understands_changed_only_statements
    hist = core.histories[(True, build.DBNAME)]
    latest = hist.samples[-1]
    assert not latest.present(S.SECTION_STATEMENTS) and not latest.snapshot.statements
    assert not hist.window().statements


def test_an_analyser_that_does_not_say_it_understands_gets_full_sets_only() -> None:
    """Version skew: an older analyser never sets ``understands_changed_only_statements``;
    its stream carries every entry of every read. A new one gets changed-only reads from its
    first ack on (the snapshots written before it are full)."""
    for understands in (False, True):
        c = Chain(understands=understands)
        server = {q: [1.0, 1.0] for q in range(1, 6)}
        omitted = []
        for _ in range(5):
            server[1][0] += 1
            omitted.append(_omitted(c.round(build.DBNAME, build.DATID, server)))
        # The first changed-only read is asked again in full (the history had no view yet).
        assert omitted == ([0] * 5 if not understands else [0, 4, 0, 4, 4])


def test_pipelined_reads_before_the_first_ack_are_full() -> None:
    c = Chain()
    entries = [pb.StatementStats(queryid=1, userid=10, dbid=build.DATID, toplevel=True, calls=1)]
    first = build.snapshot(10.0, seq=1, statements=entries)
    snaps = []
    for seq in (1, 2):
        read = pb.Snapshot()
        read.CopyFrom(first)
        read.sequence = seq
        entry = state.Entry(read, (), database="app")
        c.buffer.add(entry)
        snap, flight = c.client.complete(entry, c.session)
        c.session.in_flight[seq] = flight
        snaps.append(snap)
    assert [_omitted(s) for s in snaps] == [0, 0]


def test_want_full_statements_drops_what_the_stream_carried_of_that_database() -> None:
    session = stream._Session(changed_only=True)
    entries = [pb.StatementStats(queryid=q, userid=10, dbid=build.DATID, toplevel=True,
                                 calls=1) for q in (1, 2)]

    def read(seq: int, database: str) -> pb.Snapshot:
        snap = build.snapshot(10.0 * seq, seq=seq, statements=entries)
        flight = stream._InFlight(0.0, (), None, database)
        flight.statements = session.trim_statements(snap, database)
        session.acked(seq, flight)
        return snap

    assert [_omitted(read(s, "app")) for s in (1, 2)] == [0, 2]
    read(3, "other")
    session.want_full_statements(2, "app")
    assert "app" not in session.statements and "other" in session.statements
    assert _omitted(read(4, "app")) == 0  # a new full set, started at 4
    session.want_full_statements(2, "app")  # a late answer about an older read: kept
    assert _omitted(read(5, "app")) == 2


def test_a_database_no_longer_watched_is_forgotten_by_the_stream() -> None:
    """What the stream carried of a database (statements, catalog) goes when the collector
    stops watching it (bounded memory; and should it come back, the analyser may have
    retired its history: it starts with the full set)."""
    c = Chain()
    server = {q: [1.0, 1.0] for q in range(1, 4)}
    for _ in range(3):  # full, changed-only (asked again: no view yet), full
        c.round(build.DBNAME, build.DATID, server)
        c.round(OTHER, OTHER_DATID, server)
    assert set(c.session.statements) == {build.DBNAME, OTHER}
    c.client._session = c.session
    c.client.watch([build.DBNAME])
    assert set(c.session.statements) == {build.DBNAME}
    # A snapshot of it still buffered goes out in full and is not remembered.
    assert _omitted(c.round(OTHER, OTHER_DATID, server)) == 0
    assert set(c.session.statements) == {build.DBNAME}
    c.client.watch([build.DBNAME, OTHER])
    assert _omitted(c.round(OTHER, OTHER_DATID, server)) == 0
    assert _omitted(c.round(OTHER, OTHER_DATID, server)) == 3

