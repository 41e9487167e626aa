"""``startupmonkey check -f monitor.yaml``: what works, what does not, and how to fix it.

A new user's first question is why nothing happens. ``check`` connects to the watched database
as each component would (the collector's login, then the executor's when it is another role),
reads what the configured mode needs (pganalyze's ``--test`` is the model), and prints one line
per check: ``OK``, ``WARN`` (something is off, but nothing the configured mode needs) or
``FAIL`` (the configured mode cannot do what it promises), each WARN and FAIL with the exact
fix. The exit status is 0 when nothing FAILs, 1 otherwise; ``-o json`` gives the same for
scripts. docs/troubleshooting.md starts from these lines.

What is *needed* follows the manifest: an action is needed when its detector is enabled and its
risk class's mode is not observe (``spec.mode``/``spec.policy``), and a detector is needed when
it is enabled. A privilege only an action needs is therefore a WARN in observe mode and a FAIL
in auto or approval mode. The reading is done with the components' own queries where one
exists (``dbreport.CHECK``); nothing is written to the database.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import enum
import getpass
import json
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from startupmonkey import dbreport, manifest, settings
from startupmonkey.events import printable
from startupmonkey.localserv import nats as natsserver
from startupmonkey.models import monitor
from startupmonkey.models.enums import ACTION_RISK, DEFAULT_ACTION, ActionId, DetectorId, Mode

APPLICATION_NAME = "startupmonkey-check"
CONNECT_TIMEOUT = 10
NATS_TIMEOUT = 5
QUERY_TIMEOUT = 15  # seconds, each query of a check
MESSAGE_LIMIT = 4000  # bytes; the kubelet keeps 4096 of a termination message


class Level(enum.StrEnum):
    """How a check came out (sorted from good to bad)."""

    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclasses.dataclass(frozen=True)
class Check:
    """One line of the report: what was checked, how it came out, and what to do."""

    name: str
    level: Level
    message: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        """The JSON form (``-o json``)."""
        return {"name": self.name, "level": self.level.value, "message": self.message,
                "fix": self.fix}


# -- what the manifest needs -------------------------------------------------------------------

def _detectors_of(action: ActionId) -> list[DetectorId]:
    found = [d for d, a in DEFAULT_ACTION.items() if a is action]
    if action is ActionId.CANCEL_QUERY:  # a lock chain's active root is cancelled
        found.append(DetectorId.BLOCKING_LOCK)
    if action is ActionId.REINDEX:  # an INVALID index behind a constraint is rebuilt
        found.append(DetectorId.INVALID_INDEX)
    return found


def detector_enabled(spec: monitor.DatabaseMonitorSpec, detector: DetectorId) -> bool:
    """Whether ``spec.thresholds`` leaves the detector on."""
    return spec.thresholds.for_detector(detector).enabled


def action_needed(spec: monitor.DatabaseMonitorSpec, action: ActionId) -> bool:
    """Whether the manifest may run ``action``: one of its detectors is enabled and its risk
    class's mode is not observe (approval counts: an approved action runs)."""
    if spec.mode_for(ACTION_RISK[action]) is Mode.OBSERVE:
        return False
    return any(detector_enabled(spec, d) for d in _detectors_of(action))


def _needed_or_warn(needed: bool) -> Level:
    return Level.FAIL if needed else Level.WARN


def _quoted(name: str) -> str:
    """A role name as SQL shows it in a fix (double quotes, doubled inner quotes)."""
    return '"' + name.replace('"', '""') + '"'


# -- logging in ----------------------------------------------------------------------------------

