"""Changed-only statement reads (issue 19 items 3 and 4) give the analyser the same answers as
full ones.

One stream of pg_stat_statements counters (entries that run, appear, are evicted with
``dealloc`` growing, a whole reset, rounds that do not read the section, snapshots the
analyser does not accept) goes into two histories: as the collector read it (every entry in
every read), and as the collector's stream sends it (``stream._Session.trim_statements``: only
the entries that changed, the full set when due). Every answer of the History statement API
(``Window.statements``, ``Window.statement_deltas`` over several windows, with and without
``longest``) and of the detectors
that read statements (``statements.recent``, ``slow_statement``, ``wanted_texts``) must be
equal after every round, with thinning and trimming dropping samples on the way.

The analyser may also lose the database's history at a random round (retired after
``engine.RETIRE_AFTER`` s of silence, evicted by ``engine.MAX_DATABASES``) while the stream
goes on: both histories start afresh there. A changed-only read the new history cannot read
(no full statement sample before it) must be a round without statements (the statement
detectors: not collected) and ask for the full set (``History.wants_full_statements``, on
which the stream forgets the database: ``_Session.want_full_statements``); the reference then
gets that round without its statements too, and every answer must be equal again. So must
the first changed-only read of every history (one that has seen only full reads keeps no view
of the newest values, to cost nothing more than before with an older collector), and one that
the transport did not carry whole (``snapshots.split`` left entries out: the section
TRUNCATED; the stream then forgets what it carried, ``_Session.split_into``): why each one is
unreadable is checked exactly (``History.unreadable_statements``).

With a byte bound that binds (``History.max_bytes``), the changed-only history drops samples
the reference does not: the reference then drops the same ones (it is the reference of full
reads of the samples kept), and the answers must still be equal; and it keeps at least as
many samples as a history of full reads under the same bound (the view, which dropping
samples does not shrink, is not part of the bound).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from startupmonkey.analyser import findings, history
from startupmonkey.analyser.detectors import statements
from startupmonkey.collector import stream
from startupmonkey.v1 import snapshot_pb2 as pb
from tests.support import snapshots_build as build
from tests.unit.test_statements_full_after_lost_history import without_statements

S = pb.Section
WITHOUT_STATEMENTS = [s for s in build.ALL_SECTIONS if s != S.SECTION_STATEMENTS]
LIMITS = build.limits(slow_statement={"minCalls": 1, "minMeanTime": "1ms", "minShare": 0.2})
KEYS = [(q, u, top) for q in range(101, 109) for u in (10, 11) for top in (True, False)]


Entry = dict[str, float]
"""One entry's counters on the server (calls, total, rows, hit, read, plans) and since."""


def _entry(since: float = 0.0, calls: int = 0, total: float = 0.0, rows: int = 0) -> Entry:
    return {"calls": calls, "total": total, "rows": rows, "hit": 0, "read": 0, "plans": 0,
            "since": since}


_round = st.fixed_dictionaries({
    "runs": st.lists(st.tuples(st.sampled_from(KEYS), st.integers(1, 40),
                               st.sampled_from([0.5, 3.0, 40.0])), max_size=6),
    "plans_only": st.lists(st.sampled_from(KEYS), max_size=1),
    "evict": st.lists(st.sampled_from(KEYS), max_size=2),
    "reset": st.integers(0, 5).map(lambda n: n == 0),
    "read": st.booleans() | st.just(True),
    "lost": st.integers(0, 9).map(lambda n: n == 0),
    "truncated": st.integers(0, 7).map(lambda n: n == 0),
    "gap": st.sampled_from([10.0, 10.0, 20.0]),
})
"""One round: statements run, change only their plans, are evicted; a reset; whether the round
reads pg_stat_statements; whether the analyser accepts the snapshot (not ``lost``); whether the
transport leaves statement entries out (``truncated``: beyond ``MAX_CHUNKS_PER_SNAPSHOT``)."""


def _snapshot(at: float, seq: int, server: dict[Any, Entry], dealloc: int, reset_at: float,
              read: bool, pg17: bool) -> pb.Snapshot:
    if not read:
        snap = build.snapshot(at, seq=seq, sections=WITHOUT_STATEMENTS)
        snap.ClearField("statements_info")
        return snap
    entries = []
    for (queryid, userid, toplevel), e in sorted(server.items()):
        message = pb.StatementStats(
            queryid=queryid, userid=userid, dbid=build.DATID, toplevel=toplevel,
            calls=int(e["calls"]), total_exec_time_ms=e["total"], rows=int(e["rows"]),
            shared_blks_hit=int(e["hit"]), shared_blks_read=int(e["read"]),
            plans=int(e["plans"]), mean_exec_time_ms=e["total"] / e["calls"] if e["calls"] else 0.0)
        if pg17:
            message.stats_since.CopyFrom(build.ts(e["since"]))
        entries.append(message)
    snap = build.snapshot(at, seq=seq, statements=entries)
    snap.statements_info.dealloc = dealloc
    snap.statements_info.stats_reset.CopyFrom(build.ts(reset_at))
    return snap


