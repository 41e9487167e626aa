"""Changed-only statement reads, review of the memory and transport edges (issue 19 items 3
and 4): a read the transport cut (``snapshots.split``: items beyond
``MAX_CHUNKS_PER_SNAPSHOT``), a collector that never sends the full set again, the byte bound
of a busy database, an old collector that sends full reads only, and the counter of the reads
the analyser could not read.

No network: the real :class:`stream.StreamClient` (``_send`` into a recording call,
``handle_ack``), real :class:`engine.Engine` and :class:`history.History` objects.
"""

from __future__ import annotations

import asyncio

import prometheus_client
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from startupmonkey import observability, snapshots
from startupmonkey.analyser import engine, history
from startupmonkey.analyser import metrics as analyser_metrics
from startupmonkey.collector import metrics, state, stream
from startupmonkey.v1 import limits
from startupmonkey.v1 import snapshot_pb2 as pb
from tests.support import snapshots_build as build
from tests.unit.test_analyser_engine import config

S = pb.Section
FIELDS = ("calls", "total_exec_time_ms")


def _read(seq: int, server: dict[int, list[float]], tables: int = 0,
          n: int | None = None) -> pb.Snapshot:
    """A read of pg_stat_statements (queryid: [calls, total ms]) and ``tables`` tables."""
    entries = [pb.StatementStats(queryid=q, userid=10, dbid=build.DATID, toplevel=True,
                                 calls=int(c), total_exec_time_ms=t, rows=int(c))
               for q, (c, t) in sorted(server.items())]
    rows = [build.table(1000 + i, f"t{i:06d}_{'x' * 80}") for i in range(tables)]
    snap = build.snapshot(10.0 * seq, seq=seq, statements=entries, tables=rows)
    snap.statements_info.stats_reset.CopyFrom(build.ts(-100))
    snap.statements_info.dealloc = 0
    return snap


def _key(queryid: int) -> history.StatementKey:
    return (queryid, 10, build.DATID, True)


def _registry_engine() -> tuple[engine.Engine, prometheus_client.CollectorRegistry]:
    registry = prometheus_client.CollectorRegistry()
    return engine.Engine(config(), analyser_metrics.Metrics(registry)), registry


def _unreadable(registry: prometheus_client.CollectorRegistry, reason: str) -> float:
    return registry.get_sample_value(
        "startupmonkey_analyser_statement_reads_unreadable_total", {"reason": reason}) or 0.0


class _Call:
    """The collector's end of the stream, recording the chunks written."""

    def __init__(self) -> None:
        self.chunks: list[pb.Snapshot] = []

    async def write(self, chunk: pb.Snapshot) -> None:
        self.chunks.append(chunk)