def login_fix(error: str, database: monitor.DatabaseSpec, user: str,
              in_cluster: bool = False) -> str:
    """The fix for a libpq connection error, by the kind of problem the run view and the
    DatabaseReachable condition name (``DatabaseStatus.problem``, so the words and the fix
    never disagree); pure: unit-tested."""
    words = monitor.DatabaseStatus(reachable=False, last_error=error[:4096]).problem()
    where = f"{database.host}:{database.port}"
    fixes = {
        "wrong password": (f"put the password of role {user} in the Secret named in "
                           "spec.database.credentialsSecret (or the component's own Secret)"
                           if in_cluster else f"give the password of role {user}: PGPASSWORD "
                           "or a libpq passfile here; in a cluster the Secret named in "
                           "spec.database.credentialsSecret"),
        "the role does not exist": f"create the role (CREATE ROLE {_quoted(user)} LOGIN "
        "PASSWORD '...') or log in as another (--user)",
        "the role may not log in": f"ALTER ROLE {_quoted(user)} LOGIN;",
        "the database does not exist": f"spec.database.dbname names no database on {where}: "
        f"fix the name, or CREATE DATABASE {_quoted(database.dbname)}",
        "no CONNECT privilege on the database": f"GRANT CONNECT ON DATABASE "
        f"{_quoted(database.dbname)} TO {_quoted(user)};",
        "refused by the server's pg_hba.conf": "add a pg_hba.conf line that lets this user "
        "reach this database from this address (then SELECT pg_reload_conf()), or set "
        "spec.database.sslMode if the line requires SSL",
        "connection refused": f"nothing listens on {where}: is PostgreSQL running there, and "
        "do spec.database.host and spec.database.port name it (listen_addresses, port)?",
        "no server at that socket": f"nothing listens on {where}: is PostgreSQL running there?",
        "host name not found": f"spec.database.host {database.host!r} does not resolve: fix "
        "the host name",
        "no route to host": f"{where} cannot be reached from here: a firewall, a "
        "NetworkPolicy or a wrong address",
        "connection timed out": f"{where} did not answer within {CONNECT_TIMEOUT} s: a "
        "firewall, a NetworkPolicy or a wrong address",
        "too many connections": "the server refuses new connections (max_connections or the "
        "role's CONNECTION LIMIT): raise the limit or end idle sessions",
        "the server does not support SSL": "spec.database.sslMode requires SSL the server does "
        "not offer: set sslMode to prefer or disable, or turn ssl on in the server",
    }
    fixes["no password given"] = fixes["wrong password"]
    fixes["network unreachable"] = fixes["no route to host"]
    for starting in ("the server is starting up", "the server is shutting down",
                     "the server is recovering from a crash", "the server was shut down",
                     "the server closed the connection"):
        fixes[starting] = "the server is not serving now: try again once it is up"
    if words in fixes:
        return fixes[words]
    if "ssl" in error.lower() or "certificate" in error.lower():
        return "spec.database.sslMode does not match what the server offers or trusts"
    return "read the error above; docs/troubleshooting.md lists the usual causes"


def _connect(database: monitor.DatabaseSpec, user: str,
             password: str | None) -> psycopg.Connection[Any]:
    kwargs: dict[str, Any] = {"password": password} if password is not None else {}
    # Every query bounded, and a server that goes silent noticed (keepalives), so a check
    # never hangs; lock_timeout: a catalog read never waits behind someone's ACCESS EXCLUSIVE.
    return psycopg.connect(host=database.host, port=database.port, dbname=database.dbname,
                           user=user, sslmode=database.ssl_mode,
                           connect_timeout=CONNECT_TIMEOUT, application_name=APPLICATION_NAME,
                           autocommit=True, keepalives=1, keepalives_idle=10,
                           keepalives_interval=5, keepalives_count=3,
                           options=f"-c statement_timeout={QUERY_TIMEOUT * 1000} "
                                   f"-c lock_timeout={QUERY_TIMEOUT * 1000}", **kwargs)


def _login(name: str, database: monitor.DatabaseSpec, user: str, password: str | None,
           in_cluster: bool) -> tuple[Check, psycopg.Connection[Any] | None]:
    where = f"{user}@{database.host}:{database.port}/{database.dbname}"
    try:
        conn = _connect(database, user, password)
    except psycopg.Error as exc:
        error = " ".join(str(exc).split())
        return Check(name, Level.FAIL, f"cannot log in as {where}: {error}",
                     login_fix(error, database, user, in_cluster)), None
    return Check(name, Level.OK, f"logged in as {where}"), conn


