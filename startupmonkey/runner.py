"""``startupmonkey run -f monitor.yaml``: the whole data plane on one machine, no Kubernetes.

Takes the same DatabaseMonitor manifest as the cluster and starts collector, analyser and
executor as child processes with their real wiring: gRPC over a private Unix socket between
collector and analyser, an embedded ``nats-server`` on loopback with a generated login (unless
``spec.eventBus.url`` names one), and the executor's API on a private Unix socket for
``startupmonkey approve``. Remediations are kept in a JSONL audit log; a final-state JSON file
is written on exit. The database password comes from a libpq passfile, ``PGPASSWORD`` or a
prompt, never from the manifest; it reaches the children only as a file in a private folder.
Ctrl-C or SIGTERM stops every child (SIGTERM, then SIGKILL after a grace period), so nothing is
left running. The state of the database is said at the top, in the words of the cluster's
DatabaseReachable condition, as a line each time it changes (:class:`DatabaseState`); a
database that is never reachable is retried for as long as it runs, or until
``--give-up-after`` (docs/operations.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import getpass
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pydantic
from nats.aio.client import Client as NatsClient

from startupmonkey import (
    auditlog,
    dbreport,
    events,
    kubetime,
    manifest,
    natsperms,
    notify,
    settings,
)
from startupmonkey.localserv import nats as natsserver
from startupmonkey.models import messages, monitor

COMPONENTS = ("analyser", "executor", "collector")
NATS_SERVER = "nats-server"
STOP_GRACE = 30.0


def resolve_user(explicit: str | None) -> str:
    """The database user: --user, else PGUSER, else the OS user (as libpq does)."""
    return explicit or os.environ.get("PGUSER") or getpass.getuser()


def _try_login(spec: monitor.DatabaseSpec, user: str, password: str | None) -> str | None:
    """None when a login works, else the error text."""
    kwargs: dict[str, Any] = {"password": password} if password is not None else {}
    try:
        with psycopg.connect(host=spec.host, port=spec.port, dbname=spec.dbname, user=user,
                             sslmode=spec.ssl_mode, connect_timeout=10,
                             application_name="startupmonkey-run", **kwargs):
            return None
    except psycopg.OperationalError as exc:
        return " ".join(str(exc).split())


def resolve_password(spec: monitor.DatabaseSpec, user: str,
                     interactive: bool) -> tuple[str | None, str]:
    """PGPASSWORD, else whatever libpq finds itself (passfile, trust), else a prompt; and
    where it came from, in words. A login that fails for another reason (nothing listens,
    the database does not exist) does not stop the run: it starts anyway and says the
    database's state until it can log in (the components retry with backoff)."""
    if "PGPASSWORD" in os.environ:
        return os.environ["PGPASSWORD"], "the password comes from PGPASSWORD"
    problem = _try_login(spec, user, None)
    if problem is not None and interactive and ("password" in problem.lower()):
        typed = getpass.getpass(f"password for {user}@{spec.host}:{spec.port}/{spec.dbname}: ")
        return typed, "the password was typed at the prompt"
    # libpq found a way (passfile, trust, peer), or the state line says what is wrong.
    return None, "no PGPASSWORD: the password is libpq's own (a passfile entry, or none)"


def _write_private(path: Path, text: str) -> Path:
    auditlog.write_private(path, text)  # created 0600: never readable by others, not even briefly
    return path


class Supervisor:
    """Restarts children that exit, with backoff, and gives up on one that keeps exiting.

    A child that exits is restarted after 1 s, then 2, 4, ... up to 30 s; more than
    ``MAX_RESTARTS`` exits of one child within ``WINDOW`` seconds stop the whole run with that
    reason (exit code 1). Every exit and restart is a line of output and an entry of the final
    state, so nothing stops silently.
    """

    MAX_RESTARTS = 5
    WINDOW = 600.0

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._exits: dict[str, list[float]] = {}
        self._due: dict[str, float] = {}
        self.events: list[dict[str, Any]] = []
        self.gave_up: str | None = None

    def check(self, plane: LocalPlane) -> list[str]:
        """One round: note new exits, restart those whose delay has passed (nothing more
        once it has given up: the run is stopping)."""
        if self.gave_up is not None:
            return []
        now = self._clock()
        lines = []
        for name in plane.dead_children():
            if name not in self._due:
                lines.append(self._exited(plane, name, now))
        for name, due in sorted(self._due.items()):
            if now >= due and self.gave_up is None:
                del self._due[name]
                try:
                    plane.restart(name)
                except Exception as exc:  # one failed start is one more exit, shown
                    lines.append(f"{name} did not start again: {' '.join(str(exc).split())}")
                    continue
                self._record(name, "restarted")
                lines.append(f"{name} restarted")
        return lines

    def _exited(self, plane: LocalPlane, name: str, now: float) -> str:
        exits = [t for t in self._exits.get(name, []) if now - t < self.WINDOW] + [now]
        self._exits[name] = exits
        code = plane.exit_code(name)
        how = f"exit code {code}" if code is not None else "no exit code"
        if len(exits) > self.MAX_RESTARTS:
            self.gave_up = (f"{name} exited {len(exits)} times within "
                            f"{self.WINDOW / 60:.0f} minutes ({how}); stopping")
            self._record(name, "gave up", code)
            return f"{self.gave_up}; its last log lines:\n{plane.log_tail(name)}"
        delay = min(30.0, 2.0 ** (len(exits) - 1))
        self._due[name] = now + delay
        self._record(name, "exited", code)
        return (f"{name} exited ({how}); restarting it in {delay:.0f} s "
                f"(exit {len(exits)} of at most {self.MAX_RESTARTS} in "
                f"{self.WINDOW / 60:.0f} minutes)")

    def _record(self, name: str, what: str, code: int | None = None) -> None:
        event: dict[str, Any] = {"child": name, "event": what,
                                 "time": datetime.datetime.now(datetime.UTC).isoformat()}
        if code is not None:
            event["exitCode"] = code
        self.events.append(event)


