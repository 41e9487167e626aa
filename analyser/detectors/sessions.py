"""Session detectors: ``long_running_query``, ``idle_in_transaction``, ``blocking_lock``,
``connection_saturation``.

Input: every backend of the cluster (``pg_stat_activity`` with ``pg_blocking_pids``) and the
ungranted locks. Ages are measured on the server's clock: the sessions section's sample time
minus ``query_start`` / ``state_change`` / the lock's ``waitstart``. Only client backends of
the monitored database are ever targets, never StartupMonkey's own sessions (application
names starting with ``startupmonkey-``). A target carries what the executor re-checks before
it signals anything: pid, ``backend_start`` and the query start or state change it was
flagged for, so a reused pid or a session that moved on is never touched.
"""

from __future__ import annotations

import datetime
from collections import Counter
from collections.abc import Iterable, Mapping

from startupmonkey.analyser import findings
from startupmonkey.analyser.history import Window
from startupmonkey.models import durations, remediation, thresholds
from startupmonkey.models.enums import DEFAULT_ACTION, ActionId, DetectorId
from startupmonkey.v1 import snapshot_pb2

S = snapshot_pb2.Section
Session = snapshot_pb2.Session
OWN_APPLICATION_PREFIX = "startupmonkey-"
IDLE_IN_TRANSACTION = frozenset({"idle in transaction", "idle in transaction (aborted)"})


def _t(session: Session, field: str) -> datetime.datetime | None:
    return findings.when(getattr(session, field)) if session.HasField(field) else None  # type: ignore[arg-type]


def clients(window: Window) -> list[Session]:
    """Client backends of the monitored database that are not StartupMonkey's own."""
    datid = window.snapshot.database.datid
    return [s for s in window.snapshot.sessions
            if s.backend_type == "client backend" and s.datid == datid
            and not s.application_name.startswith(OWN_APPLICATION_PREFIX)]


def target_of(session: Session) -> remediation.Target:
    """Everything the executor needs to re-identify the backend and what it was doing."""
    return remediation.Target(
        pid=session.pid if session.pid > 0 else None,
        backend_start=_t(session, "backend_start"), query_start=_t(session, "query_start"),
        state_change=_t(session, "state_change"), xact_start=_t(session, "xact_start"))


def _who(session: Session) -> dict[str, findings.EvidenceValue]:
    return {"pid": session.pid, "user": session.usename,
            "application": session.application_name, "client_addr": session.client_addr,
            "state": session.state, "wait_event_type": session.wait_event_type,
            "wait_event": session.wait_event,
            # Raw, with its literals: the engine applies spec.privacy.queryText (privacy.py).
            "query": session.query,
            "query_id": session.query_id if session.HasField("query_id") else None}


def long_running_query(window: Window, all_limits: thresholds.Thresholds
                       ) -> list[findings.Finding]:
    """Active queries older than ``maxDuration`` (age = now - query_start). A query waiting
    for a lock is left to blocking_lock, which names the root blocker instead."""
    window.require(S.SECTION_SESSIONS)
    limit = durations.parse_duration(all_limits.long_running_query.max_duration)
    now = window.time_of(S.SECTION_SESSIONS)
    found = []
    for s in clients(window):
        start = _t(s, "query_start")
        if s.state != "active" or start is None or s.blocking_pids:
            continue
        age = (now - start).total_seconds()
        if age >= limit:
            found.append(_long_finding(s, start, age, limit))
    return found


def _long_finding(s: Session, start: datetime.datetime, age: float, limit: float
                  ) -> findings.Finding:
    return findings.Finding(
        detector=DetectorId.LONG_RUNNING_QUERY,
        target_key=findings.session_key(s.pid, _t(s, "backend_start"), start),
        target=target_of(s), action=DEFAULT_ACTION[DetectorId.LONG_RUNNING_QUERY],
        severity="critical" if age >= 4 * limit else "warning",
        summary=(f"query of pid {s.pid} ({s.usename}/{s.application_name}) has been running "
                 f"for {age:.0f}s (limit {limit:.0f}s)"),
        evidence={**_who(s), "running_for_s": round(age, 1), "limit_s": limit,
                  "query_start": findings.iso(start)})


def idle_in_transaction(window: Window, all_limits: thresholds.Thresholds
                        ) -> list[findings.Finding]:
    """Sessions idle inside an open transaction for longer than ``maxDuration``
    (age = now - state_change). The key includes ``state_change``: each idle spell is its own
    problem, and the executor terminates only while the session is still in that spell."""
    window.require(S.SECTION_SESSIONS)
    limit = durations.parse_duration(all_limits.idle_in_transaction.max_duration)
    now = window.time_of(S.SECTION_SESSIONS)
    found = []
    for s in clients(window):
        changed = _t(s, "state_change")
        if s.state not in IDLE_IN_TRANSACTION or changed is None:
            continue
        idle = (now - changed).total_seconds()
        if idle >= limit:
            found.append(_idle_finding(s, changed, idle, limit, now))
    return found