# -- reading the server ------------------------------------------------------------------------

@dataclasses.dataclass
class Facts:
    """What one login reads of the server (``dbreport.CHECK`` and a few settings)."""

    status: monitor.DatabaseStatus
    settings: dict[str, str | None]
    available: set[str]
    statements_readable: str | None  # None: pg_stat_statements answers; else its error
    statements_loaded: bool  # the library is loaded (preloaded), created or not
    tables: list[tuple[str, str, bool, bool]]  # schema, name, owned, MAINTAIN


SETTINGS = ("track_counts", "track_io_timing")


def _setting(conn: psycopg.Connection[Any], name: str) -> str | None:
    """A setting, None when this role may not read it."""
    try:
        row = conn.execute("SELECT pg_catalog.current_setting(%s)", (name,)).fetchone()
    except psycopg.errors.InsufficientPrivilege:
        return None
    return None if row is None else str(row[0])


def _statements_error(conn: psycopg.Connection[Any], created: bool) -> str | None:
    """None when pg_stat_statements answers, else why not. Read in the extension's own
    schema, as the collector reads it (Supabase-style installs put it in ``extensions``)."""
    if not created:
        return "not created"
    row = conn.execute("SELECT n.nspname FROM pg_catalog.pg_extension AS e JOIN "
                       "pg_catalog.pg_namespace AS n ON n.oid = e.extnamespace "
                       "WHERE e.extname = 'pg_stat_statements'").fetchone()
    if row is None:
        return "not created"
    query = sql.SQL("SELECT 1 FROM {}.pg_stat_statements(false) LIMIT 1").format(
        sql.Identifier(str(row[0])))
    try:
        conn.execute(query)
    except psycopg.Error as exc:
        return " ".join(str(exc).split())
    return None


def _library_loaded(conn: psycopg.Connection[Any]) -> bool:
    """Whether the pg_stat_statements library is loaded: its own settings exist only then,
    and any role may read them (shared_preload_libraries needs pg_read_all_settings)."""
    row = conn.execute("SELECT pg_catalog.current_setting('pg_stat_statements.max', true)"
                       ).fetchone()
    return row is not None and row[0] is not None


TABLES = """
SELECT n.nspname::text, c.relname::text,
       pg_catalog.pg_has_role(current_user, c.relowner, 'USAGE'), {maintain}
FROM pg_catalog.pg_class AS c JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'm') AND n.nspname <> 'information_schema'
  AND n.nspname !~ '^pg_' ORDER BY 1, 2
"""


def read_facts(conn: psycopg.Connection[Any]) -> Facts:
    """Everything the database checks judge, read on one connection (read-only)."""
    status = dbreport.check(conn)
    major = monitor.server_major(status.server_version) or 0
    maintain = ("pg_catalog.has_table_privilege(c.oid, 'MAINTAIN')" if major >= 17
                else "false")
    tables = [(str(s), str(t), bool(o), bool(m)) for s, t, o, m in
              conn.execute(TABLES.format(maintain=maintain).encode()).fetchall()]
    available = {str(r[0]) for r in conn.execute(
        "SELECT name FROM pg_catalog.pg_available_extensions "
        "WHERE name IN ('pg_stat_statements', 'hypopg')").fetchall()}
    return Facts(status=status, settings={name: _setting(conn, name) for name in SETTINGS},
                 available=available,
                 statements_readable=_statements_error(
                     conn, "pg_stat_statements" in status.extensions),
                 statements_loaded=_library_loaded(conn),
                 tables=tables)


# -- judging -----------------------------------------------------------------------------------