class LocalPlane:
    """The child processes, the embedded NATS and their private files."""

    def __init__(self, monitor_: monitor.DatabaseMonitor, user: str, password: str | None,
                 audit_log: Path) -> None:
        self.monitor = monitor_
        self.user = user
        self.password = password
        self.audit_log = audit_log.resolve()
        self.workdir = Path(tempfile.mkdtemp(prefix="startupmonkey-"))
        self.workdir.chmod(0o700)
        self.nats: natsserver.NatsServer | None = None
        self.nats_url = ""
        self.nats_logins: dict[natsperms.Role, natsperms.Login] = {}
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.config_path = self.workdir / "config.yaml"
        self.supervisor = Supervisor()

    @property
    def executor_address(self) -> str:
        """Where ``startupmonkey approve --executor`` reaches the executor."""
        return f"unix://{self.workdir}/executor.sock"

    def start(self) -> None:
        """Start NATS (unless external), write the config, start the children."""
        self._start_nats()
        _write_private(self.config_path, settings.dump(self.render()))
        self._write_watcher_connection()
        for component in COMPONENTS:
            self.children[component] = self._spawn(component, self.config_path)

    def _write_watcher_connection(self) -> None:
        """What ``startupmonkey events --executor <address>`` reads: the bus and the watcher
        login (subscribe only), 0600 in the private work folder beside the executor's
        socket, removed with it at stop."""
        watcher = self.nats_logins.get(natsperms.Role.WATCHER)
        meta = self.monitor.metadata
        events.write_connection(self.workdir, events.Connection(
            self.nats_url, meta.namespace, meta.name, watcher.user if watcher else None,
            watcher.password if watcher else None))

    def _start_nats(self) -> None:
        bus = self.monitor.spec.event_bus
        if bus.url:
            self.nats_url = bus.url
            return
        # One login per role, each with its role's permissions only (natsperms).
        self.nats_logins = {role: natsperms.Login(role.value, secrets.token_urlsafe(24), role)
                            for role in natsperms.Role}
        meta = self.monitor.metadata
        logins = self.nats_logins.values()
        # Held before it starts: a signal during the start still finds it for stop(), which
        # removes its folder (it holds the generated logins), started or not.
        self.nats = natsserver.NatsServer(
            jetstream=bus.jetstream, users={login.user: login.password for login in logins},
            permissions={login.user: natsperms.permissions(login.role, meta.namespace,
                                                           meta.name) for login in logins})
        self.nats.start()
        self.nats_url = self.nats.url

    def render(self) -> settings.ComponentConfig:
        """The rendered component config (the same file the operator puts in a ConfigMap)."""
        spec = self.monitor.spec
        password_file = (_write_private(self.workdir / "db-password", self.password)
                         if self.password is not None else None)
        login = settings.DatabaseLogin(host=spec.database.host, port=spec.database.port,
                                       dbname=spec.database.dbname,
                                       ssl_mode=spec.database.ssl_mode, user=self.user,
                                       password_file=password_file)
        analyser_nats = self._nats_settings(natsperms.Role.ANALYSER)
        executor_nats = self._nats_settings(natsperms.Role.EXECUTOR)
        analyser_socket = f"unix://{self.workdir}/analyser.sock"
        # The collector proves it is ours to the analyser (the socket is private already; the
        # token is what the cluster needs, kept here so both wirings are the same).
        token = _write_private(self.workdir / "ingest-token", secrets.token_urlsafe(32))
        meta = self.monitor.metadata
        watched = settings.watched_databases(spec.database)
        return settings.ComponentConfig(
            monitor=settings.MonitorRef(namespace=meta.namespace, name=meta.name), spec=spec,
            collector=settings.CollectorSettings(database=login,
                                                 analyser_address=analyser_socket,
                                                 ingest_token_file=token, **watched),
            analyser=settings.AnalyserSettings(listen_address=analyser_socket,
                                               ingest_token_file=token,
                                               nats=analyser_nats, **watched),
            executor=settings.ExecutorSettings(database=login, nats=executor_nats,
                                               listen_address=self.executor_address,
                                               reporter="jsonl", audit_log=self.audit_log,
                                               **watched))

    def _nats_settings(self, role: natsperms.Role) -> settings.NatsSettings:
        """How the component of ``role`` reaches NATS: its own login, as private files."""
        found = settings.NatsSettings(url=self.nats_url,
                                      jetstream=self.monitor.spec.event_bus.jetstream)
        login = self.nats_logins.get(role)
        if login is not None:
            found.user_file = _write_private(self.workdir / f"nats-{role}-user", login.user)
            found.password_file = _write_private(self.workdir / f"nats-{role}-password",
                                                 login.password)
        return found

    def _spawn(self, component: str, config: Path) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if k != "PGPASSWORD"}
        if component == "executor":
            # A stable name (as a pod's): a restarted `run` recognises the records its earlier
            # life left Running and takes them over at once (an interrupted index build is
            # cleaned up and retried) instead of waiting out every timeout.
            ref = self.monitor.metadata
            env["POD_NAME"] = f"run@{socket.gethostname()}/{ref.namespace}/{ref.name}"
        log = (self.workdir / f"{component}.log").open("ab")
        try:
            return subprocess.Popen(
                [sys.executable, "-m", "startupmonkey.cli", component, "--config", str(config),
                 "--observability-port", "0"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
        finally:
            log.close()

    def dead_children(self) -> list[str]:
        """Children (components and the embedded nats-server) whose process has exited."""
        dead = [name for name, child in self.children.items() if child.poll() is not None]
        if self.nats is not None and not self.nats.running:
            dead.append(NATS_SERVER)
        return dead

    def exit_code(self, name: str) -> int | None:
        """How a dead child ended (None when unknown)."""
        if name == NATS_SERVER:
            return self.nats.exit_code if self.nats is not None else None
        return self.children[name].poll()

    def restart(self, name: str) -> None:
        """Start a dead child again (nats-server on its port, with its store)."""
        if name == NATS_SERVER:
            assert self.nats is not None
            self.nats.restart()  # stop() first: it forgets the dead process's ports
        else:
            self.children[name] = self._spawn(name, self.config_path)

    def supervise(self) -> list[str]:
        """Restart what exited, with backoff; the lines to show. Sets ``supervisor.gave_up``
        when a child exits too often to go on."""
        return self.supervisor.check(self)

    def log_tail(self, component: str, lines: int = 15) -> str:
        """The end of a component's log (JSON lines)."""
        if component == NATS_SERVER and self.nats is not None:
            path = self.nats.log_path
        else:
            path = self.workdir / f"{component}.log"
        with contextlib.suppress(OSError):  # no log yet: nothing to show
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        """SIGTERM every child (the executor first ends what it runs), then SIGKILL."""
        for child in self.children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in self.children.values():
            try:
                child.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(10)
        if self.nats is not None:
            self.nats.close()  # its folder holds the generated login: remove it too
        shutil.rmtree(self.workdir, ignore_errors=True)


class DatabaseReports:
    """The executor's database reports, read from the audit log as it grows.

    The executor journals its ``status.database`` as an entry of kind ``Database`` each time
    it changes (``executor/journal.py``), the same report the operator turns into the
    DatabaseReachable condition. Each :meth:`new` reads only what was appended since the
    last call (a kept offset, whole lines only); a file that shrank or was replaced (the
    executor compacts it at start) is read again from its start. Entries from before
    ``after`` (an earlier run's, kept by a compaction) are not this run's and are skipped.
    """

    def __init__(self, path: Path, after: datetime.datetime) -> None:
        self.path = path
        self.after = after.replace(microsecond=0)  # the journal's times are to the second
        self._offset = 0
        self._inode: int | None = None

    def new(self) -> list[tuple[monitor.DatabaseStatus, datetime.datetime]]:
        """The reports appended since the last call, oldest first, each with when it was
        made (every one: a state that came and went between two calls is still said)."""
        try:
            with self.path.open("rb") as file:
                stat = os.fstat(file.fileno())
                if stat.st_ino != self._inode or stat.st_size < self._offset:
                    self._inode, self._offset = stat.st_ino, 0
                file.seek(self._offset)
                data = file.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1  # a line still being written is read next time
        self._offset += end
        # Most lines are Remediations: those are not parsed at all.
        found = (self._report(raw) for raw in data[:end].splitlines() if b'"Database"' in raw)
        return [report for report in found if report is not None]

    def _report(self, raw: bytes) -> tuple[monitor.DatabaseStatus, datetime.datetime] | None:
        try:
            entry = json.loads(raw)
            at = datetime.datetime.fromisoformat(entry["time"])
            if entry.get("kind") != "Database" or at < self.after:
                return None
            return monitor.DatabaseStatus.model_validate(entry["status"]), at
        except (ValueError, KeyError, TypeError, pydantic.ValidationError):
            return None  # a torn or foreign line: the final state counts bad lines


class DatabaseState:
    """What ``run`` says about the database: a line when its state changes, a reminder while
    it stays unreachable, and whether to give up.

    The state is :meth:`DatabaseStatus.state_line
    <startupmonkey.models.monitor.DatabaseStatus.state_line>`, the words of the cluster's
    DatabaseReachable condition. A new report with the same words says nothing (the
    executor checks every interval). While the database is unreachable a reminder is due
    after ``FIRST_REMINDER`` seconds, then twice as long each time up to ``REMINDER_CAP``
    (the executor's own retry backoff doubles to 30 s, ``db.Backoff``), so a long outage is
    one line every 30 s, not one a second. Times are passed in (monotonic ``now``), so the
    unit tests drive it without waiting.
    """

    FIRST_REMINDER = 2.0
    REMINDER_CAP = 30.0

    def __init__(self, started: float, give_up_after: float | None = None,
                 password_source: str = "") -> None:
        self.started = started
        self.give_up_after = give_up_after
        self.password_source = password_source
        self.status: monitor.DatabaseStatus | None = None
        self.line: str | None = None
        self.since: datetime.datetime | None = None
        self.unreachable_since: datetime.datetime | None = None
        self.ever_reachable = False
        self._gap = self.FIRST_REMINDER
        self._reminder_due: float | None = None

    def _words(self, status: monitor.DatabaseStatus) -> str:
        line = status.state_line()
        if status.problem() in ("wrong password", "no password given") and self.password_source:
            line += f"; {self.password_source}"
        return line

    def update(self, status: monitor.DatabaseStatus, at: datetime.datetime,
               now: float) -> str | None:
        """Take a report made at ``at``; the line to show when its words changed, else None."""
        line = self._words(status)
        self.status = status
        if line == self.line:
            return None
        self.line, self.since = line, at
        self._gap = self.FIRST_REMINDER
        if status.reachable:
            self.ever_reachable = True
            self.unreachable_since = self._reminder_due = None
        else:
            self.unreachable_since = self.unreachable_since or at
            self._reminder_due = now + self._gap
        return f"database {line}"

    def reminder(self, now: float) -> str | None:
        """"Still unreachable" once a reminder is due, else None."""
        if self._reminder_due is None or now < self._reminder_due or self.status is None:
            return None
        self._gap = min(2 * self._gap, self.REMINDER_CAP)
        self._reminder_due = now + self._gap
        words = self.status.problem() or self.status.last_error or "no detail reported"
        return (f"database still unreachable ({words}) since "
                f"{_clock(self.unreachable_since)}; retrying{self._giving_up(now)}")

    def _giving_up(self, now: float) -> str:
        if self.give_up_after is None or self.ever_reachable:
            return ""
        left = max(0.0, self.started + self.give_up_after - now)
        return f", giving up in {left:.0f} s (--give-up-after)"

    def give_up(self, now: float) -> str | None:
        """Why to stop when the database has not once been reachable within
        ``give_up_after`` seconds of the start, else None."""
        if self.give_up_after is None or self.ever_reachable or \
                now - self.started < self.give_up_after:
            return None
        state = f"database {self.line}" if self.line else "no report on the database yet"
        return (f"the database was not reachable within {self.give_up_after:g} s of the start "
                f"(--give-up-after {self.give_up_after:g}); {state}")

    def top_line(self, now: float) -> str:
        """The live view's first line."""
        if self.line is None:
            return "Database: not checked yet"
        retrying = f"; retrying{self._giving_up(now)}" if self.unreachable_since else ""
        return f"Database: {self.line}  (since {_clock(self.since)}{retrying})"


#: Where ``startupmonkey run`` reads webhook URLs and signing keys: ``<dir>/<secret>/<key>``,
#: as Kubernetes mounts a Secret (``--notify-secret-dir``, or this variable).
NOTIFY_FOLDER_ENV = "STARTUPMONKEY_NOTIFY_SECRET_DIR"


def notify_secret_dir(args: argparse.Namespace) -> Path | None:
    """``--notify-secret-dir``, else :data:`NOTIFY_FOLDER_ENV`, else None."""
    given = getattr(args, "notify_secret_dir", None) or os.environ.get(NOTIFY_FOLDER_ENV)
    return Path(given) if given else None


def read_secret_file(folder: Path, secret: str, key: str, *, strip: bool = True) -> bytes:
    """``<folder>/<secret>/<key>``, which only its owner may read (a webhook URL is a
    credential), stripped of white space unless ``strip`` is false (a signing key:
    :func:`notify.signing_key`); raises :class:`notify.Unresolved` saying which file and why,
    never what it holds."""
    path = folder / secret / key
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise notify.Unresolved("SecretNotFound", f"{path}: {exc.strerror}") from None
    try:
        stat = os.fstat(fd)
        if stat.st_mode & 0o077:
            raise notify.Unresolved("SecretNotReadable", f"{path} may be read by others than "
                                    f"its owner (mode {stat.st_mode & 0o777:o}): chmod 600")
        data = os.read(fd, 65536)
        return data.strip() if strip else data
    finally:
        os.close(fd)


class LocalNotifier:
    """``spec.notifications`` under ``startupmonkey run``: the Remediations come from the
    audit log (re-read whenever it changed), the URLs from the secret folder, and what was
    delivered is recorded in ``<audit log>.notified`` (JSON lines, 0600), so a restarted run
    sends again only what it had not delivered (docs/notifications.md).

    The record file also keeps when each target was first seen (``{"target", "since"}``; a
    removed target's entry is closed with ``"since": null``): a state entered before it is
    old news, so a new or renamed target never replays the audit log. Lines of the file that
    cannot be read are said once, moved to ``<record>.quarantine`` and the file rewritten
    without them; since what they recorded is unknown, every target then starts from now
    (no delivery is repeated because its record was lost)."""

    def __init__(self, plane: LocalPlane, folder: Path, emit: Callable[[str], None],
                 retry: notify.Retry | None = None) -> None:
        self.targets = plane.monitor.spec.notifications
        self.folder = folder
        self.audit_log = plane.audit_log
        self.record_path = plane.audit_log.with_name(plane.audit_log.name + ".notified")
        self.place = notify.Place(plane.executor_address)
        self.emit = emit
        self.delivered: dict[str, set[str]] = {}
        self.appender = auditlog.Appender(self.record_path)
        self.since = self._load_records()
        #: the last audit-log record of each Remediation (re-judged before each attempt)
        self.latest: dict[str, dict[str, Any]] = {}
        self.workers = {t.name: notify.Worker(t.name, self._resolver(t), self._record,
                                              self._told(t.name), retry, self._refresher(t))
                        for t in self.targets}
        self._seen: tuple[int, int, int] | None = None

    def _load_records(self) -> dict[str, datetime.datetime]:
        """Read the record file: what was delivered, and each target's notify-from time (new
        targets: now, recorded at once); a file with unreadable lines is quarantined."""
        try:
            contents = auditlog.read(self.record_path)
        except OSError as exc:  # a folder in its place, no permission: nothing recorded
            self.emit(f"notification records {self.record_path}: cannot be read "
                      f"({exc.strerror or exc}); every target starts from now")
            contents = auditlog.Contents()
        bad = list(contents.bad_lines)
        kept: list[dict[str, Any]] = []
        recorded: dict[str, datetime.datetime] = {}
        for entry in contents.entries:
            remediation, done = entry.get("remediation"), entry.get("pair")
            target, since = entry.get("target"), entry.get("since")
            if isinstance(remediation, str) and isinstance(done, str):
                self.delivered.setdefault(remediation, set()).add(done)
            elif isinstance(target, str) and since is None and "since" in entry:
                recorded.pop(target, None)
            elif isinstance(target, str) and kubetime.parse_or_none(since) is not None:
                recorded[target] = kubetime.parse(str(since))
            else:
                bad.append((0, json.dumps(entry)[:2000]))
                continue
            kept.append(entry)
        now = kubetime.utcnow()
        try:
            if bad:
                recorded = {}  # what the lost lines recorded is unknown: only news from now
                self._quarantine(bad, kept)
            since = notify.notify_from(self.targets, recorded, now)
            changes: list[dict[str, Any]] = [
                {"target": t, "since": kubetime.format(at)} for t, at in since.items()
                if recorded.get(t) != at]
            changes += [{"target": t, "since": None} for t in recorded if t not in since]
            for entry in changes:
                self.appender.append(entry)
        except OSError as exc:  # a full disk: the times hold for this run only
            self.emit(f"notification records {self.record_path}: could not be written "
                      f"({exc.strerror or exc}); the targets' start times hold for this run only")
        return notify.notify_from(self.targets, recorded, now)

    def _quarantine(self, bad: list[tuple[int, str]], kept: list[dict[str, Any]]) -> None:
        quarantine = self.record_path.with_name(self.record_path.name + ".quarantine")
        auditlog.append_lines(quarantine, [line for _, line in bad])
        auditlog.rewrite(self.record_path, kept)
        numbers = ", ".join(str(n) for n, _ in bad[:10] if n) or "entries of no known shape"
        self.emit(f"notification records {self.record_path}: {len(bad)} unreadable line(s) "
                  f"(lines {numbers}: not JSON records, a write torn by a crash or a full "
                  f"disk?) moved to {quarantine}; every target starts from now, so no "
                  "delivery they may have recorded is repeated")

    def _resolver(self, target: monitor.NotificationTarget) -> notify.Resolver:
        ref = target.secret_ref

        async def resolve() -> notify.Endpoint:
            url = read_secret_file(self.folder, ref.name, ref.url_key).decode(errors="replace")
            key = None
            if ref.hmac_key:
                key = notify.signing_key(read_secret_file(self.folder, ref.name, ref.hmac_key,
                                                          strip=False))
                if not key:  # never sent unsigned to a receiver that checks signatures
                    where = self.folder / ref.name / ref.hmac_key
                    raise notify.Unresolved("SecretKeyNotFound", f"{where}: is empty")
            return notify.Endpoint(url, key)
        return resolve

    def _refresher(self, target: monitor.NotificationTarget) -> notify.Refresher:
        async def refresh(job: notify.Job) -> notify.Job | None:
            obj = self.latest.get(job.remediation)
            if obj is None:
                return job
            if notify.pair(job.state, target.name) in self.delivered.get(job.remediation,
                                                                         set()):
                return None
            return notify.rejudge(obj, job, target.name, target.format, self.place)
        return refresh

    async def _record(self, target: str, job: notify.Job) -> None:
        entry = {"remediation": job.remediation, "pair": notify.pair(job.state, target)}
        self.appender.append(entry)
        self.delivered.setdefault(job.remediation, set()).add(entry["pair"])

    def _told(self, name: str) -> notify.Listener:
        def told(outcome: str, job: notify.Job, health: notify.Health) -> None:
            if outcome != "retried":
                words = "delivered" if health.ok else health.message
                self.emit(f"notification {job.remediation} {job.state.value} to {name}: "
                          f"{words}")
        return told

    def poll(self) -> int:
        """Queue what is due in the audit log as it is now; how many jobs were queued."""
        try:
            stat = self.audit_log.stat()
        except FileNotFoundError:
            return 0
        seen = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if seen == self._seen:
            return 0
        self._seen = seen
        latest: dict[str, dict[str, Any]] = {}
        for entry in auditlog.read(self.audit_log).entries:
            obj = entry.get("object")
            if entry.get("kind") == "Remediation" and isinstance(obj, dict):
                name = (obj.get("metadata") or {}).get("name")
                if isinstance(name, str):
                    latest[name] = obj
        self.latest = latest
        queued = 0
        for name, obj in latest.items():
            for target, state in notify.due(self.targets, obj, self.delivered.get(name, set()),
                                            self.since):
                msg = notify.message(obj, state, self.place)
                queued += self.workers[target.name].submit(notify.Job(
                    msg.namespace, name, state, notify.build(msg, target.format),
                    msg.delivery_id))
        return queued

    async def stop(self) -> None:
        """Stop the workers (what was not delivered is sent by the next run)."""
        await asyncio.gather(*(w.stop() for w in self.workers.values()))


def _clock(at: datetime.datetime | None) -> str:
    """``at`` as the local time of day (the run's lines are stamped so too)."""
    return at.astimezone().strftime("%H:%M:%S") if at is not None else "?"


class View:
    """What the user sees: one line per event (plain), or a redrawn summary (terminal)."""

    def __init__(self, plane: LocalPlane, live: bool,
                 database: DatabaseState | None = None) -> None:
        self.plane = plane
        self.live = live
        self.database = database or DatabaseState(time.monotonic())
        self.superusers_said: str | None = None
        self.detections: dict[str, messages.Detection] = {}
        self.remediations: dict[str, messages.RemediationEvent] = {}
        self.lines: list[str] = []

    def _stamp(self) -> str:
        return datetime.datetime.now().strftime("%H:%M:%S")

    def on_message(self, subject: str, data: bytes) -> None:
        """Record one bus message and show it."""
        try:
            if ".detections." in subject:
                detection = messages.parse_detection(data)
                if detection.id in {d.id for d in self.detections.values()}:
                    return
                self.detections[detection.key] = detection
                line = f"detected {detection.detector.value}: {detection.summary}"
            else:
                event = messages.parse_remediation_event(data)
                self.remediations[event.remediation] = event
                line = (f"{event.remediation} {event.action.value} -> {event.state.value}: "
                        f"{event.message}")
        except messages.MalformedMessage as exc:
            line = f"ignored a malformed message: {exc}"
        self.emit(line)

    def emit(self, line: str) -> None:
        """Show a line now (plain) or on the next redraw (terminal)."""
        stamped = f"{self._stamp()} {line}"
        self.lines = [*self.lines[-11:], stamped]
        if not self.live:
            print(stamped, flush=True)

    def on_database(self, status: monitor.DatabaseStatus, at: datetime.datetime,
                    now: float) -> None:
        """Record one database report; a line only when its state changed, and a note when
        sessions log in as a superuser and that was not said yet (at start the database may
        have been unreachable)."""
        line = self.database.update(status, at, now)
        if line is not None:
            self.emit(line)
        notice = status.superuser_notice(self.plane.monitor.spec.protect.superusers)
        if notice is not None and notice != self.superusers_said:
            self.superusers_said = notice
            self.emit(f"note: {notice}")

    def remind(self, now: float) -> None:
        """Plain mode: say the database is still unreachable when a reminder is due (the
        live view's top line says it all the time)."""
        line = self.database.reminder(now)
        if line is not None and not self.live:
            self.emit(line)

    def redraw(self) -> None:
        """Redraw the terminal summary."""
        meta, db = self.plane.monitor.metadata, self.plane.monitor.spec.database
        out = ["\x1b[H\x1b[2J", f"StartupMonkey  {meta.namespace}/{meta.name}  "
               f"{db.dbname} on {db.host}:{db.port}  mode {self.plane.monitor.spec.mode.value}",
               self.database.top_line(time.monotonic()), "", "Detections:"]
        out += [f"  {d.detector.value:22} {d.summary}" for d in self.detections.values()] or [
            "  none yet"]
        out += ["", "Remediations:"]
        out += [f"  {name:22} {e.action.value:18} {e.state.value:16} {e.message[:70]}"
                for name, e in self.remediations.items()] or ["  none yet"]
        pending = [n for n, e in self.remediations.items() if e.state.value == "PendingApproval"]
        if pending:
            out += ["", "Pending approval: startupmonkey approve <name> --executor "
                    f"{self.plane.executor_address}"]
        out += ["", "Recent:", *[f"  {line}" for line in self.lines], "",
                "Ctrl-C stops everything."]
        sys.stdout.write("\n".join(out) + "\n")
        sys.stdout.flush()


def final_state(plane: LocalPlane, view: View, started: datetime.datetime,
                stopped_because: str | None = None) -> dict[str, Any]:
    """The final-state document: every Remediation's last record from the audit log, the
    database's last report of this run (the run's own first login when the executor made
    none) and why the run stopped."""
    remediations: dict[str, Any] = {}
    since = started.replace(microsecond=0)  # the journal's times are to the second
    status = view.database.status
    database: dict[str, Any] | None = status.dump() if status is not None else None
    contents = auditlog.read(plane.audit_log)
    for entry in contents.entries:
        try:
            if entry.get("kind") == "Remediation":
                obj = entry["object"]
                remediations[obj["metadata"]["name"]] = {
                    "spec": obj["spec"], "status": obj.get("status", {})}
            elif entry.get("kind") == "Database" and \
                    datetime.datetime.fromisoformat(entry["time"]) >= since:
                database = entry["status"]
        except (KeyError, TypeError, ValueError):
            contents.bad_lines.append((0, str(entry)[:200]))
    meta = plane.monitor.metadata
    return {
        "monitor": {"namespace": meta.namespace, "name": meta.name},
        "startedAt": started.isoformat(),
        "stoppedAt": datetime.datetime.now(datetime.UTC).isoformat(),
        "database": database,
        "detections": [d.model_dump(mode="json", by_alias=True, exclude_none=True)
                       for d in view.detections.values()],
        "remediations": remediations,
        "auditLog": str(plane.audit_log),
        "auditLogBadLines": len(contents.bad_lines),
        "supervision": plane.supervisor.events,
        "stoppedBecause": (stopped_because or plane.supervisor.gave_up
                           or "asked to stop (SIGINT or SIGTERM)"),
    }


def stop_reason(plane: LocalPlane, view: View) -> str | None:
    """Why the run must stop on its own (a child that keeps exiting, a database that was
    never reachable within --give-up-after), None while it may go on."""
    return plane.supervisor.gave_up or view.database.give_up(time.monotonic())


async def watch(plane: LocalPlane, view: View, stop: asyncio.Event,
                started: datetime.datetime | None = None,
                secrets_dir: Path | None = None) -> str | None:
    """Show what happens until asked to stop or until the run must stop; why it must.
    Database reports from before ``started`` (default: now) are an earlier run's. With
    ``spec.notifications`` and ``secrets_dir``, notifications are sent from the audit log."""
    client = NatsClient()
    notifier = LocalNotifier(plane, secrets_dir, view.emit) \
        if plane.monitor.spec.notifications and secrets_dir is not None else None
    reports = DatabaseReports(plane.audit_log, started or datetime.datetime.now(datetime.UTC))

    async def on_error(exc: Exception) -> None:
        pass  # the disconnect itself is shown once; nats-py would print a traceback per try

    closing = False

    async def on_disconnect() -> None:
        if not closing:  # our own close at the end is no news
            view.emit("lost the connection to NATS; reconnecting")

    async def on_reconnect() -> None:
        view.emit("connected to NATS again")

    watcher = plane.nats_logins.get(natsperms.Role.WATCHER)  # subscribe only

    await client.connect(plane.nats_url, max_reconnect_attempts=-1,
                         user=watcher.user if watcher else None,
                         password=watcher.password if watcher else None, error_cb=on_error,
                         disconnected_cb=on_disconnect, reconnected_cb=on_reconnect)
    meta = plane.monitor.metadata

    async def on_msg(msg: Any) -> None:
        view.on_message(msg.subject, msg.data)

    await client.subscribe(messages.monitor_subjects(meta.namespace, meta.name), cb=on_msg)
    try:
        while not stop.is_set():
            for line in plane.supervise():
                view.emit(line)
            for status, at in reports.new():
                view.on_database(status, at, time.monotonic())
            if notifier is not None:
                notifier.poll()
            view.remind(time.monotonic())
            reason = stop_reason(plane, view)
            if reason is not None:
                if plane.supervisor.gave_up is None:  # the supervisor said its own already
                    view.emit(f"giving up: {reason}")
                return reason
            if view.live:
                view.redraw()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
        return None
    finally:
        closing = True
        if notifier is not None:
            await notifier.stop()
        await client.close()


class _Interrupted(Exception):
    """SIGINT or SIGTERM arrived before the watch loop took over."""


_SIGNALLED: list[int] = []
"""Signals seen before the watch loop took over (only the first one interrupts)."""


def _interrupt(signum: int, frame: object) -> None:
    _SIGNALLED.append(signum)
    if len(_SIGNALLED) == 1:  # a second signal must not cut the stop short
        raise _Interrupted(signal.Signals(signum).name)


def interrupted(exc: BaseException | None) -> bool:
    """Whether ``exc`` is the start's :class:`_Interrupted` or was raised around one: a library
    may wrap what a signal handler raised inside its callback (pydantic does, when the signal
    arrives while a serializer function runs during the config dump)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, _Interrupted):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def main(args: argparse.Namespace) -> int:
    """Entry point of ``startupmonkey run``."""
    try:
        monitor_ = manifest.load(args.filename)
    except manifest.ManifestError as exc:
        print(f"{exc.path}: {len(exc.problems)} problem(s)", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    bus = monitor_.spec.event_bus
    if bus.url and bus.credentials_secret is not None:
        print(f"{args.filename}: spec.eventBus.credentialsSecret names a Kubernetes Secret, "
              "which `startupmonkey run` cannot read; without Kubernetes use the embedded NATS "
              "(leave spec.eventBus.url unset) or a NATS that needs no login", file=sys.stderr)
        return 1
    secrets_dir = notify_secret_dir(args)
    if monitor_.spec.notifications and secrets_dir is None:
        print(f"{args.filename}: spec.notifications name Kubernetes Secrets, which `startupmonkey "
              "run` cannot read; give their keys as files <dir>/<secret name>/<key> (mode 0600) "
              f"with --notify-secret-dir <dir> (or {NOTIFY_FOLDER_ENV})", file=sys.stderr)
        return 1
    user = resolve_user(args.user)
    password, source = resolve_password(monitor_.spec.database, user, sys.stdin.isatty())
    # --give-up-after counts from here: time at a password prompt is not the database's.
    started = datetime.datetime.now(datetime.UTC)
    database = DatabaseState(time.monotonic(), getattr(args, "give_up_after", None), source)
    # Read as the executor will (its login, its query) before anything starts: said first.
    first = dbreport.read(monitor_.spec, user, password, "startupmonkey-run")
    superusers = first.superuser_notice(monitor_.spec.protect.superusers)
    if superusers is not None:
        print(f"note: {superusers}", flush=True)
    plane = LocalPlane(monitor_, user, password, args.audit_log)
    view = View(plane, live=sys.stdout.isatty() and not args.plain, database=database)
    view.superusers_said = superusers
    view.on_database(first, first.checked_at or started, time.monotonic())
    stop = asyncio.Event()
    stopped_because: str | None = None
    # Ctrl-C or SIGTERM while the plane starts ends the start; while it runs, the watch loop
    # (asyncio's handlers); while it stops, further signals are ignored so the stop finishes
    # (children reaped, the work folder with the password file removed, the state written).
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, _interrupt)
    try:
        plane.start()
        view.emit(f"running {', '.join(COMPONENTS)}; approve with: startupmonkey approve "
                  f"<name> --executor {plane.executor_address}; follow with: startupmonkey "
                  f"events --executor {plane.executor_address}")

        async def run() -> str | None:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            return await watch(plane, view, stop, started, secrets_dir)

        stopped_because = asyncio.run(run())
    except Exception as exc:  # _Interrupted, also as the cause of a library's error
        if not interrupted(exc):
            raise
        view.emit("interrupted while starting; stopping")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        plane.stop()
        state = final_state(plane, view, started, stopped_because)
        auditlog.write_private(args.state_file, json.dumps(state, indent=2, default=str))
        if stopped_because is not None and view.live:  # the live view is gone: say why
            print(f"startupmonkey run: {stopped_because}", file=sys.stderr, flush=True)
        print(f"stopped; audit log {plane.audit_log}, final state {args.state_file}",
              flush=True)
        for sig, handler in previous.items():  # a caller in the same process (the demo, a
            signal.signal(sig, handler)       # test) gets its Ctrl-C back
    return 1 if stopped_because is not None else 0
