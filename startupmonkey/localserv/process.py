"""Process control shared by the local servers: one server as our direct child process.

:class:`ChildProcess` is the base of :class:`~startupmonkey.localserv.postgres.PostgresCluster`
and :class:`~startupmonkey.localserv.nats.NatsServer`. It owns what the two do alike:

- private temporary directories (``mkdtemp``: mode 0700), removed by :meth:`close`, and
  handed to the unprivileged OS user the server runs as when we are root (:func:`run_as`);
- spawning: stdin closed, stdout and stderr appended to a log file, optionally as that user
  with no supplementary groups;
- waiting until ready: the subclass's readiness probe is polled; a server that exits first
  or is not ready in time fails with :class:`StartError` quoting the log written since the
  spawn, and is stopped;
- stopping: a list of signals sent in turn (e.g. SIGTERM, then SIGKILL), each given the
  timeout to take effect, then the child is reaped, so no ``<defunct>`` process lingers; a
  child already reaped is never signalled (its pid may belong to someone else by then);
- an ``atexit`` hook stopping whatever is still running when Python exits, and the context
  manager (``with Server() as s``: started, and closed even when the start fails).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import logging
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

log = logging.getLogger(__name__)
POLL_INTERVAL = 0.01
"""Seconds between readiness probes, and between checks that a process is gone."""
LOG_TAIL_LINES = 40
"""Lines of the server log quoted by a failed start."""


class StartError(RuntimeError):
    """The server exited or did not become ready; the message carries its log tail.

    The servers' own ``StartError`` classes derive from this one and from their module's
    base error, so callers catch either."""


@dataclasses.dataclass(frozen=True)
class OsUser:
    """The unprivileged account a server runs as when we are root."""

    name: str
    uid: int
    gid: int


def run_as(os_user: str, why: str) -> OsUser | None:
    """``os_user`` when we are root, else None (the server runs as us). ``why`` explains a
    missing account (LookupError)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(os_user)
    except KeyError:
        raise LookupError(f"OS user {os_user!r} does not exist ({why})") from None
    return OsUser(entry.pw_name, entry.pw_uid, entry.pw_gid)


def can_traverse(path: Path, user: OsUser) -> bool:
    """Whether ``user`` may enter the folder ``path`` (owner, group or other x bit)."""
    st = path.stat()
    if st.st_uid == user.uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == user.gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie nobody reaps counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):  # no /proc (or it just exited): kill(0) answered
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0] != "Z"
    return True


