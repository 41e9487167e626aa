"""A standalone run with something waiting for a person, for the tests of the standalone
dashboard (tests/integration/test_dashboard_standalone.py,
tests/e2e/test_dashboard_standalone_browser.py): ``startupmonkey run -f`` on the runner
tests' monitor in mode approval, a session of a role that is not a superuser (so it may be
acted on) held idle in its transaction, and the run's executor socket."""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from startupmonkey.localserv import postgres
from tests.integration import test_runner as runner_test
from tests.support import workloads
from tests.support.eventually import wait_until
from tests.support.product import run_f


@dataclasses.dataclass(frozen=True)
class ApprovalRun:
    """The held session (idle in its transaction) and the run's executor address."""

    held: workloads.HeldSession
    address: str  # unix:///tmp/smdash-.../startupmonkey-.../executor.sock


@contextlib.contextmanager
def approval_run(pg_cluster: postgres.PostgresCluster, pg_db: postgres.PostgresDatabase,
                 tmp_path: Path) -> Iterator[ApprovalRun]:
    """``startupmonkey run -f`` (:func:`tests.support.product.run_f`, in ``tmp_path``) in mode
    approval on ``pg_db``, with a new login role's session idle in its transaction, once the
    run's executor socket is there. The run is stopped, the session closed and the run's
    private TMPDIR removed when the block ends, also when it fails (the role stays)."""
    manifest = runner_test._manifest(pg_db)
    inner = manifest["spec"]
    assert isinstance(inner, dict)
    inner["mode"] = "approval"
    role = f"app_{uuid.uuid4().hex[:8]}"
    pg_cluster.create_role(role)  # not a superuser: its session may be acted on
    app = pg_db.conninfo_for(role)
    # A private TMPDIR: the run's work folder (and its executor socket) is found there.
    private = Path(tempfile.mkdtemp(prefix="smdash-", dir="/tmp"))
    try:
        with workloads.idle_in_transaction(app) as held, \
                run_f(manifest, pg_cluster.superuser, tmp_path, {"TMPDIR": str(private)}):
            def socket() -> Path:
                found = [p for p in private.glob("startupmonkey-*/executor.sock")
                         if p.is_socket()]
                assert found, "no executor socket yet"
                return found[0]

            yield ApprovalRun(held, f"unix://{wait_until(socket, timeout=90)}")
    finally:
        shutil.rmtree(private, ignore_errors=True)
