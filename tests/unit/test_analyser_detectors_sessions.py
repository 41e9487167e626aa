"""long_running_query, idle_in_transaction, blocking_lock, connection_saturation on hand-built
snapshots: each fires on the problem and stays quiet on a healthy twin."""

from __future__ import annotations

from startupmonkey.analyser.detectors import sessions
from startupmonkey.models.enums import ActionId
from startupmonkey.v1 import snapshot_pb2 as pb
from tests.support import snapshots_build as build
from tests.support.snapshots_build import window

LIMITS = build.limits(long_running_query={"maxDuration": "60s"},
                      idle_in_transaction={"maxDuration": "60s"},
                      blocking_lock={"minWait": "30s", "minBlocked": 2})


def test_long_running_query_fires_with_what_the_executor_rechecks() -> None:
    slow = build.session(101, state="active", query_start=build.at(-90),
                         xact_start=build.at(-90), query="SELECT pg_sleep(600)")
    quick = build.session(102, state="active", query_start=build.at(-2))
    idle = build.session(103, state="idle", query_start=build.at(-900))
    found = sessions.long_running_query(window(build.snapshot(0, sessions=[slow, quick, idle])),
                                        LIMITS)
    assert len(found) == 1
    finding = found[0]
    assert finding.action is ActionId.CANCEL_QUERY
    assert finding.target.pid == 101
    assert finding.target.backend_start == build.at(-3600)
    assert finding.target.query_start == build.at(-90)
    assert finding.evidence["running_for_s"] == 90


def test_long_running_query_ignores_other_databases_lock_waiters_and_our_own() -> None:
    others = [
        build.session(1, state="active", query_start=build.at(-900), datid=1),
        build.session(2, state="active", query_start=build.at(-900), blocking_pids=[3]),
        build.session(4, state="active", query_start=build.at(-900),
                      application_name="startupmonkey-executor"),
        build.session(5, state="active", query_start=build.at(-900),
                      backend_type="autovacuum worker"),
    ]
    assert sessions.long_running_query(window(build.snapshot(0, sessions=others)), LIMITS) == []


def test_idle_in_transaction_keys_each_idle_spell() -> None:
    held = build.session(201, state="idle in transaction", state_change=build.at(-120),
                         xact_start=build.at(-125), query_start=build.at(-121))
    healthy = build.session(202, state="idle in transaction", state_change=build.at(-5))
    found = sessions.idle_in_transaction(window(build.snapshot(0, sessions=[held, healthy])),
                                         LIMITS)
    assert [f.target.pid for f in found] == [201]
    finding = found[0]
    assert finding.action is ActionId.TERMINATE_SESSION
    assert finding.target.state_change == build.at(-120)
    assert finding.target.backend_start == build.at(-3600)
    assert finding.evidence["idle_for_s"] == 120
    # The same session in a later idle spell is another problem (another key).
    later = build.session(201, state="idle in transaction", state_change=build.at(100))
    again = sessions.idle_in_transaction(window(build.snapshot(200, sessions=[later])), LIMITS)
    assert again[0].target_key != finding.target_key


def test_idle_in_transaction_a_later_session_of_the_same_user_and_application_is_its_own_key(
        ) -> None:
    """The key is the backend and its idle spell, never who opened it: a second session of
    the same user and application, opened after the first was terminated, is found under a
    key of its own (what the real-pods tier suspected was hidden)."""
    first = build.session(301, state="idle in transaction", state_change=build.at(-120),
                          backend_start=build.at(-125))
    second = build.session(302, state="idle in transaction", state_change=build.at(100),
                           backend_start=build.at(95))
    assert (first.usename, first.application_name) == (second.usename,
                                                       second.application_name)
    (one,) = sessions.idle_in_transaction(window(build.snapshot(0, sessions=[first])), LIMITS)
    (two,) = sessions.idle_in_transaction(window(build.snapshot(200, sessions=[second])),
                                          LIMITS)
    assert one.target_key != two.target_key
    assert two.target.pid == 302 and two.target.backend_start == build.at(95)
    # A reused pid is another backend, hence another key too.
    reused = build.session(301, state="idle in transaction", state_change=build.at(100),
                           backend_start=build.at(95))
    (three,) = sessions.idle_in_transaction(window(build.snapshot(200, sessions=[reused])),
                                            LIMITS)
    assert three.target_key not in {one.target_key, two.target_key}


def test_idle_in_transaction_any_statement_starts_a_new_spell() -> None:
    """Idle is measured from ``state_change``, as PostgreSQL's own
    idle_in_transaction_session_timeout: a transaction that runs a statement (even
    ``SELECT 1``) more often than ``maxDuration`` is never idle long enough, however old the
    transaction is (docs/analyser.md; long transactions that hold vacuum back are
    vacuum_blocked's)."""
    busy = build.session(401, state="idle in transaction", state_change=build.at(-1),
                         xact_start=build.at(-900), query_start=build.at(-1))
    assert sessions.idle_in_transaction(window(build.snapshot(0, sessions=[busy])),
                                        LIMITS) == []