def server_checks(spec: monitor.DatabaseMonitorSpec, facts: Facts) -> list[Check]:
    """Version, primary or standby, extensions and settings (pure: unit-tested)."""
    status = facts.status
    found = [_version(status), _primary(spec, status), _statements(spec, facts),
             _hypopg(spec, facts), _track_counts(spec, facts.settings.get("track_counts"))]
    io = facts.settings.get("track_io_timing")
    if io == "on":
        found.append(Check("track_io_timing", Level.OK, "on: statements' I/O time is measured"))
    else:
        found.append(Check("track_io_timing", Level.WARN,
                           f"{io or 'unreadable'}: slow statements are reported without the "
                           "time they spent reading (nothing is off)",
                           "ALTER SYSTEM SET track_io_timing = on; SELECT pg_reload_conf();"))
    return found


def _version(status: monitor.DatabaseStatus) -> Check:
    major = monitor.server_major(status.server_version)
    text = f"PostgreSQL {status.server_version}"
    if major is not None and major < monitor.OLDEST_MAJOR:
        return Check("server version", Level.FAIL, f"{text} is older than the oldest supported "
                     f"({monitor.OLDEST_MAJOR})", "upgrade PostgreSQL")
    if major is not None and major > monitor.NEWEST_MAJOR:
        return Check("server version", Level.WARN, f"{text} is newer than the newest tested "
                     f"({monitor.NEWEST_MAJOR})", "watch the first remediations closely")
    return Check("server version", Level.OK, f"{text} (supported: {monitor.OLDEST_MAJOR} to "
                 f"{monitor.NEWEST_MAJOR})")


def _acts(spec: monitor.DatabaseMonitorSpec) -> bool:
    return any(action_needed(spec, a) for a in ActionId if a is not ActionId.ADVICE)


def _primary(spec: monitor.DatabaseMonitorSpec, status: monitor.DatabaseStatus) -> Check:
    if not status.in_recovery:
        return Check("primary", Level.OK, "a primary: actions may run on it")
    if not _acts(spec):
        return Check("primary", Level.OK, "a standby, watched in observe mode: nothing runs "
                     "on it, detections are recorded")
    return Check("primary", Level.FAIL, "a standby (in recovery): no action runs on it, so "
                 f"mode {spec.mode.value} only records detections",
                 "point spec.database.host at the primary, or set spec.mode: observe to watch "
                 "the standby on purpose")


_STATEMENT_DETECTORS = (DetectorId.MISSING_INDEX, DetectorId.SLOW_STATEMENT)


def _statements(spec: monitor.DatabaseMonitorSpec, facts: Facts) -> Check:
    name = "pg_stat_statements"
    needed = any(detector_enabled(spec, d) for d in _STATEMENT_DETECTORS)
    what = "missing_index, slow_statement and index keep-or-revert are off"
    error = facts.statements_readable
    if error is None:
        return Check(name, Level.OK, "created and loaded: statements are measured")
    loaded = facts.statements_loaded
    restart = ("add pg_stat_statements to shared_preload_libraries (ALTER SYSTEM SET "
               "shared_preload_libraries = 'pg_stat_statements', keeping any already there) "
               "and restart PostgreSQL")
    if error == "not created":
        if name not in facts.available:
            return Check(name, _needed_or_warn(needed), f"not installed on the server: {what}",
                         "install PostgreSQL's contrib package, then " + restart)
        create = "CREATE EXTENSION pg_stat_statements; (as a superuser, in this database)"
        fix = create if loaded else f"{restart}, then {create}"
        return Check(name, _needed_or_warn(needed), f"not created in this database: {what}",
                     fix)
    return Check(name, _needed_or_warn(needed), f"created but cannot be read ({error}): "
                 f"{what}", restart if not loaded else
                 "GRANT pg_read_all_stats (or pg_monitor) to the collector's role")