def test_a_changed_only_read_the_transport_cut_is_sent_again_in_full_and_not_misread(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The collector records what it carried before ``snapshots.split`` cuts the snapshot;
    entries left out beyond MAX_CHUNKS_PER_SNAPSHOT must not be believed carried (they would
    be omitted as unchanged later, and the analyser would diff against stale values): the
    stream forgets the database's entries and the next read is full, and the analyser does
    not read the cut changed-only read (``truncated``), whose statements it ignores."""
    monkeypatch.setattr(limits, "MAX_CHUNKS_PER_SNAPSHOT", 1)  # a database whose tables fill
    registry = prometheus_client.CollectorRegistry()          # the 64 chunks
    buffer = state.SnapshotBuffer(100, lambda e, why: None)
    client = stream.StreamClient("127.0.0.1:1", buffer, state.TextStore(), state.Catalogs(),
                                 metrics.Metrics(registry), observability.Health(registry))
    session = stream._Session()
    streamed, streamed_registry = _registry_engine()
    truth, _ = _registry_engine()
    server = {q: [100.0, 100.0 * q] for q in range(1, 21)}
    plan = [(0, ()), (9_300, range(2, 21)), (0, (10,)), (0, (10,))]
    omitted, states = [], []
    for seq, (tables, running) in enumerate(plan, start=1):
        for q in running:
            server[q][0] += 5
            server[q][1] += 5.0
        read = _read(seq, server, tables)
        entry = state.Entry(read, (), database="app")
        buffer.add(entry)
        call = _Call()
        asyncio.run(client._send(call, session, entry))  # type: ignore[arg-type]
        got = snapshots.merge(call.chunks)
        omitted.append(got.statements_info.unchanged_omitted)
        states.append({s.section: s.state for s in got.collector.sections}[S.SECTION_STATEMENTS])
        if seq == 2:
            assert "app" not in session.statements  # forgotten as soon as it was cut
        applied = streamed.apply(got, {})
        truth.apply(_read(seq, server) if not applied.want_full_statements else got, {})
        client.handle_ack(applied.ack(seq), session)
    assert omitted[1] > 0 and states[1] == pb.SECTION_STATE_TRUNCATED  # changed-only, cut
    assert omitted[2] == 0 and omitted[3] == 19  # then the full set, then changed-only again
    assert _unreadable(streamed_registry, "truncated") == 1
    hist = streamed.histories[(True, build.DBNAME)]
    assert hist.unreadable_statements == "" and hist.samples[-1].changed_only
    window, expected = hist.window(), truth.histories[(True, build.DBNAME)].window()
    deltas = window.statement_deltas(FIELDS)
    assert deltas == expected.statement_deltas(FIELDS)
    assert deltas[_key(10)].values == {"calls": 5.0, "total_exec_time_ms": 5.0}
    assert dict(window.statements) == dict(expected.statements)


def test_a_changed_only_sample_whose_statements_are_truncated_is_not_read() -> None:
    hist = history.History()
    server = {q: [1.0, 1.0] for q in range(1, 6)}
    for seq in (1, 2, 3):  # full, first changed-only (no view yet: no_base), full
        snap = _read(seq, server)
        if seq == 2:
            snap.statements_info.unchanged_omitted = 1
        hist.add(history.Sample(snap))
    cut = build.snapshot(40.0, seq=4, statements=list(_read(4, server).statements)[:2],
                         truncated=[S.SECTION_STATEMENTS],
                         sections=[s for s in build.ALL_SECTIONS if s != S.SECTION_STATEMENTS])
    cut.statements_info.stats_reset.CopyFrom(build.ts(-100))
    cut.statements_info.unchanged_omitted = 3
    hist.add(history.Sample(cut))
    assert hist.unreadable_statements == "truncated" and hist.wants_full_statements
    assert not hist.samples[-1].present(S.SECTION_STATEMENTS)
    # The view is gone: the next changed-only read (a collector that did not send the full
    # set) cannot be read either.
    later = _read(5, server)
    later.statements_info.unchanged_omitted = 1
    hist.add(history.Sample(later))
    assert hist.unreadable_statements == "no_base"


def _changed_only(seq: int, server: dict[int, list[float]], moving: int) -> pb.Snapshot:
    server[moving][0] += 1
    server[moving][1] += 2.0
    snap = _read(seq, {moving: server[moving]})
    snap.statements_info.unchanged_omitted = len(server) - 1
    return snap


def test_a_collector_that_never_sends_the_full_set_again_is_cut_off_and_bounded() -> None:
    """A peer that sends changed-only reads for ever (never the full set an honest collector
    sends every STATEMENTS_FULL_EVERY reads): the history reads MAX_CHANGED_ONLY_RUN of them
    after the last full one, then asks for the full set (``run_too_long``) and forgets the
    view, so its memory does not grow with the rounds."""
    run = history.MAX_CHANGED_ONLY_RUN
    assert run == 2 * stream.STATEMENTS_FULL_EVERY
    hist = history.History()
    server = {q: [1.0, 1.0] for q in range(1, 201)}
    hist.add(history.Sample(_read(1, server)))
    hist.add(history.Sample(_changed_only(2, server, 1)))
    assert hist.unreadable_statements == "no_base"  # the first one: no view yet
    hist.add(history.Sample(_read(3, server)))  # the full set, as asked
    reasons, holders, view_bytes = [], [], []
    for seq in range(4, 4 + 3 * run):
        hist.add(history.Sample(_changed_only(seq, server, 1 + seq % 200)))
        reasons.append(hist.unreadable_statements)
        holders.append(len(hist._view_holders))
        view_bytes.append(hist.view_bytes)
    assert reasons == [""] * run + ["run_too_long"] + ["no_base"] * (2 * run - 1)
    assert max(holders) == 1 + run and holders[-1] == 0 and view_bytes[-1] == 0
    assert max(view_bytes) < 3 * view_bytes[0]
    hist.add(history.Sample(_read(4 + 3 * run, server)))  # a full set again: read again
    hist.add(history.Sample(_changed_only(5 + 3 * run, server, 7)))
    assert hist.unreadable_statements == "" and len(hist._view_holders) == 2


_peer_round = st.fixed_dictionaries({
    "changed_only": st.integers(0, 9).map(lambda n: n > 0),
    "truncated": st.integers(0, 9).map(lambda n: n == 0),
    "entries": st.lists(st.integers(1, 30), max_size=30, unique=True),
    "calls": st.integers(1, 1_000),
})


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rounds=st.lists(_peer_round, min_size=1, max_size=70))
def test_whatever_a_peer_sends_the_view_is_bounded(rounds: list[dict[str, object]]) -> None:
    """Full and changed-only reads, truncated or not, in any order (a peer that does not
    follow the protocol): at most one full set and MAX_CHANGED_ONLY_RUN copies of changed
    entries are held for the view, and a changed-only read is read only after a complete full
    one with fewer than that many since."""
    hist = history.History()
    run = 0  # changed-only reads read since the last complete full one; None: no view
    since_full: int | None = None
    seen = False
    for seq, r in enumerate(rounds, start=1):
        entries = r["entries"]
        assert isinstance(entries, list)
        snap = _read(seq, {q: [float(r["calls"]), 1.0] for q in entries})
        if r["truncated"]:
            for status in snap.collector.sections:
                if status.section == S.SECTION_STATEMENTS:
                    status.state = pb.SECTION_STATE_TRUNCATED
        if r["changed_only"]:
            snap.statements_info.unchanged_omitted = 1
        hist.add(history.Sample(snap))
        if r["changed_only"]:
            expected = ("truncated" if r["truncated"] else "no_base" if since_full is None
                        else "run_too_long" if since_full >= history.MAX_CHANGED_ONLY_RUN
                        else "")
            assert hist.unreadable_statements == expected, seq
            seen = True
            since_full = None if expected else (since_full or 0) + 1
        else:
            assert hist.unreadable_statements == ""
            since_full = 0 if seen and not r["truncated"] else None
        run = max(run, len(hist._view_holders))
        assert len(hist._view_holders) <= 1 + history.MAX_CHANGED_ONLY_RUN
        assert hist.nbytes == hist.sample_bytes + hist.view_bytes
    assert run <= 1 + history.MAX_CHANGED_ONLY_RUN


def _busy(seq: int, n: int) -> pb.Snapshot:
    """Every entry but one moves every round."""
    entries = [pb.StatementStats(queryid=q + 10**12, userid=10, dbid=build.DATID,
                                 toplevel=True, calls=(1000 + seq * 5 if q else 7),
                                 total_exec_time_ms=(1.5 * seq + q if q else 1.0),
                                 rows=seq if q else 1, mean_exec_time_ms=0.3,
                                 stats_since=build.ts(-50)) for q in range(n)]
    snap = build.snapshot(10.0 * seq, seq=seq, statements=entries)
    snap.statements_info.stats_reset.CopyFrom(build.ts(-100))
    return snap


def test_near_the_byte_bound_a_busy_database_keeps_its_samples_with_changed_only_reads() -> None:
    """MAX_BYTES bounds what dropping samples can free (``History.sample_bytes``), not the
    view of the newest values (bounded by MAX_CHANGED_ONLY_RUN): a busy database near the
    bound keeps nearly as many samples with changed-only reads as with full reads (before, it
    kept a few: the view counted, and dropping samples did not shrink it). Not as many: a
    changed-only sample holds a key index of its own (full ones share theirs), about 4 bytes
    an entry, some 10 % of a slim sample here where nearly every entry moves."""
    bound = 1_500_000
    full, changed = history.History(max_bytes=bound), history.History(max_bytes=bound)
    session = stream._Session(changed_only=True)
    binding = False
    for seq in range(1, 40):
        read = _busy(seq, 3_000)
        sent = pb.Snapshot()
        sent.CopyFrom(read)
        flight = stream._InFlight(0.0, (), None, "app")
        flight.statements = session.trim_statements(sent, "app")
        session.acked(seq, flight)
        changed.add(history.Sample(sent))
        if changed.wants_full_statements:
            session.want_full_statements(seq, "app")
            read = sent  # its statements forgotten: the same round for full reads
        full.add(history.Sample(read))
        binding |= len(full.samples) < seq
        assert len(changed.samples) >= 0.8 * len(full.samples), seq  # before: 2 of 25
        assert changed.sample_bytes <= bound
    assert binding and changed.view_bytes > 0
    assert changed.nbytes == changed.sample_bytes + changed.view_bytes


def test_full_reads_only_keep_no_second_copy_of_the_statements() -> None:
    """An old collector (full reads only): the history keeps no view (no copy of the newest
    statements); the first changed-only read is then asked again in full (``no_base``), and
    the full read after it starts the view."""
    hist = history.History()
    server = {q: [1.0, 1.0] for q in range(1, 2_001)}
    for seq in range(1, 6):
        server[seq][0] += 1
        hist.add(history.Sample(_read(seq, server)))
        assert hist.view_bytes == 0 and not hist._view_holders and not hist._view
    window = hist.window()
    assert len(window.statements) == 2_000 and window.statements is hist.samples[-1].statements
    assert window.statement_deltas(FIELDS)[_key(5)].values["calls"] == 1.0
    hist.add(history.Sample(_changed_only(6, server, 1)))
    assert hist.unreadable_statements == "no_base"
    hist.add(history.Sample(_read(7, server)))
    assert hist.unreadable_statements == "" and hist.view_bytes > 0
    hist.add(history.Sample(_changed_only(8, server, 2)))
    assert hist.unreadable_statements == ""
    assert hist.window().statement_deltas(FIELDS)[_key(2)].values["calls"] == 1.0


def test_unreadable_changed_only_reads_are_counted_by_reason() -> None:
    core, registry = _registry_engine()
    server = {q: [1.0, 1.0] for q in range(1, 6)}
    seq = 0

    def apply(snap: pb.Snapshot) -> engine.Applied:
        return core.apply(snap, {})

    seq += 1
    apply(_read(seq, server))
    seq += 1
    assert apply(_changed_only(seq, server, 1)).want_full_statements  # no view yet
    seq += 1
    apply(_read(seq, server))
    for _ in range(history.MAX_CHANGED_ONLY_RUN):
        seq += 1
        assert not apply(_changed_only(seq, server, 2)).want_full_statements
    seq += 1
    assert apply(_changed_only(seq, server, 3)).want_full_statements  # one too many
    seq += 1
    cut = _changed_only(seq, server, 4)
    cut.collector.sections[[s.section for s in cut.collector.sections].index(
        S.SECTION_STATEMENTS)].state = pb.SECTION_STATE_TRUNCATED
    assert apply(cut).want_full_statements
    assert {r: _unreadable(registry, r) for r in ("no_base", "run_too_long", "truncated")} == {
        "no_base": 1, "run_too_long": 1, "truncated": 1}
