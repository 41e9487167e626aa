"""Who holds the xmin horizon back: sessions, replication slots, prepared transactions.

VACUUM can remove a dead row only once no transaction may still see it, i.e. once the row's
deleting xid is older than the oldest xmin still needed (the horizon). For the user tables of
one database that horizon is the oldest of: ``backend_xid``/``backend_xmin`` of the backends
of that database, the ``backend_xmin`` of walsenders (a standby's ``hot_standby_feedback``),
the ``xmin`` of every replication slot, and the xids of prepared transactions of that
database. VACUUM's own xmin is ignored by PostgreSQL, so vacuum processes are not holders.

``dead_tuples`` uses this to stay quiet when a vacuum already ran and could not remove the
rows (the peer re-ran VACUUM every cycle); ``vacuum_blocked`` names the holder instead.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterator

from startupmonkey.analyser import findings
from startupmonkey.analyser.history import Window
from startupmonkey.models import remediation
from startupmonkey.v1 import snapshot_pb2

S = snapshot_pb2.Section


@dataclasses.dataclass(frozen=True)
class Holder:
    """One thing that holds the xmin horizon, with its age in transactions and in time."""

    kind: str
    name: str
    xmin_age: int
    since: datetime.datetime | None
    target_key: str
    target: remediation.Target
    evidence: dict[str, findings.EvidenceValue]


_NEVER = datetime.datetime.max.replace(tzinfo=datetime.UTC)


def holders(window: Window) -> list[Holder]:
    """Every holder visible in the newest snapshot, oldest xmin first; of equally old xmins,
    the longest hold first. (While a transaction holds xid X, every snapshot taken meanwhile
    has xmin X too, so any busy session ties with the real holder on age.)"""
    found = [*_sessions(window), *_slots(window), *_prepared(window)]
    return sorted(found, key=lambda h: (-h.xmin_age, h.since or _NEVER, h.target_key))


def oldest(window: Window) -> Holder | None:
    """The holder of the horizon (largest xmin age), if any."""
    found = holders(window)
    return found[0] if found else None


def _is_vacuum(s: snapshot_pb2.Session) -> bool:
    if s.backend_type == "autovacuum worker":
        return True
    return s.state == "active" and s.query.lstrip().lower().startswith("vacuum")


def _sessions(window: Window) -> Iterator[Holder]:
    if not window.present(S.SECTION_SESSIONS):
        return
    datid = window.snapshot.database.datid
    for s in window.snapshot.sessions:
        ages = [a for has, a in ((s.HasField("backend_xmin"), s.backend_xmin_age),
                                 (s.HasField("backend_xid"), s.backend_xid_age)) if has]
        walsender = s.backend_type == "walsender"
        if not ages or _is_vacuum(s) or not (walsender or s.datid == datid):
            continue
        yield _session_holder(window, s, max(ages), walsender)


def _session_holder(window: Window, s: snapshot_pb2.Session, age: int,
                    walsender: bool) -> Holder:
    backend_start = findings.when(s.backend_start) if s.HasField("backend_start") else None
    xact_start = findings.when(s.xact_start) if s.HasField("xact_start") else None
    query_start = findings.when(s.query_start) if s.HasField("query_start") else None
    state_change = findings.when(s.state_change) if s.HasField("state_change") else None
    if walsender:  # its xmin is the standby's feedback: held since we first saw that value
        since = window.markers.get("xmin", s.pid, s.backend_xmin)
    else:
        since = xact_start or query_start or backend_start
    target = remediation.Target(pid=s.pid if s.pid > 0 else None, backend_start=backend_start,
                                xact_start=xact_start, query_start=query_start,
                                state_change=state_change)
    evidence: dict[str, findings.EvidenceValue] = {
        "holder": "walsender" if walsender else "session", "pid": s.pid,
        "user": s.usename, "application": s.application_name, "state": s.state,
        "backend_type": s.backend_type, "xact_start": findings.iso(xact_start),
        "xmin_age_xids": age, "client_addr": s.client_addr}
    return Holder("session", f"pid {s.pid} ({s.usename or '?'}/{s.application_name or '?'}, "
                  f"{s.state or s.backend_type})", age, since,
                  f"session:{findings.session_key(s.pid, backend_start, xact_start)}", target,
                  evidence)


def _slots(window: Window) -> Iterator[Holder]:
    if not window.present(S.SECTION_REPLICATION_SLOTS):
        return
    for slot in window.snapshot.replication_slots:
        if not slot.HasField("xmin"):
            continue  # catalog_xmin holds only catalog tables, not user tables
        evidence: dict[str, findings.EvidenceValue] = {
            "holder": "replication_slot", "slot_name": slot.slot_name,
            "slot_type": slot.slot_type, "active": slot.active, "xmin_age_xids": slot.xmin_age,
            "wal_status": slot.wal_status}
        yield Holder("replication_slot", f"replication slot {slot.slot_name!r}",
                     slot.xmin_age, window.markers.get("slot", slot.slot_name, slot.xmin),
                     f"slot:{slot.slot_name}", remediation.Target(), evidence)


def _prepared(window: Window) -> Iterator[Holder]:
    if not window.present(S.SECTION_PREPARED_XACTS):
        return
    for xact in window.snapshot.prepared_xacts:
        if xact.database != window.dbname:
            continue
        prepared = findings.when(xact.prepared) if xact.HasField("prepared") else None
        evidence: dict[str, findings.EvidenceValue] = {
            "holder": "prepared_xact", "gid": xact.gid, "owner": xact.owner,
            "prepared": findings.iso(prepared), "xmin_age_xids": xact.xid_age}
        yield Holder("prepared_xact", f"prepared transaction {xact.gid!r}", xact.xid_age,
                     prepared, f"prepared:{xact.gid}", remediation.Target(), evidence)


def last_vacuum(table: snapshot_pb2.TableStats) -> datetime.datetime | None:
    """The latest manual or automatic VACUUM of a table."""
    times = [findings.when(t) for has, t in ((table.HasField("last_vacuum"), table.last_vacuum),
                                         (table.HasField("last_autovacuum"),
                                          table.last_autovacuum)) if has]
    return max(times) if times else None


def vacuumed_in_vain(table: snapshot_pb2.TableStats, holder: Holder | None) -> bool:
    """True when a VACUUM ran after the holder took its xmin: the rows still counted dead
    could not be removed, so another VACUUM would not help either."""
    if holder is None or holder.since is None:
        return False
    vacuumed = last_vacuum(table)
    return vacuumed is not None and vacuumed > holder.since