def _hypopg(spec: monitor.DatabaseMonitorSpec, facts: Facts) -> Check:
    needed = action_needed(spec, ActionId.CREATE_INDEX)
    if "hypopg" in facts.status.extensions:
        return Check("hypopg", Level.OK, "created: index builds are pre-checked with "
                     "hypothetical indexes")
    what = "create_index is off (no index is built without the HypoPG pre-check)"
    major = monitor.server_major(facts.status.server_version)
    if "hypopg" in facts.available:
        return Check("hypopg", _needed_or_warn(needed), f"not created in this database: {what}",
                     "CREATE EXTENSION hypopg; (in this database)")
    return Check("hypopg", _needed_or_warn(needed), f"not installed on the server: {what}",
                 f"install HypoPG for PostgreSQL {major or ''} (Debian: postgresql-"
                 f"{major or 'N'}-hypopg), then CREATE EXTENSION hypopg;")


_COUNT_DETECTORS = (DetectorId.DEAD_TUPLES, DetectorId.STALE_STATISTICS,
                    DetectorId.UNUSED_INDEX)


def _track_counts(spec: monitor.DatabaseMonitorSpec, value: str | None) -> Check:
    if value == "on":
        return Check("track_counts", Level.OK, "on: table statistics are counted")
    needed = any(detector_enabled(spec, d) for d in _COUNT_DETECTORS)
    return Check("track_counts", _needed_or_warn(needed),
                 f"{value or 'unreadable'}: dead rows, stale statistics and unused indexes "
                 "cannot be seen (and autovacuum does not run)",
                 "ALTER SYSTEM SET track_counts = on; SELECT pg_reload_conf();")


def collector_checks(facts: Facts, user: str) -> list[Check]:
    """What the collector's role may read (pure)."""
    status = facts.status
    if status.executor_superuser:
        return [Check("collector role", Level.OK, f"{user} is a superuser: it reads every "
                      "session and statement")]
    missing = status.privileges_missing
    if "pg_monitor" in missing or "pg_read_all_stats" in missing:
        return [Check("collector role", Level.FAIL, f"{user} lacks pg_monitor: other roles' "
                      "sessions and statements are hidden, so their problems are never seen",
                      f"GRANT pg_monitor TO {_quoted(user)};")]
    return [Check("collector role", Level.OK, f"{user} has pg_monitor")]


_SESSION_ACTIONS = (ActionId.CANCEL_QUERY, ActionId.TERMINATE_SESSION)
_TABLE_ACTIONS = (ActionId.VACUUM, ActionId.ANALYZE, ActionId.CREATE_INDEX, ActionId.REINDEX,
                  ActionId.DROP_INVALID_INDEX, ActionId.DROP_INDEX)


def executor_checks(spec: monitor.DatabaseMonitorSpec, facts: Facts, user: str) -> list[Check]:
    """What the executor's role may do (pure)."""
    status = facts.status
    found = []
    if status.executor_superuser:
        found.append(Check("executor signals", Level.OK, f"{user} is a superuser: it may "
                           "cancel and terminate sessions"))
    elif "pg_signal_backend" in status.privileges_missing:
        needed = any(action_needed(spec, a) for a in _SESSION_ACTIONS)
        found.append(Check("executor signals", _needed_or_warn(needed),
                           f"{user} lacks pg_signal_backend: runaway queries, idle "
                           "transactions and lock chains cannot be ended",
                           f"GRANT pg_signal_backend TO {_quoted(user)};"))
    else:
        found.append(Check("executor signals", Level.OK, f"{user} has pg_signal_backend"))
    found.append(_tables(spec, facts, user))
    superuser = status.superuser_notice(spec.protect.superusers)
    if superuser is not None:
        found.append(Check("superuser sessions", Level.WARN, superuser))
    return found