def _answers(window: history.Window) -> dict[str, Any]:
    out: dict[str, Any] = {"view": dict(window.statements)}
    for over in (None, 15.0, 40.0, 90.0):
        deltas = window.statement_deltas(statements.FIELDS, over=over)
        out[f"deltas {over}"] = deltas
        longest = window.statement_deltas(statements.FIELDS, over=over, longest=True)
        out[f"longest deltas {over}"] = longest
    try:
        out["recent"] = statements.recent(window)
    except Exception as exc:  # NoData: the same in both
        out["recent"] = repr(exc)
    try:
        out["slow"] = [(f.target_key, f.summary, f.evidence)
                       for f in statements.slow_statement(window, LIMITS)]
    except Exception as exc:
        out["slow"] = repr(exc)
    out["wanted"] = statements.wanted_texts(window)
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rounds=st.lists(_round, min_size=2, max_size=24), full_every=st.integers(2, 6),
       max_samples=st.integers(6, 12), pg17=st.booleans(),
       lose_at=st.none() | st.integers(2, 24),
       max_bytes=st.none() | st.integers(6_000, 40_000))
def test_changed_only_reads_answer_as_full_reads(rounds: list[dict[str, Any]], full_every: int,
                                                 max_samples: int, pg17: bool,
                                                 lose_at: int | None,
                                                 max_bytes: int | None) -> None:
    saved = stream.STATEMENTS_FULL_EVERY
    stream.STATEMENTS_FULL_EVERY = full_every
    try:
        _run(rounds, max_samples, pg17, lose_at, max_bytes)
    finally:
        stream.STATEMENTS_FULL_EVERY = saved


