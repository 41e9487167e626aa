"""Which pg_stat_statements entries the collector's stream sends (issue 19 items 3 and 4):
only the new and changed ones, the full set when the analyser could otherwise be wrong.

Pure logic: :func:`stream.changed_statements` and the stream session's memory of what it
carried per database (``_Session.trim_statements``, ``unmark``, ``acked``). The end-to-end
path is ``tests/integration/test_statements_changed_only.py``.
"""

from __future__ import annotations

from startupmonkey.collector import stream
from startupmonkey.v1 import snapshot_pb2 as pb
from tests.support import snapshots_build as build

S = pb.Section


def _entry(queryid: int, calls: int, **fields: object) -> pb.StatementStats:
    return pb.StatementStats(queryid=queryid, userid=10, dbid=build.DATID, toplevel=True,
                             calls=calls, total_exec_time_ms=calls * 2.0, **fields)  # type: ignore[arg-type]


def _read(seq: int, entries: list[pb.StatementStats], *, reset: float = -100.0,
          identity: dict[str, object] | None = None) -> pb.Snapshot:
    snap = build.snapshot(10.0 * seq, seq=seq, statements=entries, identity=identity)
    snap.statements_info.stats_reset.CopyFrom(build.ts(reset))
    return snap


class Stream:
    """One stream's session, acking every snapshot ACCEPTED unless told otherwise."""

    def __init__(self) -> None:
        self.session = stream._Session(changed_only=True)
        self.seq = 0

    def send(self, entries: list[pb.StatementStats], accept: bool = True,
             database: str = "app", **kwargs: object) -> pb.Snapshot:
        self.seq += 1
        snap = _read(self.seq, entries, **kwargs)  # type: ignore[arg-type]
        flight = stream._InFlight(0.0, (), None, database)
        flight.statements = self.session.trim_statements(snap, database)
        if accept:
            self.session.acked(self.seq, flight)
        else:
            self.session.unmark(flight)
        return snap


def _sent(snap: pb.Snapshot) -> tuple[list[int], int]:
    return [e.queryid for e in snap.statements], snap.statements_info.unchanged_omitted


def test_only_new_and_changed_entries_are_chosen() -> None:
    before = [_entry(1, 5), _entry(2, 7), _entry(3, 1)]
    send, remembered = stream.changed_statements(before, None)
    assert send is None and len(remembered) == 3  # no memory: everything
    now = [_entry(1, 5), _entry(2, 8), _entry(3, 1), _entry(4, 1)]
    send, remembered = stream.changed_statements(now, remembered)
    assert send is not None and [e.queryid for e in send] == [2, 4]
    # Unchanged is the whole entry: plans move without calls (planned, not executed).
    send, _ = stream.changed_statements([_entry(1, 5, plans=1), *now[1:]], remembered)
    assert send is not None and [e.queryid for e in send] == [1]


def test_an_entry_that_disappeared_means_the_full_set() -> None:
    _, remembered = stream.changed_statements([_entry(1, 5), _entry(2, 7)], None)
    send, remembered = stream.changed_statements([_entry(1, 6)], remembered)
    assert send is None and set(remembered) == {(1, 10, build.DATID, True)}


def test_a_stream_sends_the_full_set_first_then_the_changes() -> None:
    s = Stream()
    assert _sent(s.send([_entry(1, 5), _entry(2, 7), _entry(3, 1)])) == ([1, 2, 3], 0)
    assert _sent(s.send([_entry(1, 6), _entry(2, 7), _entry(3, 1)])) == ([1], 2)
    assert _sent(s.send([_entry(1, 6), _entry(2, 7), _entry(3, 1)])) == ([], 3)
    # Another database on the same stream starts with its own full set.
    assert _sent(s.send([_entry(1, 6)], database="other")) == ([1], 0)
    # A new stream (reconnect to the analyser): the full set again.
    t = Stream()
    assert _sent(t.send([_entry(1, 6), _entry(2, 7), _entry(3, 1)])) == ([1, 2, 3], 0)


def test_the_full_set_every_few_reads() -> None:
    s = Stream()
    entries = [_entry(1, 5), _entry(2, 7)]
    omitted = [_sent(s.send(entries))[1] for _ in range(2 * stream.STATEMENTS_FULL_EVERY)]
    every = stream.STATEMENTS_FULL_EVERY
    assert omitted == ([0] + [2] * (every - 1)) * 2


def test_the_full_set_after_a_reset_a_new_server_or_a_snapshot_not_accepted() -> None:
    s = Stream()
    entries = [_entry(1, 5), _entry(2, 7)]
    s.send(entries)
    assert _sent(s.send(entries))[1] == 2
    assert _sent(s.send(entries, reset=50.0))[1] == 0  # stats_reset changed
    assert _sent(s.send(entries, reset=50.0))[1] == 2
    assert _sent(s.send(entries, reset=50.0, identity={"datid": 99}))[1] == 0  # re-created
    assert _sent(s.send(entries, reset=50.0, identity={"datid": 99}, accept=False))[1] == 2
    # That one was not applied: the analyser may lack what it was told is unchanged.
    assert _sent(s.send(entries, reset=50.0, identity={"datid": 99}))[1] == 0


def test_the_full_set_while_an_earlier_read_is_unacknowledged() -> None:
    s = Stream()
    entries = [_entry(1, 5), _entry(2, 7)]
    first = _read(1, entries)
    flight = stream._InFlight(0.0, (), None, "app", s.session.trim_statements(first, "app"))
    second = _read(2, entries)
    s.session.trim_statements(second, "app")
    assert second.statements_info.unchanged_omitted == 0  # 1 not acked yet
    s.session.acked(1, flight)
    s.session.acked(2, stream._InFlight(0.0, (), None, "app", True))
    third = _read(3, entries)
    s.session.trim_statements(third, "app")
    assert third.statements_info.unchanged_omitted == 2


def test_a_failed_read_or_a_lost_connection_forgets_what_was_carried() -> None:
    s = Stream()
    entries = [_entry(1, 5), _entry(2, 7)]
    s.send(entries)
    failed = build.snapshot(100.0, seq=50, sections=[S.SECTION_DATABASE])
    failed.collector.sections.add(section=S.SECTION_STATEMENTS, state=pb.SECTION_STATE_TIMEOUT)
    assert not s.session.trim_statements(failed, "app")
    assert _sent(s.send(entries))[1] == 0
    lost = pb.Snapshot(sequence=60)
    lost.collector.connection_error = "connection refused"
    assert not s.session.trim_statements(lost, "app")
    assert _sent(s.send(entries))[1] == 0
    # A round that does not read the statements (every few rounds) changes nothing.
    skipped = build.snapshot(100.0, seq=70, sections=[S.SECTION_DATABASE])
    assert not s.session.trim_statements(skipped, "app")
    assert _sent(s.send(entries))[1] == 2