def _tables(spec: monitor.DatabaseMonitorSpec, facts: Facts, user: str) -> Check:
    tables = facts.tables
    needed = any(action_needed(spec, a) for a in _TABLE_ACTIONS)
    name = "table ownership"
    if facts.status.executor_superuser:
        return Check(name, Level.OK, f"{user} is a superuser: it may maintain and index every "
                     "table")
    if not tables:
        return Check(name, Level.OK, "no tables yet")
    owned = [t for t in tables if t[2]]
    maintain = [t for t in tables if not t[2] and t[3]]
    neither = [f"{s}.{t}" for s, t, o, m in tables if not o and not m]
    if not maintain and not neither:
        return Check(name, Level.OK, f"{user} owns all {len(tables)} tables")
    shown = ", ".join(neither[:5]) + (f" and {len(neither) - 5} more" if len(neither) > 5 else "")
    major = monitor.server_major(facts.status.server_version) or 0
    fix = ("GRANT <the tables' owner role> TO " + _quoted(user) + ";"
           + (" (or, for VACUUM and ANALYZE only: GRANT MAINTAIN ON ALL TABLES IN SCHEMA "
              f"<schema> TO {_quoted(user)};)" if major >= 17 else ""))
    message = (f"{user} owns {len(owned)} of {len(tables)} tables"
               + (f", may only VACUUM/ANALYZE {len(maintain)} (MAINTAIN: no index builds "
                  "there)" if maintain else "")
               + (f"; cannot maintain or index {len(neither)}: {shown}" if neither else ""))
    level = Level.FAIL if needed and not owned and not maintain else Level.WARN
    if not needed:
        message += " (nothing is needed in observe mode)"
    return Check(name, level, message, fix)


def event_bus_checks(spec: monitor.DatabaseMonitorSpec, standalone: bool,
                     nats: settings.NatsSettings | None = None) -> list[Check]:
    """The NATS the components would use: the embedded one's binary (``run``), or the URL
    answering, with the login, within :data:`NATS_TIMEOUT` (an external one; in a pod, the
    rendered config's ``nats``, managed or not)."""
    bus = spec.event_bus
    if nats is not None:
        user = nats.user_file.read_text().strip() if nats.user_file else None
        password = nats.password_file.read_text().strip() if nats.password_file else None
        return [_nats_check(nats.url, user, password)]
    if not bus.url:
        try:
            binary = natsserver.find_binary()
        except natsserver.BinaryNotFound as exc:
            return [Check("event bus", Level.FAIL, str(exc), natsserver.INSTALL_HINT)]
        return [Check("event bus", Level.OK, f"embedded NATS ({binary}), started by "
                      "`startupmonkey run`")]
    if standalone and bus.credentials_secret is not None:
        return [Check("event bus", Level.FAIL, "spec.eventBus.credentialsSecret names a "
                      "Kubernetes Secret, which `startupmonkey run` cannot read",
                      "leave spec.eventBus.url unset (embedded NATS) or use a NATS that needs "
                      "no login")]
    return [_nats_check(bus.url, None, None)]


def _nats_check(url: str, user: str | None, password: str | None) -> Check:
    error = asyncio.run(_nats_error(url, user, password))
    if error is None:
        return Check("event bus", Level.OK, f"NATS at {_redacted(url)} answers"
                     + (f" and lets {user} in" if user else ""))
    fix = ("the login in the NATS Secret is refused: check spec.eventBus.credentialsSecret "
           "(managed NATS: the operator regenerates it)" if "authorization" in error.lower()
           else "is nats-server running there, and does spec.eventBus.url name it?")
    return Check("event bus", Level.FAIL, f"NATS at {_redacted(url)}: {error}", fix)


def _redacted(url: str) -> str:
    """A URL without any user:password part."""
    scheme, sep, rest = url.partition("://")
    return scheme + sep + rest.rpartition("@")[2] if sep else url.rpartition("@")[2]


