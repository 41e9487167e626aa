"""A throwaway PostgreSQL cluster run as a local child process (initdb + postgres).

Why it exists: integration tests, ``startupmonkey demo`` and ``startupmonkey run`` need a real
PostgreSQL with ``pg_stat_statements`` preloaded and HypoPG available, started in about a
second on a free port, and stopped without leaving a process behind
(docs/design.md#testing-tiers).
:class:`PostgresCluster` is that controller, in the style of Patroni's acceptance
tests: ``start(timeout)``, ``stop()``, ``restart()``, a context manager, and a start error
that quotes the server log, so a broken environment explains itself.

The postmaster is our direct child (not forked by ``pg_ctl start``): we reap it ourselves, so
no ``<defunct>`` process lingers after a stop, and a Ctrl-C to the test run reaches it too
(process control is :mod:`~startupmonkey.localserv.process`, shared with the nats-server).
Readiness is what ``pg_ctl -w`` checks: ``postmaster.pid`` saying ``ready``. Stopping sends
the signals ``pg_ctl stop`` would (SIGINT = fast, SIGQUIT = immediate), then SIGKILL. The
SQL behind the administration methods (databases, extensions, roles) and the ``pg_hba.conf``
rules are in :mod:`~startupmonkey.localserv.pgadmin`.

Invariants:

- The cluster is disposable: ``fsync``, ``full_page_writes`` and ``synchronous_commit`` are
  off. Never point it at data you want to keep.
- PostgreSQL refuses to run as root, so when we are root every server binary runs as the
  ``postgres`` OS user (``os_user``) and the directories it needs are owned by that user;
  otherwise it runs as the current user. Server builds that user cannot reach (the version
  matrix's builds in a cache under ``/root``, :func:`matrix_bindir`) run from a hard-linked
  copy in the cluster's own temporary directory.
- Any major from 13 on runs: Debian's ``postgresql-15`` is found by default (with HypoPG);
  ``bindir=matrix_bindir(16)`` runs a build installed by ``hack/install-postgres.sh``
  (docs/postgres-support.md).
- Authentication (``pg_hba.conf``, written by :meth:`PostgresCluster.start` at initdb,
  text from :func:`~startupmonkey.localserv.pgadmin.hba`):
  the Unix socket trusts everyone; over TCP (127.0.0.1) the bootstrap superuser and roles
  created *without* a password are trusted, every other role must pass SCRAM-SHA-256. That
  lets tests exercise the product's real path: a role that logs in over TCP with a password
  read from a file.
- Passwords never leave the caller in clear text: roles get a SCRAM verifier computed
  client-side by libpq (so the password is not in the server log or in pg_stat_statements),
  and no method here returns or logs a password.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, LiteralString, Self

import psycopg
from psycopg import conninfo as pg_conninfo
from psycopg import sql

from startupmonkey.localserv import pgadmin, process

SettingValue = str | int | float | bool
"""A GUC value; booleans render as ``on``/``off``, everything else as a quoted string."""

DEBIAN_PACKAGES = "postgresql-15 postgresql-15-hypopg"
"""What to install on Debian/Ubuntu (PGDG) to get the binaries and the HypoPG extension."""

EXTENSIONS = pgadmin.EXTENSIONS
"""Extensions the product relies on; neither is trusted, so an admin creates them per DB."""

APPLICATION_NAME = "startupmonkey-localserv"
"""``application_name`` of this module's own administrative connections."""

TCP_TRUST_ROLE = pgadmin.TCP_TRUST_ROLE
"""NOLOGIN group whose members log in over TCP without a password (roles made without one)."""

DEFAULT_SETTINGS: Mapping[str, SettingValue] = {
    "shared_preload_libraries": "pg_stat_statements",
    "pg_stat_statements.track": "all",
    "track_io_timing": True,
    # Throwaway cluster: durability buys nothing and costs seconds per test.
    "fsync": False,
    "synchronous_commit": False,
    "full_page_writes": False,
    "shared_buffers": "16MB",
    "max_connections": 100,
    "lc_messages": "C",
    "timezone": "UTC",
    "log_line_prefix": "%m [%p] %q%u@%d ",
}
"""Settings every cluster gets unless the caller overrides them."""

MATRIX_MAJORS = (13, 14, 16, 17, 18)
"""The majors ``hack/install-postgres.sh`` installs into the cache (15 is Debian's)."""