def _cut(sent: pb.Snapshot) -> None:
    """What the transport does to a snapshot whose items pass ``MAX_CHUNKS_PER_SNAPSHOT``
    (``snapshots.split``): the last entries left out, the section TRUNCATED."""
    del sent.statements[len(sent.statements) // 2:]
    for status in sent.collector.sections:
        if status.section == S.SECTION_STATEMENTS:
            status.state = pb.SECTION_STATE_TRUNCATED


class Counts(NamedTuple):
    unreadable: int
    """Reads the changed-only history could not read (asked again)."""
    trimmed: int
    """Samples the changed-only history dropped for its byte bound."""


def _run(rounds: list[dict[str, Any]], max_samples: int, pg17: bool,
         lose_at: int | None = None, max_bytes: int | None = None) -> Counts:
    bound = history.MAX_BYTES if max_bytes is None else max_bytes

    def histories() -> tuple[history.History, history.History]:
        return (history.History(retention=120, max_samples=max_samples),
                history.History(retention=120, max_samples=max_samples, max_bytes=bound))

    full, changed = histories()  # full: the reference, full reads of the samples changed keeps
    session = stream._Session(changed_only=True)
    waiting_for_full = False  # the history was lost and no full statement read came since
    seen = ready = False  # changed saw a changed-only read; it has a view to read one against
    unreadable = trimmed = 0
    server: dict[Any, Entry] = {k: _entry(calls=1, total=1.0, rows=1) for k in KEYS[:6]}
    dealloc, reset_at, at = 0, -100.0, 0.0
    partial_seen = False
    for seq, r in enumerate(rounds, start=1):
        at += r["gap"]
        if r["reset"]:
            server, dealloc, reset_at = {}, 0, at - 1
        for key in r["evict"]:
            if server.pop(key, None) is not None:
                dealloc += 1
        for key, calls, ms in r["runs"]:
            e = server.setdefault(key, _entry(since=at - 1))
            e["calls"] += calls
            e["total"] += calls * ms
            e["rows"] += calls * 2
            e["hit"] += calls * 3
            e["read"] += calls % 3
        for key in r["plans_only"]:
            if key in server:
                server[key]["plans"] += 1
        snap = _snapshot(at, seq, server, dealloc, reset_at, r["read"], pg17)
        sent = pb.Snapshot()
        sent.CopyFrom(snap)
        flight = stream._InFlight(0.0, (), None, "app")
        flight.statements = session.trim_statements(sent, "app")
        partial_seen |= sent.statements_info.unchanged_omitted > 0
        if sent.statements_info.unchanged_omitted:
            assert len(sent.statements) + sent.statements_info.unchanged_omitted == len(
                snap.statements)
        truncated = flight.statements and r["truncated"] and len(sent.statements) > 0
        if truncated:
            _cut(sent)
        session.split_into(flight, sent)
        if truncated:
            assert "app" not in session.statements  # the next read carries every entry
        if seq == lose_at:  # the analyser retired or evicted the history; the stream goes on
            full, changed = histories()
            waiting_for_full = True
            seen = ready = False
        if r["lost"]:  # not accepted: neither history has it, the stream carries all again
            session.unmark(flight)
            continue
        session.acked(seq, flight)
        changed_only = sent.statements_info.unchanged_omitted > 0
        if flight.statements and not changed_only:
            waiting_for_full = False
            ready = seen and not truncated
        why = ("truncated" if changed_only and truncated
               else "no_base" if changed_only and not ready else "")
        changed.add(history.Sample(sent))
        assert changed.unreadable_statements == why, seq
        reference = sent if truncated and not changed_only else snap  # what full reads carry
        if why:  # the ack asks for the full set
            session.want_full_statements(seq, "app")
            unreadable += 1
            seen, ready = True, False
            reference = without_statements(snap)
        if waiting_for_full:  # not collected, never a wrong answer
            for detector in (statements.slow_statement, statements.missing_index):
                try:
                    detector(changed.window(), LIMITS)
                except findings.NotCollected:
                    continue
                raise AssertionError((seq, detector.__name__, "judged an unreadable read"))
            assert not changed.window().statements and not statements.wanted_texts(
                changed.window())
        full.add(history.Sample(reference))
        # The byte bound binds in changed only: full drops the samples changed dropped.
        kept = [s.collected_at for s in changed.samples]
        assert set(kept) <= {s.collected_at for s in full.samples}
        for i in reversed(range(len(full.samples))):
            if full.samples[i].collected_at not in kept:
                full._drop(i)
                trimmed += 1
        assert [s.collected_at for s in full.samples] == kept
        assert changed.sample_bytes <= bound or len(changed.samples) <= 2
        expected, got = _answers(full.window()), _answers(changed.window())
        for name, value in expected.items():
            assert got[name] == value, (seq, name, _diff(value, got[name]))
    return Counts(unreadable, trimmed)


def _diff(expected: Any, got: Any) -> Any:
    if isinstance(expected, dict) and isinstance(got, dict):
        return {k: (expected.get(k), got.get(k)) for k in expected.keys() | got.keys()
                if expected.get(k) != got.get(k)}
    return expected, got


def test_the_property_sees_changed_only_reads() -> None:
    """The generator above does produce changed-only reads (the property is not vacuous)."""
    session = stream._Session(changed_only=True)
    server = {k: _entry(calls=1, total=1.0) for k in KEYS}
    counts = []
    for seq in range(1, 5):
        server[KEYS[0]]["calls"] += 1
        sent = _snapshot(10.0 * seq, seq, server, 0, -100.0, True, False)
        session.acked(seq, stream._InFlight(0.0, (), None, "app", session.trim_statements(
            sent, "app")))
        counts.append((len(sent.statements), sent.statements_info.unchanged_omitted))
    assert counts == [(len(KEYS), 0), (1, len(KEYS) - 1), (1, len(KEYS) - 1), (1, len(KEYS) - 1)]


def test_the_property_sees_a_lost_history() -> None:
    """A history lost between two changed-only reads: the next one is unreadable, asked
    again in full, and the answers are those of full reads again (not vacuous either)."""
    quiet: dict[str, Any] = {"runs": [], "plans_only": [], "evict": [], "reset": False,
                             "read": True, "lost": False, "truncated": False, "gap": 10.0}
    rounds = [{**quiet, "runs": [(KEYS[n % 3], 2, 3.0)]} for n in range(8)]
    # Each history's first changed-only read (round 2) is unreadable too: it kept no view.
    assert _run(rounds, max_samples=12, pg17=False, lose_at=5).unreadable == 2
    assert _run(rounds, max_samples=12, pg17=True, lose_at=None).unreadable == 1


def test_the_property_sees_a_truncated_read_and_a_binding_byte_bound() -> None:
    """A changed-only read the transport cut is unreadable and the next read is full; the
    byte bound drops samples of the changed-only history (neither is vacuous)."""
    quiet: dict[str, Any] = {"runs": [], "plans_only": [], "evict": [], "reset": False,
                             "read": True, "lost": False, "truncated": False, "gap": 10.0}
    rounds = [{**quiet, "runs": [(KEYS[n % 4], 2, 3.0), (KEYS[5], 1, 1.0)]} for n in range(12)]
    rounds[6]["truncated"] = True
    # round 2 (no view yet), round 7 (cut), none else: the stream sent round 8 in full
    assert _run(rounds, max_samples=12, pg17=False) == (2, 0)
    busy = [{**quiet, "runs": [(k, 1 + n, 3.0) for k in KEYS[:5]]} for n in range(24)]
    assert _run(busy, max_samples=60, pg17=True, max_bytes=8_000).trimmed > 0