async def _nats_error(url: str, user: str | None, password: str | None) -> str | None:
    from nats.aio.client import Client

    client = Client()
    seen: list[str] = []

    async def remember(exc: Exception) -> None:
        seen.append(" ".join(f"{type(exc).__name__}: {exc}".split()))

    # nats-py keeps trying a server that refuses (even with no reconnects allowed), so the
    # whole connect is bounded here and the last error it met is the answer.
    try:
        await asyncio.wait_for(client.connect(url, connect_timeout=NATS_TIMEOUT,
                                              max_reconnect_attempts=0, allow_reconnect=False,
                                              error_cb=remember, user=user,
                                              password=password), NATS_TIMEOUT)
    except TimeoutError:
        return (seen[-1] if seen else f"no answer within {NATS_TIMEOUT:.0f} s")[:300]
    except Exception as exc:  # nats-py raises many types; every one is an answer here
        return " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
    await client.close()
    return None


# -- the whole run -----------------------------------------------------------------------------

def database_checks(spec: monitor.DatabaseMonitorSpec, user: str, password: str | None,
                    executor_user: str, executor_password: str | None,
                    in_cluster: bool = False) -> list[Check]:
    """Log in as the collector, read and judge; then as the executor when it is another
    role. A failed login leaves the checks that need it out (the login's FAIL says why)."""
    database = spec.database
    separate = executor_user != user
    found: list[Check] = []
    login, conn = _login("collector login" if separate else "database login", database, user,
                         password, in_cluster)
    found.append(login)
    if conn is not None:
        facts = _read(conn, "collector" if separate else "database", user)
        if isinstance(facts, Check):
            found.append(facts)
        else:
            found += server_checks(spec, facts)
            found += collector_checks(facts, user)
            if not separate:
                found += executor_checks(spec, facts, user)
    if separate:
        login, conn = _login("executor login", database, executor_user, executor_password,
                             in_cluster)
        found.append(login)
        if conn is not None:
            facts = _read(conn, "executor", executor_user)
            found += [facts] if isinstance(facts, Check) else executor_checks(
                spec, facts, executor_user)
    return found


def _read(conn: psycopg.Connection[Any], who: str, user: str) -> Facts | Check:
    """The facts, or a FAIL saying what could not be read (a revoked catalog view, a server
    too old for pg_monitor, a query past QUERY_TIMEOUT): never a traceback."""
    with conn:
        try:
            return read_facts(conn)
        except psycopg.Error as exc:
            return Check(f"{who} reads", Level.FAIL, f"{user} cannot read what the checks "
                         f"need: {' '.join(str(exc).split())}",
                         "PostgreSQL 13 or newer, and a role that may read the catalog and "
                         "the statistics views (pg_monitor)")


def render_text(checks: Iterable[Check]) -> str:
    """One line per check, then its fix indented below."""
    lines = []
    for check in checks:
        # Names from the catalog (a table called "x\x1b[31m...\nOK ...") or a pod's report
        # must not drive the terminal or fake a line: control characters are shown escaped.
        lines.append(f"{check.level.value:<4}  {printable(check.name):<20} "
                     f"{printable(check.message)}")
        if check.fix and check.level is not Level.OK:
            lines.append(f"      {'':<20} fix: {printable(check.fix)}")
    return "\n".join(lines)


def exit_code(checks: Sequence[Check]) -> int:
    """0 when nothing FAILs, 1 otherwise."""
    return 1 if any(c.level is Level.FAIL for c in checks) else 0


def _print(checks: list[Check], output: str) -> int:
    code = exit_code(checks)
    if output == "json":
        print(json.dumps({"ok": code == 0, "checks": [c.as_dict() for c in checks]}, indent=2))
    else:
        print(render_text(checks))
        failed = sum(c.level is Level.FAIL for c in checks)
        print(f"\n{failed} check(s) failed" if failed else "\neverything the configured mode "
              "needs is there")
    return code