def _idle_finding(s: Session, changed: datetime.datetime, idle: float, limit: float,
                  now: datetime.datetime) -> findings.Finding:
    xact = _t(s, "xact_start")
    return findings.Finding(
        detector=DetectorId.IDLE_IN_TRANSACTION,
        target_key=findings.session_key(s.pid, _t(s, "backend_start"), changed),
        target=target_of(s), action=DEFAULT_ACTION[DetectorId.IDLE_IN_TRANSACTION],
        severity="critical" if idle >= 4 * limit else "warning",
        summary=(f"pid {s.pid} ({s.usename}/{s.application_name}) has been {s.state} for "
                 f"{idle:.0f}s (limit {limit:.0f}s)"),
        evidence={**_who(s), "idle_for_s": round(idle, 1), "limit_s": limit,
                  "transaction_age_s": findings.seconds(now - xact) if xact else None,
                  "xmin_age_xids": s.backend_xmin_age if s.HasField("backend_xmin") else None})


def _roots(waiting: Mapping[int, Session]) -> dict[int, set[int]]:
    """Root blocker pid -> every pid waiting on it, directly or down a chain. A root is a
    blocker that is not waiting itself; a cycle (a deadlock PostgreSQL is about to break)
    has no root and is left alone."""
    roots: dict[int, set[int]] = {}
    for waiter in waiting:
        seen: set[int] = set()
        todo = [waiter]
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            for blocker in waiting[pid].blocking_pids if pid in waiting else ():
                if blocker in waiting:
                    todo.append(blocker)
                else:
                    roots.setdefault(blocker, set()).add(waiter)
    return roots


def _wait_seconds(window: Window, waiters: Iterable[int], sessions: Mapping[int, Session]
                  ) -> float:
    """How long the longest of ``waiters`` has waited: pg_locks.waitstart (PG14+), else the
    start of its query (an upper bound of the wait)."""
    starts: dict[int, datetime.datetime] = {}
    if window.present(S.SECTION_LOCK_WAITS):
        for lock in window.snapshot.lock_waits:
            if lock.HasField("wait_start"):
                starts.setdefault(lock.pid, findings.when(lock.wait_start))
    now = window.time_of(S.SECTION_SESSIONS)
    waits = [0.0]
    for pid in waiters:
        start = starts.get(pid) or (_t(sessions[pid], "query_start") if pid in sessions else None)
        if start is not None:
            waits.append((now - start).total_seconds())
    return max(waits)


def blocking_lock(window: Window, all_limits: thresholds.Thresholds) -> list[findings.Finding]:
    """Root blockers (holding a lock others queue behind, not waiting themselves) that hold
    up at least ``minBlocked`` sessions, the longest for at least ``minWait``."""
    window.require(S.SECTION_SESSIONS)
    limits = all_limits.blocking_lock
    min_wait = durations.parse_duration(limits.min_wait)
    datid = window.snapshot.database.datid
    sessions = {s.pid: s for s in window.snapshot.sessions if s.datid == datid}
    waiting = {pid: s for pid, s in sessions.items() if s.blocking_pids}
    found = []
    for root, blocked in sorted(_roots(waiting).items()):
        wait = _wait_seconds(window, blocked, sessions)
        if len(blocked) >= limits.min_blocked and wait >= min_wait:
            found.append(_blocking_finding(window, root, sessions.get(root), blocked, wait,
                                              limits, min_wait))
    return found


def _blocking_finding(window: Window, root: int, session: Session | None, blocked: set[int],
                      wait: float, limits: thresholds.BlockingLock, min_wait: float
                      ) -> findings.Finding:
    relations = sorted({lock.relation_name for lock in window.snapshot.lock_waits
                        if lock.pid in blocked and lock.relation_name})
    who = _who(session) if session else {"pid": root}
    xact = _t(session, "xact_start") if session else None
    backend_start = _t(session, "backend_start") if session else None
    critical = len(blocked) >= 2 * limits.min_blocked or wait >= 2 * min_wait
    action, why = _root_action(window, session)
    return findings.Finding(
        detector=DetectorId.BLOCKING_LOCK,
        target_key=findings.session_key(root, backend_start, xact),
        # pg_blocking_pids names a prepared transaction as pid 0: no backend to target.
        target=target_of(session) if session else remediation.Target(
            pid=root if root > 0 else None),
        action=action,
        severity="critical" if critical else "warning",
        summary=(f"pid {root} ({who.get('state') or 'state unknown'}) blocks {len(blocked)} "
                 f"session(s), the longest waiting {wait:.0f}s"
                 + (f" on {', '.join(relations[:3])}" if relations else "")),
        evidence={**who, "blocked_sessions": len(blocked), "longest_wait_s": round(wait, 1),
                  "blocked_pids": ",".join(str(p) for p in sorted(blocked)[:20]),
                  "relations": ",".join(relations[:10]),
                  "transaction_start": findings.iso(xact),
                  "min_blocked": limits.min_blocked, "min_wait_s": min_wait,
                  "action_reason": why})


