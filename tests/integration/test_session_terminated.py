"""A test session ended by SIGTERM (a CI job's time limit, a ``kill``) cleans up as one ended
by Ctrl-C does (``tests/conftest.py``, ``pytest_configure``): the servers it started are
stopped and their private directories, which hold passwords, are removed. Python's default
SIGTERM ends the process without fixture teardown or ``atexit`` hooks, which left
``/tmp/smnats-*`` (a NATS config with its users' passwords) and running servers behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.eventually import wait_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
INNER = '''
import json
import os
import signal


def test_held_until_terminated(nats_auth):
    server = nats_auth.server
    ready = os.environ["SM_READY"]
    with open(ready + ".part", "w") as out:
        json.dump({"pid": server.pid, "workdir": str(server.workdir)}, out)
    os.rename(ready + ".part", ready)
    signal.pause()  # until a signal comes
'''


def _alive(pid: int) -> bool:
    try:
        return b"nats-server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_a_terminated_session_stops_its_servers_and_removes_their_secrets(
        tmp_path: Path) -> None:
    inner = tmp_path / "test_inner.py"
    inner.write_text(INNER)
    ready = tmp_path / "ready.json"
    # Our conftest as a plugin; no config file (the inner test needs none of pyproject's).
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               "-p", "tests.conftest", "-c", os.devnull, "--rootdir", str(tmp_path),
               "-o", "asyncio_default_fixture_loop_scope=function", str(inner)]
    with subprocess.Popen(command, cwd=REPO, env={**os.environ, "SM_READY": str(ready)},
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT) as session:
        try:
            wait_until(lambda: ready.exists() or session.poll() is not None, timeout=60,
                       what="the inner session's server up")
            assert ready.exists(), session.communicate()[0].decode()
            held = json.loads(ready.read_text())
            workdir, pid = Path(held["workdir"]), int(held["pid"])
            assert workdir.is_dir() and _alive(pid)
            assert any("password" in f.read_text() for f in workdir.glob("*.conf")), \
                "the server's private directory holds its users' passwords"
            session.send_signal(signal.SIGTERM)
            output = session.communicate(timeout=60)[0].decode()
        finally:
            if session.poll() is None:
                session.kill()
    left = {"server running": _alive(pid), "directory kept": workdir.exists()}
    if left["server running"]:  # what the session should have done, so none is left
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(workdir, ignore_errors=True)
    assert session.returncode == pytest.ExitCode.INTERRUPTED, output
    assert not any(left.values()), (left, output)
