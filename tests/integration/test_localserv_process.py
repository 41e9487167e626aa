"""``startupmonkey.localserv.process``, the process control under the local PostgreSQL and
nats-server, with real child processes: ready when the probe says so, a start that fails
quotes the log of this start, SIGTERM then SIGKILL for a child that ignores SIGTERM, nothing
left running or on disk after close, a reaped child never signalled again; and what the two
servers keep on top of it: the nats-server's folder (config with the password, 0600) is gone
after close, and PostgreSQL runs as the unprivileged user when we are root.
"""

from __future__ import annotations

import os
import signal
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Self

import pytest

from startupmonkey.localserv import nats, postgres, process
from tests.support import components

pytestmark = pytest.mark.integration

# A child that writes "ready" to a file once it has set up its SIGTERM handling (renamed into
# place: the probe only asks whether the file exists, so it must never exist half written).
CHILD = """
import os, signal, sys, time
if sys.argv[2] == "ignore":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("child starting", flush=True)
if sys.argv[2] == "fail":
    print("child gives up: bad config", flush=True)
    sys.exit(3)
with open(sys.argv[1] + ".tmp", "w") as flag:  # the probe sees the file complete or not at all
    flag.write("ready")
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(600)
"""


class Sleeper(process.ChildProcess):
    """The smallest server: CHILD in a private folder."""

    def __init__(self, how: str = "term") -> None:
        super().__init__()
        self.how = how
        self.folder = self._make_owned_dir("smtest-")
        self.log = self.folder / "child.log"
        self.flag = self.folder / "ready"
        self.probe: Callable[[], bool] = self.flag.exists

    def start(self, timeout: float = 10.0) -> Self:
        offset = self.log.stat().st_size if self.log.exists() else 0
        child = self._spawn([sys.executable, "-c", CHILD, self.flag, self.how], self.log,
                            cwd=self.folder)
        self._wait_ready(child, self.probe, timeout,
                         lambda what: f"sleeper: {what}\n{process.log_tail(self.log, offset)}")
        return self

    def stop(self, timeout: float = 0.5) -> None:
        self.flag.unlink(missing_ok=True)
        self._halt((signal.SIGTERM, signal.SIGKILL), timeout)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None


def test_start_waits_for_ready_and_close_leaves_nothing() -> None:
    with Sleeper() as child:
        pid = child.pid
        assert pid is not None and process.pid_alive(pid)
        assert child.flag.read_text() == "ready"
        assert "child starting" in child.log.read_text()
        assert stat.S_IMODE(child.folder.stat().st_mode) == 0o700
        folder = child.folder
    assert not process.pid_alive(pid)
    assert not folder.exists()


def test_a_child_ignoring_sigterm_is_killed_after_the_timeout() -> None:
    with Sleeper("ignore") as child:
        pid = child.pid
        assert pid is not None
        child.stop(timeout=0.3)
        assert not process.pid_alive(pid)
        assert child.pid is None
        child.stop()  # a second stop is a no-op


def test_a_failed_start_quotes_its_log_and_leaves_no_process() -> None:
    child = Sleeper("fail")
    child.log.write_text("an earlier start\n")
    with pytest.raises(process.StartError) as failed:
        child.start()
    message = str(failed.value)
    assert message.startswith("sleeper: exit code 3")
    assert "bad config" in message and "an earlier start" not in message
    assert child.pid is None
    child.close()


def test_not_ready_in_time_is_stopped() -> None:
    child = Sleeper()
    child.probe = lambda: False
    with pytest.raises(process.StartError, match=r"not ready within 0\.5s"):
        child.start(timeout=0.5)
    assert child.pid is None
    child.close()


def test_a_reaped_child_is_not_signalled_again() -> None:
    child = Sleeper().start()
    assert child._process is not None
    child._process.kill()
    child._process.wait()  # reaped: its pid may be anyone's now
    assert child._halt((signal.SIGTERM,), 1) is False
    child.close()


def test_log_tail_reads_from_the_offset(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_text("old\n" + "".join(f"line {n}\n" for n in range(100)))
    assert process.log_tail(log, 4).splitlines() == [f"line {n}" for n in range(60, 100)]
    assert process.log_tail(tmp_path / "missing") == ""


def test_start_errors_are_both_the_module_error_and_the_shared_one() -> None:
    assert issubclass(postgres.StartError, postgres.PostgresError)
    assert issubclass(postgres.StartError, process.StartError)
    assert issubclass(nats.StartError, nats.NatsError)
    assert issubclass(nats.StartError, process.StartError)


def test_nats_folder_with_the_password_is_private_and_removed_on_close() -> None:
    components.nats_server_binary()
    secret = "s3cret-password"
    with nats.NatsServer(users={"app": secret}) as server:
        config = server.workdir / "nats-server.conf"
        assert secret in config.read_text()
        assert stat.S_IMODE(config.stat().st_mode) == 0o600
        assert stat.S_IMODE(server.workdir.stat().st_mode) == 0o700
        workdir, pid = server.workdir, server.pid
        assert pid is not None
    assert not workdir.exists()
    assert not process.pid_alive(pid)


def test_nats_failed_start_quotes_its_log() -> None:
    components.nats_server_binary()
    server = nats.NatsServer(port=1, host="256.0.0.1")  # not an address
    with pytest.raises(nats.StartError, match="nats-server did not start") as failed:
        server.start(timeout=10)
    assert "--- log" in str(failed.value)
    assert server.pid is None
    server.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="runs as the postgres user only when root")
def test_postgres_runs_unprivileged_and_its_files_are_private() -> None:
    components.postgres_binaries()
    with postgres.PostgresCluster() as cluster:
        pid = cluster.postmaster_pid
        assert pid is not None and Path(f"/proc/{pid}").stat().st_uid != 0
        assert cluster.os_user == "postgres"
        for name in ("pg_hba.conf", "startupmonkey-localserv.conf"):
            assert stat.S_IMODE((cluster.datadir / name).stat().st_mode) == 0o600
        socket_dir = cluster.socket_dir
    assert not socket_dir.exists()
    assert not process.pid_alive(pid)