def _manifest_checks(args: argparse.Namespace) -> list[Check]:
    """``check -f``: from this machine, with the user's own login."""
    try:
        monitor_ = manifest.load(args.filename)
    except manifest.ManifestError as exc:
        return [Check("manifest", Level.FAIL, "; ".join(exc.problems),
                      "fix the fields named (startupmonkey validate -f lists them)")]
    spec = monitor_.spec
    user = args.user or os.environ.get("PGUSER") or getpass.getuser()
    password = os.environ.get("PGPASSWORD")
    executor_user = args.executor_user or user
    executor_password = os.environ.get("PGPASSWORD_EXECUTOR", password)
    checks = [Check("manifest", Level.OK, f"DatabaseMonitor {monitor_.metadata.namespace}/"
                    f"{monitor_.metadata.name}, mode {spec.mode.value}")]
    checks += database_checks(spec, user, password, executor_user, executor_password)
    return checks + event_bus_checks(spec, standalone=True)


def _moved(login: settings.DatabaseLogin, folder: Path | None) -> settings.DatabaseLogin:
    """``login`` with its user and password files read from ``folder`` instead (the check pod
    mounts the collector's Secret beside the executor's)."""
    if folder is None:
        return login
    return login.model_copy(update={
        "user_file": folder / login.user_file.name if login.user_file else None,
        "password_file": folder / login.password_file.name if login.password_file else None})


def config_checks(path: Path, collector_secret_dir: Path | None = None) -> list[Check]:
    """``check --config``: inside the cluster, from the rendered component config the operator
    wrote and the Secrets mounted as the components mount them (the check pod)."""
    try:
        config = settings.load(path)
        if config.executor is None or config.collector is None:
            raise ValueError(f"{path}: no collector or executor section")
        executor = config.executor.database.login()
        collector = _moved(config.collector.database, collector_secret_dir).login()
        passwords = (collector.password(), executor.password())
    except (ValueError, OSError) as exc:
        return [Check("config", Level.FAIL, f"cannot read the rendered config or its Secrets: "
                      f"{' '.join(str(exc).split())}", "is the monitor's Secret there, with "
                      "the keys spec.database.credentialsSecret names?")]
    ref = config.monitor
    checks = [Check("config", Level.OK, f"DatabaseMonitor {ref.namespace}/{ref.name}, mode "
                    f"{config.spec.mode.value}, read from inside the namespace")]
    checks += database_checks(config.spec, collector.user, passwords[0], executor.user,
                              passwords[1], in_cluster=True)
    return checks + event_bus_checks(config.spec, standalone=False, nats=config.executor.nats)


def write_message(path: Path, checks: Sequence[Check], limit: int = MESSAGE_LIMIT) -> None:
    """The checks as compact JSON in at most ``limit`` bytes (a pod's termination message,
    which the kubelet keeps up to 4096 bytes): messages and fixes are cut evenly to fit."""
    room = 400
    while True:
        text = json.dumps([[c.name, c.level.value, c.message[:room], c.fix[:room]]
                           for c in checks], separators=(",", ":"))
        if len(text.encode()) <= limit or room <= 0:
            break
        room -= 40
    path.write_text(text)


def read_message(text: str) -> list[Check]:
    """The checks :func:`write_message` wrote; raises ValueError on anything else (the text
    comes from a pod's status: any shape, nesting or type is possible)."""
    try:
        rows = json.loads(text)
        checks = [Check(n, Level(lv), m, f) for n, lv, m, f in rows]
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"not a check report: {type(exc).__name__}") from None
    if not all(isinstance(v, str) for c in checks for v in (c.name, c.message, c.fix)):
        raise ValueError("not a check report: a name, message or fix is not text")
    return checks


def main(args: argparse.Namespace) -> int:
    """Entry point of ``startupmonkey check``."""
    if args.kube is not None:
        from startupmonkey import checkpod  # Kubernetes client only when asked for

        checks = checkpod.cluster_checks(args.kube, args.namespace, args.pod_timeout)
    elif args.config is not None:
        checks = config_checks(args.config, args.collector_secret_dir)
    elif args.filename is not None:
        checks = _manifest_checks(args)
    else:
        print("startupmonkey check: give -f monitor.yaml or --kube NAME",
              file=sys.stderr)
        return 2
    if args.message_file is not None:
        write_message(args.message_file, checks)
    return _print(checks, args.output)