def _root_action(window: Window, session: Session | None) -> tuple[ActionId, str]:
    """What to propose for a root blocker: terminate it when it is idle (in a transaction or
    not: it holds its locks doing nothing), cancel its statement when it is active; advice
    when it is not a session the executor may signal (gone, another database, not a client
    backend, StartupMonkey's own, a prepared transaction) or its state is unknown."""
    if session is None:
        return ActionId.ADVICE, "the root is not a session of this database (a prepared " \
            "transaction, or gone)"
    if session.backend_type != "client backend" or \
            session.datid != window.snapshot.database.datid:
        return ActionId.ADVICE, f"the root is a {session.backend_type or 'backend'}, not a " \
            "client backend of this database"
    if session.application_name.startswith(OWN_APPLICATION_PREFIX):
        return ActionId.ADVICE, "the root is StartupMonkey's own session"
    if not session.HasField("backend_start"):
        return ActionId.ADVICE, "the root's backend start is unknown"
    if session.state in IDLE_IN_TRANSACTION or session.state == "idle":
        return ActionId.TERMINATE_SESSION, f"the root is {session.state}: terminate it"
    if session.state == "active" and session.HasField("query_start"):
        return ActionId.CANCEL_QUERY, "the root is running a statement: cancel it"
    return ActionId.ADVICE, f"the root's state is {session.state or 'unknown'}"


def connection_saturation(window: Window, all_limits: thresholds.Thresholds
                          ) -> list[findings.Finding]:
    """Client backends of the cluster against ``max_connections -
    superuser_reserved_connections - reserved_connections`` (PG16+; in the home database's
    window only), and against the database's own ``datconnlimit`` when it has one; fires at
    ``maxRatio`` of either."""
    window.require(S.SECTION_SESSIONS)
    settings = window.settings
    if "max_connections" not in settings:
        raise findings.NoData("max_connections setting not received yet")
    usable = (window.setting_float("max_connections", 100)
              - window.setting_float("superuser_reserved_connections", 3)
              - window.setting_float("reserved_connections", 0))
    everyone = [s for s in window.snapshot.sessions if s.backend_type == "client backend"]
    # The server's limit is judged once, in the home database's window.
    ratio = (len(everyone) / usable if usable > 0 else 1.0) if window.home else 0.0
    datid = window.snapshot.database.datid
    mine = [s for s in everyone if s.datid == datid]
    limit = window.snapshot.database_stats.datconnlimit
    db_ratio = len(mine) / limit if window.present(S.SECTION_DATABASE) and limit > 0 else 0.0
    worst = max(ratio, db_ratio)
    if worst < all_limits.connection_saturation.max_ratio:
        return []
    return [_saturation_finding(window, everyone, usable, ratio, len(mine), limit, db_ratio,
                                worst)]


def _saturation_finding(window: Window, everyone: list[Session], usable: float, ratio: float,
                        mine: int, limit: int, db_ratio: float, worst: float) -> findings.Finding:
    states = Counter(s.state or "unknown" for s in everyone)
    apps = Counter(s.application_name or "-" for s in everyone).most_common(3)
    scope = (f"database {window.dbname} ({mine}/{limit})" if db_ratio >= ratio
             else f"the server ({len(everyone)}/{usable:.0f})")
    return findings.Finding(
        detector=DetectorId.CONNECTION_SATURATION, target_key=f"connections/{window.dbname}",
        target=remediation.Target(), action=DEFAULT_ACTION[DetectorId.CONNECTION_SATURATION],
        severity="critical" if worst >= 0.95 else "warning",
        summary=f"connections at {worst:.0%} of the limit of {scope}",
        evidence={"client_backends": len(everyone), "usable_connections": usable,
                  "ratio": round(ratio, 4), "database_backends": mine,
                  "datconnlimit": limit, "database_ratio": round(db_ratio, 4),
                  "active": states.get("active", 0), "idle": states.get("idle", 0),
                  "idle_in_transaction": states.get("idle in transaction", 0),
                  "top_applications": ", ".join(f"{a}={n}" for a, n in apps)})


DETECTORS = (
    findings.Detector(DetectorId.LONG_RUNNING_QUERY, long_running_query),
    findings.Detector(DetectorId.IDLE_IN_TRANSACTION, idle_in_transaction),
    findings.Detector(DetectorId.BLOCKING_LOCK, blocking_lock),
    findings.Detector(DetectorId.CONNECTION_SATURATION, connection_saturation),
)