def test_blocking_lock_names_the_root_blocker_only() -> None:
    root = build.session(1, state="idle in transaction", xact_start=build.at(-600),
                         state_change=build.at(-590))
    middle = build.session(2, state="active", blocking_pids=[1], query_start=build.at(-120))
    leaves = [build.session(p, state="active", blocking_pids=[2], query_start=build.at(-40))
              for p in (3, 4)]
    waits = [pb.LockWait(pid=2, locktype="relation", mode="AccessExclusiveLock",
                         relation_name="public.orders", wait_start=build.ts(-100))]
    snap = build.snapshot(0, sessions=[root, middle, *leaves], lock_waits=waits)
    found = sessions.blocking_lock(window(snap), LIMITS)
    assert len(found) == 1
    finding = found[0]
    # The root is idle in its transaction, holding its locks for nothing: terminate it.
    assert finding.target.pid == 1 and finding.action is ActionId.TERMINATE_SESSION
    assert finding.target.backend_start == build.at(-3600)
    assert finding.target.xact_start == build.at(-600)
    assert finding.evidence["blocked_sessions"] == 3
    assert finding.evidence["longest_wait_s"] == 100
    assert finding.evidence["relations"] == "public.orders"


def _chain_on(root: pb.Session) -> list[pb.Session]:
    return [root, *(build.session(p, state="active", blocking_pids=[root.pid],
                                  query_start=build.at(-60)) for p in (11, 12))]


def test_blocking_lock_action_follows_the_roots_state() -> None:
    cases = [
        (build.session(1, state="idle in transaction", xact_start=build.at(-90),
                       state_change=build.at(-80)), ActionId.TERMINATE_SESSION),
        (build.session(1, state="idle in transaction (aborted)", xact_start=build.at(-90),
                       state_change=build.at(-80)), ActionId.TERMINATE_SESSION),
        # Idle outside a transaction: a session-level advisory lock holds the others up.
        (build.session(1, state="idle", state_change=build.at(-80)), ActionId.TERMINATE_SESSION),
        (build.session(1, state="active", query_start=build.at(-90)), ActionId.CANCEL_QUERY),
        # Never signalled: StartupMonkey's own session, another backend type, an odd state.
        (build.session(1, state="active", query_start=build.at(-90),
                       application_name="startupmonkey-executor"), ActionId.ADVICE),
        (build.session(1, state="active", query_start=build.at(-90),
                       backend_type="autovacuum worker"), ActionId.ADVICE),
        (build.session(1, state="fastpath function call", query_start=build.at(-90)),
         ActionId.ADVICE),
    ]
    for root, action in cases:
        found = sessions.blocking_lock(window(build.snapshot(0, sessions=_chain_on(root))),
                                       LIMITS)
        assert [(f.target.pid, f.action) for f in found] == [(1, action)], root
        assert found[0].evidence["action_reason"]


def test_blocking_lock_on_a_root_without_a_session_is_advice() -> None:
    # A prepared transaction (pg_blocking_pids names pid 0) or a root already gone.
    waiters = [build.session(p, state="active", blocking_pids=[0], query_start=build.at(-60))
               for p in (11, 12)]
    found = sessions.blocking_lock(window(build.snapshot(0, sessions=waiters)), LIMITS)
    assert [(f.target.pid, f.action) for f in found] == [(None, ActionId.ADVICE)]


def test_blocking_lock_healthy_twins() -> None:
    root = build.session(1, state="active", query_start=build.at(-600))
    one_waiter = [build.session(2, state="active", blocking_pids=[1],
                                query_start=build.at(-300))]
    brief = [build.session(p, state="active", blocking_pids=[1], query_start=build.at(-2))
             for p in (2, 3, 4)]
    deadlock = [build.session(5, state="active", blocking_pids=[6], query_start=build.at(-60)),
                build.session(6, state="active", blocking_pids=[5], query_start=build.at(-60))]
    for others in (one_waiter, brief, deadlock):
        snap = build.snapshot(0, sessions=[root, *others])
        assert sessions.blocking_lock(window(snap), LIMITS) == []


def _clients(count: int, datid: int = build.DATID) -> list[pb.Session]:
    return [build.session(1000 + n, state="idle", datid=datid) for n in range(count)]


def test_connection_saturation_counts_client_backends_against_usable_slots() -> None:
    background = [build.session(1, backend_type="checkpointer", datid=0)]
    full = build.snapshot(0, sessions=[*_clients(60), *_clients(20, datid=1), *background])
    found = sessions.connection_saturation(window(full), build.limits())
    assert len(found) == 1
    assert found[0].evidence["client_backends"] == 80
    assert found[0].evidence["usable_connections"] == 97
    calm = build.snapshot(0, sessions=[*_clients(40), *background])
    assert sessions.connection_saturation(window(calm), build.limits()) == []


def test_connection_saturation_against_the_databases_own_limit() -> None:
    snap = build.snapshot(0, sessions=_clients(9), database={"datconnlimit": 10})
    found = sessions.connection_saturation(window(snap), build.limits())
    assert found and found[0].evidence["database_ratio"] == 0.9