def wait_gone(pid: int, process: subprocess.Popen[bytes] | None, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for the process to end (reaping our own child)."""
    if process is not None:
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_INTERVAL)
    return True


def log_tail(path: Path, offset: int = 0, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines written to ``path`` after byte ``offset`` ("" if none)."""
    with contextlib.suppress(OSError), path.open("rb") as file:  # no log yet: nothing to quote
        file.seek(offset)
        return "\n".join(file.read().decode("utf-8", "replace").splitlines()[-lines:])
    return ""


_LIVE: set[ChildProcess] = set()
_ATEXIT_REGISTERED = False


def _stop_all_at_exit() -> None:
    for child in list(_LIVE):
        try:
            child.stop_at_exit()
        except Exception as exc:  # keep stopping the others; this one may outlive us
            log.warning("could not stop %r at exit: %s", child, exc)


def _track(child: ChildProcess) -> None:
    # A server outlives the Python process that started it unless someone stops it.
    global _ATEXIT_REGISTERED
    if not _ATEXIT_REGISTERED:
        atexit.register(_stop_all_at_exit)
        _ATEXIT_REGISTERED = True
    _LIVE.add(child)


class ChildProcess:
    """One server run as our child: owned temporary folders, spawn, readiness, stop.

    Subclasses implement :meth:`start` with :meth:`_spawn` and :meth:`_wait_ready`, and
    :meth:`stop` with :meth:`_halt`; ``_user`` is the OS user the server runs as (None: us).
    """

    start_error: type[StartError] = StartError
    """What a failed start raises (each server's own subclass)."""

    def __init__(self, user: OsUser | None = None) -> None:
        self._user = user
        self._owned_dirs: list[Path] = []
        self._process: subprocess.Popen[bytes] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()  # __exit__ does not run when __enter__ raises
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self, timeout: float = 60.0) -> Self:
        """Start the server and wait until it is ready."""
        raise NotImplementedError

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server and reap it; a no-op when it is not running."""
        raise NotImplementedError

    def restart(self, timeout: float) -> Self:
        """Stop and start again (same port, same data)."""
        self.stop(timeout)
        return self.start(timeout)

    def close(self) -> None:
        """Stop the server and remove the temporary directories this object created."""
        self.stop()
        for path in reversed(self._owned_dirs):
            shutil.rmtree(path, ignore_errors=True)
        self._owned_dirs.clear()

    def stop_at_exit(self) -> None:
        """What the ``atexit`` hook does with a server still running: :meth:`close`."""
        self.close()

    @property
    def exit_code(self) -> int | None:
        """How the server's process ended (negative: the signal), None while it runs or
        when there is none."""
        return None if self._process is None else self._process.poll()

    # -- for subclasses ----------------------------------------------------------------------

    def _make_owned_dir(self, prefix: str) -> Path:
        """A new private temporary folder (0700) of the server's user, removed by close."""
        path = Path(tempfile.mkdtemp(prefix=prefix))
        self._owned_dirs.append(path)
        self._give(path)
        return path

    def _give(self, path: Path) -> None:
        """Hand ``path`` to the server's OS user (when we are root)."""
        if self._user is not None:
            os.chown(path, self._user.uid, self._user.gid)

    def _spawn(self, args: Sequence[str | Path], log: Path, *, cwd: Path,
               env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start the server as our child (as ``_user`` when set), its output appended to
        ``log``; tracked for the ``atexit`` hook."""
        user = self._user
        with log.open("ab") as out:
            self._give(log)
            process = subprocess.Popen(
                [str(a) for a in args], stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, cwd=cwd, env=env,
                user=user.uid if user else None, group=user.gid if user else None,
                extra_groups=[] if user else None)
        self._process = process
        _track(self)
        return process

    def _wait_ready(self, process: subprocess.Popen[bytes], ready: Callable[[], bool],
                    timeout: float, failure: Callable[[str], str]) -> None:
        """Poll ``ready`` until it is true. If the server exits first, or is not ready within
        ``timeout`` seconds, or the wait is interrupted, stop it (see :meth:`_abort_start`);
        the first two raise :attr:`start_error` with ``failure(what happened)``."""
        deadline = time.monotonic() + timeout
        try:
            while not ready():
                if process.poll() is not None:
                    raise self.start_error(failure(f"exit code {process.returncode}"))
                if time.monotonic() > deadline:
                    raise self.start_error(failure(f"not ready within {timeout}s"))
                time.sleep(POLL_INTERVAL)
        except BaseException:
            self._abort_start()
            raise

    def _abort_start(self) -> None:
        """Stop a server whose start failed."""
        self.stop()

    def _halt(self, signals: Sequence[signal.Signals], timeout: float,
              pid: int | None = None) -> bool:
        """Send ``signals`` in turn to our child (or, when we have none, to ``pid``), each
        given ``timeout`` seconds to end it, and reap it. True if a signal was sent."""
        process, self._process = self._process, None
        _LIVE.discard(self)
        if process is not None:
            pid = process.pid if process.poll() is None else None
        signalled = pid is not None and pid_alive(pid)
        if pid is not None and signalled:
            for sig in dict.fromkeys(signals):
                with contextlib.suppress(ProcessLookupError):  # gone already: what we want
                    if process is not None:
                        process.send_signal(sig)
                    else:
                        os.kill(pid, sig)
                if wait_gone(pid, process, timeout):
                    break
        if process is not None:
            process.wait()
        return signalled