MATRIX_HOW_TO = "bash hack/install-postgres.sh"
"""The command that installs the version matrix's server builds."""

_REQUIRED_TOOLS = ("initdb", "pg_ctl", "postgres")
_PORT_IN_USE = re.compile(r"could not bind|Address already in use|could not create any TCP")
_CONF_INCLUDE = "startupmonkey-localserv.conf"
_LOG_NAME = "startupmonkey-postgres.log"
_STOP_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}
_START_ATTEMPTS = 3


class PostgresError(RuntimeError):
    """Base class for errors raised by this module."""


class BinariesNotFound(PostgresError):
    """The PostgreSQL server binaries (initdb, pg_ctl, postgres) are not installed."""


class StartError(PostgresError, process.StartError):
    """initdb or the server failed; the message carries the tool output and the log tail."""


@dataclasses.dataclass(frozen=True)
class Binaries:
    """Where the PostgreSQL server binaries live (one major version's ``bin`` folder)."""

    bindir: Path

    def tool(self, name: str) -> Path:
        """Path of one binary in :attr:`bindir`, e.g. ``tool("pg_resetwal")``."""
        return self.bindir / name

    @property
    def major(self) -> int:
        """The server's major version, from ``postgres --version`` (allowed as root)."""
        return _major_of(self.tool("postgres"))


@functools.cache
def _major_of(postgres_bin: Path) -> int:
    out = subprocess.run([str(postgres_bin), "--version"], capture_output=True, text=True,
                         timeout=30, check=True, env=_tool_env()).stdout
    found = re.search(r"\) (\d+)", out)
    if found is None:
        raise PostgresError(f"{postgres_bin} --version said {out.strip()!r}, no major version")
    return int(found.group(1))


def _has_tools(bindir: Path) -> bool:
    return all(os.access(bindir / tool, os.X_OK) for tool in _REQUIRED_TOOLS)


def _pg_config_bindir() -> Path | None:
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        return None
    with contextlib.suppress(OSError, subprocess.SubprocessError):  # the caller looks elsewhere
        out = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
        )
        return Path(out.stdout.strip())
    return None


def _debian_bindirs() -> list[Path]:
    root = Path("/usr/lib/postgresql")
    if not root.is_dir():
        return []
    versions = [p for p in root.iterdir() if p.name.isdigit()]
    return [v / "bin" for v in sorted(versions, key=lambda p: int(p.name), reverse=True)]


def _candidate_bindirs() -> list[Path]:
    # pg_config first: on Debian it may belong to the client package only, and then points at
    # /usr/bin, which has no initdb; the checks below skip such a folder.
    found: list[Path | None] = [_pg_config_bindir(), *_debian_bindirs()]
    for tool in _REQUIRED_TOOLS:
        on_path = shutil.which(tool)
        found.append(Path(on_path).resolve().parent if on_path else None)
    return [p for p in found if p is not None]


def find_binaries(bindir: Path | str | None = None) -> Binaries:
    """Locate initdb, pg_ctl and postgres.

    Search order: ``bindir`` if given, ``pg_config --bindir``, the newest
    ``/usr/lib/postgresql/<major>/bin``, then ``PATH``. Raises :class:`BinariesNotFound` with
    the packages to install when none has all three.
    """
    candidates = [Path(bindir)] if bindir is not None else _candidate_bindirs()
    for candidate in candidates:
        if _has_tools(candidate):
            return Binaries(candidate)
    searched = ", ".join(str(c) for c in candidates) or "nothing found to search"
    raise BinariesNotFound(
        f"PostgreSQL server binaries ({', '.join(_REQUIRED_TOOLS)}) not found "
        f"(searched: {searched}). On Debian/Ubuntu: apt-get install {DEBIAN_PACKAGES}"
    )


def cache_root() -> Path:
    """Where hack/ caches downloads and builds: ``$STARTUPMONKEY_CACHE``, else
    ``${XDG_CACHE_HOME:-~/.cache}/startupmonkey`` (the rule of ``hack/lib.sh``)."""
    explicit = os.environ.get("STARTUPMONKEY_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "startupmonkey"


def matrix_bindir(major: int) -> Path:
    """The ``bin`` folder of the cached server build of ``major`` (13, 14, 16, 17, 18), as
    ``hack/install-postgres.sh`` installed it; :class:`BinariesNotFound` saying how to get it
    when it is not there."""
    bindir = cache_root() / "postgres" / str(major) / "bin"
    if not _has_tools(bindir):
        raise BinariesNotFound(
            f"PostgreSQL {major} server build not found in {bindir.parent}: "
            f"run {MATRIX_HOW_TO} {major}")
    return bindir


def _reachable(path: Path, user: process.OsUser) -> bool:
    return all(process.can_traverse(folder, user) for folder in [path, *path.parents])


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system: a copy instead
        shutil.copy2(src, dst)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the caller retries if it loses the race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _run_as(os_user: str) -> process.OsUser | None:
    try:
        return process.run_as(os_user, f"it comes with the {DEBIAN_PACKAGES.split()[0]} package")
    except LookupError as exc:
        raise PostgresError(f"running as root, and PostgreSQL refuses root: {exc}") from None


def _render_setting(value: SettingValue) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    text = str(value)
    if "\n" in text or "\0" in text:
        raise ValueError(f"setting value may not contain newlines: {text!r}")
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def _tool_env() -> dict[str, str]:
    # PG* variables of the caller (PGDATA, PGPORT, PGHOST...) must not redirect our tools.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


class PostgresCluster(process.ChildProcess):
    """One PostgreSQL cluster: a data directory, a postmaster, a TCP port and a Unix socket.

    ``datadir=None`` makes a private temporary directory (removed by :meth:`close`) holding
    the data directory and the Unix socket; an existing initialised ``datadir`` is reused as
    is. ``port=None`` picks a free port once and keeps it across restarts. ``settings`` are
    merged over :data:`DEFAULT_SETTINGS` (``listen_addresses`` may be overridden too; the
    port and socket directory may not, since the connection helpers derive from them).
    """

    start_error = StartError

    def __init__(
        self,
        datadir: Path | str | None = None,
        port: int | None = None,
        settings: Mapping[str, SettingValue] | None = None,
        *,
        bindir: Path | str | None = None,
        superuser: str = "postgres",
        os_user: str = "postgres",
        host: str = "127.0.0.1",
    ) -> None:
        reserved = {"port", "unix_socket_directories"} & set(settings or {})
        if reserved:
            raise ValueError(f"set {sorted(reserved)} through the constructor, not settings")
        self._binaries = find_binaries(bindir)
        super().__init__(_run_as(os_user))
        self._datadir_arg = Path(datadir).resolve() if datadir is not None else None
        self._auto_port = port is None
        self._port = port
        self._settings: dict[str, SettingValue] = dict(settings or {})
        self._superuser = superuser
        self._host = host
        self._datadir: Path | None = None
        self._socket_dir: Path | None = None
        self._runnable: Binaries | None = None

    def __repr__(self) -> str:
        return f"PostgresCluster(datadir={str(self._datadir)!r}, port={self._port!r})"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> Self:
        """Initialise the data directory if needed, then start and wait until ready.

        Raises :class:`StartError` with the tail of this start's server log. An automatically
        chosen port that another process took meanwhile is replaced.
        """
        if self.running:
            return self
        self._ensure_dirs()
        if not (self.datadir / "PG_VERSION").exists():
            self._initdb(timeout)
        for attempt in range(1, _START_ATTEMPTS + 1):
            self._write_config()
            try:
                self._start_postmaster(timeout)
            except StartError as err:
                if not (self._auto_port and attempt < _START_ATTEMPTS):
                    raise
                if not _PORT_IN_USE.search(str(err)):
                    raise
                self._port = free_port(self._host)
            else:
                break
        return self

    def stop(self, timeout: float = 30.0, mode: str = "fast") -> None:
        """Stop the server: ``mode`` (smart, fast, immediate), then immediate, then SIGKILL.

        No-op when it is not running. Waits until the postmaster is gone (and reaps it).
        """
        signals = (_STOP_SIGNALS[mode], signal.SIGQUIT, signal.SIGKILL)
        if self._halt(signals, timeout, None if self._process else self.postmaster_pid):
            # After SIGQUIT/SIGKILL the pid file stays; a recycled pid must not look alive.
            with contextlib.suppress(FileNotFoundError):
                (self.datadir / "postmaster.pid").unlink()

    def restart(self, timeout: float = 60.0) -> Self:
        """Fast stop and start on the same port and data directory (data survives)."""
        self.stop(timeout)
        return self.start(timeout)

    def stop_at_exit(self) -> None:
        """When Python exits with the server running: an immediate stop, then :meth:`close`."""
        self.stop(timeout=10, mode="immediate")
        self.close()

    @property
    def running(self) -> bool:
        """True while the postmaster recorded in ``postmaster.pid`` is alive."""
        pid = self.postmaster_pid
        return pid is not None and process.pid_alive(pid)

    @property
    def postmaster_pid(self) -> int | None:
        """PID of the postmaster from ``postmaster.pid``, or None when not running."""
        if self._datadir is None:
            return None
        try:
            first = (self._datadir / "postmaster.pid").read_text().split("\n", 1)[0]
        except (FileNotFoundError, NotADirectoryError):
            return None
        return int(first) if first.strip().isdigit() else None

    # -- where it is -------------------------------------------------------------------------

    @property
    def binaries(self) -> Binaries:
        """The server binaries this cluster runs."""
        return self._binaries

    @property
    def datadir(self) -> Path:
        """The data directory (created on first use)."""
        self._ensure_dirs()
        assert self._datadir is not None
        return self._datadir

    @property
    def socket_dir(self) -> Path:
        """Directory of the Unix socket; usable as libpq ``host``."""
        self._ensure_dirs()
        assert self._socket_dir is not None
        return self._socket_dir

    @property
    def log_path(self) -> Path:
        """The server log (stderr of the postmaster, appended across restarts)."""
        return self.datadir / _LOG_NAME

    @property
    def host(self) -> str:
        """TCP address the server listens on."""
        return self._host

    @property
    def port(self) -> int:
        """TCP port (also names the Unix socket); chosen on first use when not given."""
        if self._port is None:
            self._port = free_port(self._host)
        return self._port

    @property
    def superuser(self) -> str:
        """Name of the bootstrap superuser (trusted on the socket and on 127.0.0.1)."""
        return self._superuser

    @property
    def os_user(self) -> str | None:
        """OS account the server runs as when we are root; None when it runs as us."""
        return self._user.name if self._user else None

    # -- connection strings ------------------------------------------------------------------

    def conninfo(
        self,
        dbname: str = "postgres",
        user: str | None = None,
        *,
        socket: bool = False,
        **params: str | int,
    ) -> str:
        """libpq key/value string, over TCP (default) or the Unix socket; never a password.

        Extra ``params`` (``application_name``, ``connect_timeout``...) are added verbatim;
        pass a password to ``psycopg.connect(..., password=...)`` instead of putting it here.
        """
        host = str(self.socket_dir) if socket else self._host
        user = user or self._superuser
        return pg_conninfo.make_conninfo(
            "", host=host, port=self.port, dbname=dbname, user=user, **params
        )

    def dsn(self, dbname: str = "postgres", user: str | None = None) -> str:
        """``postgresql://user@127.0.0.1:port/dbname`` URI over TCP (no password)."""
        quote = urllib.parse.quote
        user = quote(user or self._superuser, safe="")
        return f"postgresql://{user}@{self._host}:{self.port}/{quote(dbname, safe='')}"

    def connect(
        self, dbname: str = "postgres", *, autocommit: bool = True
    ) -> psycopg.Connection[tuple[Any, ...]]:
        """A superuser connection over the Unix socket, for setup and inspection."""
        info = self.conninfo(
            dbname, socket=True, application_name=APPLICATION_NAME, connect_timeout=10
        )
        return psycopg.connect(info, autocommit=autocommit)

    def execute(self, dbname: str, *statements: sql.Composed | sql.SQL | LiteralString) -> None:
        """Run statements as the superuser in ``dbname``, each in autocommit."""
        with self.connect(dbname) as conn:
            for statement in statements:
                conn.execute(statement)

    # -- databases, extensions, roles --------------------------------------------------------

    def create_database(self, name: str, *, owner: str | None = None) -> PostgresDatabase:
        """``CREATE DATABASE`` (from template1, so extensions installed there are inherited)."""
        with self.connect() as conn:
            pgadmin.create_database(conn, name, owner)
        return PostgresDatabase(self, name)

    def drop_database(self, name: str) -> None:
        """``DROP DATABASE IF EXISTS ... WITH (FORCE)``: terminates sessions still in it."""
        with self.connect() as conn:
            pgadmin.drop_database(conn, name)

    def database(self, name: str) -> PostgresDatabase:
        """A handle on an existing database."""
        return PostgresDatabase(self, name)

    def install_extensions(self, dbname: str, extensions: Sequence[str] = EXTENSIONS) -> None:
        """``CREATE EXTENSION IF NOT EXISTS`` pg_stat_statements and hypopg in one database."""
        with self.connect(dbname) as conn:
            pgadmin.install_extensions(conn, extensions)

    def available_extensions(self) -> set[str]:
        """Names in ``pg_available_extensions`` (installed packages, not created ones)."""
        with self.connect() as conn:
            return pgadmin.available_extensions(conn)

    def create_role(
        self,
        name: str,
        password: str | None = None,
        *,
        login: bool = True,
        member_of: Iterable[str] = (),
    ) -> None:
        """Create a role; with a password it must log in over TCP with SCRAM-SHA-256.

        The password is turned into a SCRAM verifier by libpq before it is sent, so it shows
        up in neither the server log nor pg_stat_statements. A login role without a password
        joins :data:`TCP_TRUST_ROLE` and is trusted over TCP, like the superuser.
        ``member_of`` grants roles such as ``pg_monitor`` or ``pg_signal_backend``.
        """
        with self.connect() as conn:
            pgadmin.create_role(conn, name, password, login=login, member_of=member_of)

    def set_password(self, name: str, password: str) -> None:
        """Change a role's password (sent as a SCRAM verifier, see :meth:`create_role`)."""
        with self.connect() as conn:
            pgadmin.set_password(conn, name, password)

    def drop_role(self, name: str) -> None:
        """``DROP ROLE IF EXISTS`` (the caller drops or reassigns what it owns first)."""
        with self.connect() as conn:
            pgadmin.drop_role(conn, name)

    # -- configuration and tools -------------------------------------------------------------

    def configure(self, settings: Mapping[str, SettingValue]) -> None:
        """Merge settings and rewrite the config; reloads a running server.

        Settings that need a restart (``shared_buffers``, ``max_connections``...) take effect
        at the next :meth:`restart`.
        """
        self._settings.update(settings)
        self._write_config()
        if self.running:
            self.execute("postgres", "SELECT pg_catalog.pg_reload_conf()")

    def run_tool(
        self, tool: str, *args: str | Path, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run a binary of this installation as the cluster's OS user, e.g. ``pg_resetwal``.

        Output is captured; the caller checks ``returncode``.
        """
        return self._run([self._exec_binaries().tool(tool), *args], timeout)

    # -- internals ---------------------------------------------------------------------------

    def _exec_binaries(self) -> Binaries:
        """The binaries as the server's OS user can run them: the installed ones, or a
        hard-linked copy of their installation (``bin``, ``lib``, ``share``, found relative
        to ``bin`` since the builds are relocatable) when that user cannot reach them."""
        if self._runnable is None:
            self._runnable = self._binaries
            user, bindir = self._user, self._binaries.bindir
            if user is not None and not _reachable(bindir, user):
                copy = self._make_owned_dir("smpg-bin-") / "pg"
                shutil.copytree(bindir.parent, copy, symlinks=True,
                                copy_function=_link_or_copy)
                self._runnable = Binaries(copy / bindir.name)
        return self._runnable

    def _ensure_dirs(self) -> None:
        if self._datadir is not None:
            return
        if self._datadir_arg is None:
            base = self._make_owned_dir("smpg-")
            datadir, socket_dir = base / "data", base
        else:
            datadir = self._datadir_arg
            # A Unix socket path is limited to ~107 bytes: keep it short, under the tmp dir.
            socket_dir = self._make_owned_dir("smpg-sock-")
            self._check_reachable(datadir.parent)
        if not datadir.exists():
            datadir.mkdir(mode=0o700, parents=True)
            self._give(datadir)
        self._datadir, self._socket_dir = datadir, socket_dir

    def _check_reachable(self, path: Path) -> None:
        if self._user is None:
            return
        for folder in [path, *path.parents]:
            if folder.exists() and not process.can_traverse(folder, self._user):
                raise PostgresError(
                    f"OS user {self._user.name!r} cannot reach {folder} (needed for the data "
                    f"directory); use datadir=None or a directory under {tempfile.gettempdir()}"
                )

    def _write_file(self, path: Path, text: str) -> None:
        path.write_text(text)
        path.chmod(0o600)
        self._give(path)

    def _run(self, args: Sequence[str | Path], timeout: float) -> subprocess.CompletedProcess[str]:
        user = self._user
        return subprocess.run(
            [str(a) for a in args],
            cwd=self.socket_dir,
            env=_tool_env(),
            capture_output=True,
            text=True,
            timeout=timeout + 10,
            check=False,
            user=user.uid if user else None,
            group=user.gid if user else None,
            extra_groups=[] if user else None,
        )

    def _initdb(self, timeout: float) -> None:
        result = self._run(
            [
                self._exec_binaries().tool("initdb"),
                "--pgdata",
                self.datadir,
                "--username",
                self._superuser,
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--locale",
                "C",
                "--no-sync",
                # 13's initdb has no --no-instructions (they only go to our captured output).
                *(["--no-instructions"] if self._binaries.major >= 14 else []),
            ],
            timeout,
        )
        if result.returncode != 0:
            raise StartError(
                f"initdb failed for {self.datadir} (exit {result.returncode}):\n"
                f"{result.stdout}{result.stderr}"
            )
        conf = self.datadir / "postgresql.conf"
        self._write_file(conf, conf.read_text() + f"\ninclude '{_CONF_INCLUDE}'\n")
        self._write_file(self.datadir / "pg_hba.conf", pgadmin.hba(self._superuser))

    def _effective_settings(self) -> dict[str, SettingValue]:
        return {
            **DEFAULT_SETTINGS,
            "listen_addresses": self._host,
            "port": self.port,
            "unix_socket_directories": str(self.socket_dir),
            **self._settings,
        }

    def _write_config(self) -> None:
        lines = ["# Written by startupmonkey.localserv.postgres; rewritten at every start."]
        for name, value in self._effective_settings().items():
            lines.append(f"{name} = {_render_setting(value)}")
        self._write_file(self.datadir / _CONF_INCLUDE, "\n".join(lines) + "\n")

    def _start_postmaster(self, timeout: float) -> None:
        log = self.log_path
        offset = log.stat().st_size if log.exists() else 0
        postgres_bin = self._exec_binaries().tool("postgres")
        postmaster = self._spawn([postgres_bin, "-D", self.datadir], log,
                                 cwd=self.socket_dir, env=_tool_env())
        self._wait_ready(
            postmaster,
            lambda: self._pid_file_status(postmaster.pid) in ("ready", "standby"),
            timeout, lambda what: self._start_failure(what, offset))

    def _abort_start(self) -> None:
        self.stop(mode="immediate")

    def _pid_file_status(self, pid: int) -> str | None:
        # postmaster.pid line 1 is the pid, line 8 the state pg_ctl -w waits for.
        try:
            lines = (self.datadir / "postmaster.pid").read_text().splitlines()
        except FileNotFoundError:
            return None
        if len(lines) < 8 or lines[0].strip() != str(pid):
            return None
        return lines[7].strip()

    def _start_failure(self, what: str, offset: int) -> str:
        tail = process.log_tail(self.log_path, offset)
        return (
            f"PostgreSQL in {self.datadir} (port {self.port}) did not start: {what}\n"
            f"--- server log {self.log_path} ---\n{tail or '(empty)'}"
        )


@dataclasses.dataclass(frozen=True)
class PostgresDatabase:
    """One database of a :class:`PostgresCluster`, with its connection strings."""

    cluster: PostgresCluster
    dbname: str

    @property
    def conninfo(self) -> str:
        """Superuser key/value conninfo over TCP."""
        return self.cluster.conninfo(self.dbname)

    @property
    def dsn(self) -> str:
        """Superuser URI over TCP."""
        return self.cluster.dsn(self.dbname)

    def conninfo_for(self, user: str, *, socket: bool = False, **params: str | int) -> str:
        """Conninfo for another role (no password: pass it to psycopg separately)."""
        return self.cluster.conninfo(self.dbname, user, socket=socket, **params)

    def connect(self, *, autocommit: bool = True) -> psycopg.Connection[tuple[Any, ...]]:
        """A superuser connection to this database over the Unix socket."""
        return self.cluster.connect(self.dbname, autocommit=autocommit)

    def install_extensions(self) -> None:
        """Create pg_stat_statements and hypopg here (idempotent)."""
        self.cluster.install_extensions(self.dbname)
