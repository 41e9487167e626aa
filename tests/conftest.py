"""Fixtures for real PostgreSQL and NATS (logic in ``tests/support/components.py``).

One PostgreSQL cluster per session and one database per test
(docs/design.md#conventions, 11); a private
cluster when a test restarts the server or changes cluster-wide state; a fresh nats-server
per test (it starts in milliseconds). A missing component skips on a developer machine and
fails in CI (docs/design.md#testing-tiers).
"""

from __future__ import annotations

import os

# Before anything imports grpc: grpcio's fork handlers make a fork() (the harness forks to run
# PostgreSQL as another OS user) unsafe while gRPC threads live; off, nothing we do needs them.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import signal
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import hypothesis
import psycopg
import pytest
from psycopg import sql

from startupmonkey.localserv import nats, postgres

_REPO_ROOT = str(Path(__file__).resolve().parents[1])
if _REPO_ROOT not in sys.path:
    # `tests.support` is in the repo, not in the package: reachable under a bare `pytest` too.
    # Appended, never prepended, so the repo root cannot shadow anything installed.
    sys.path.append(_REPO_ROOT)

from tests.support import components  # noqa: E402

# No wall-clock deadline on any property test (Hypothesis's default is 200 ms an example):
# a deadline is a timing assertion, and one example slowed by a loaded CPU failed a unit test
# of pure logic (tests/unit/test_analyser_statements_gaps.py) in a loaded run. A property
# that hangs is still stopped by the test's timeout (pyproject.toml).
hypothesis.settings.register_profile("startupmonkey", deadline=None)
hypothesis.settings.load_profile("startupmonkey")


def pytest_configure(config: pytest.Config) -> None:
    """A SIGTERM (a CI job's time limit, a ``kill``) ends the session as Ctrl-C does: the
    running test is interrupted and every fixture's teardown and the ``atexit`` hooks still
    run, so the servers, node namespaces, mounts and cgroups the session started are stopped
    and their private directories (passwords, tokens) removed. Python's default for SIGTERM
    ends the process at once and runs none of them. A second SIGTERM ends it at once."""
    del config
    _end_on_sigterm_as_on_ctrl_c()


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Again before every test: an event loop's ``remove_signal_handler`` (the components'
    ``run_until_signalled`` run in a test) puts back Python's default, not the one before."""
    del item
    _end_on_sigterm_as_on_ctrl_c()


def _end_on_sigterm_as_on_ctrl_c() -> None:
    if (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL):
        signal.signal(signal.SIGTERM, _interrupt_session)


def _interrupt_session(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise KeyboardInterrupt(f"signal {signum}: the session is ending, cleaning up")


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[postgres.PostgresCluster]:
    """The shared cluster: pg_stat_statements preloaded, both extensions in template1."""
    with components.postgres_cluster() as cluster:
        yield cluster


@pytest.fixture
def pg_db(
    pg_cluster: postgres.PostgresCluster, request: pytest.FixtureRequest
) -> Iterator[postgres.PostgresDatabase]:
    """A fresh database (``.dbname``, ``.conninfo``, ``.dsn``, ``.connect()``), dropped after."""
    with components.scratch_database(pg_cluster, request.node.name) as database:
        yield database


@pytest.fixture(autouse=True)
def _detections_name_pg_db(request: pytest.FixtureRequest) -> Iterator[None]:
    """In a test with ``pg_db``, detections built by ``tests/support/executor_helpers.py``
    name ``pg_db``'s database as PostgreSQL calls it (an executor refuses detections of a
    database it does not act in), whether they are built before or after the executor's
    config."""
    if "pg_db" not in request.fixturenames:
        yield
        return
    from tests.support import executor_helpers

    database: postgres.PostgresDatabase = request.getfixturevalue("pg_db")
    executor_helpers.name_home_database(executor_helpers.current_database(database.conninfo))
    try:
        yield
    finally:
        executor_helpers.name_home_database(None)


@pytest.fixture
def pg_private_cluster_factory() -> Iterator[components.PrivateClusterFactory]:
    """``factory(settings={...})`` -> a started private cluster; all closed at teardown."""
    with components.PrivateClusters() as clusters:
        yield clusters.new


@pytest.fixture
def nats_server() -> Iterator[nats.NatsServer]:
    """A Core NATS server on a free port (``.url``)."""
    with components.nats_server() as server:
        yield server


@pytest.fixture
def nats_jetstream() -> Iterator[nats.NatsServer]:
    """A JetStream-enabled server with a temporary store (``.url``)."""
    with components.nats_server(jetstream=True) as server:
        yield server


@pytest.fixture
def nats_auth() -> Iterator[components.NatsAuth]:
    """A server requiring a user/password: ``.url``, ``.user``, ``.password``, ``.server``."""
    with components.nats_auth() as auth:
        yield auth


@pytest.fixture
def app_conninfo(pg_cluster: postgres.PostgresCluster, pg_db: postgres.PostgresDatabase) -> str:
    """Connection string of an ordinary login role (not a superuser: StartupMonkey never
    touches superusers' sessions) with rights on ``pg_db``'s public schema, for workloads."""
    role = f"app_{uuid.uuid4().hex[:8]}"
    pg_cluster.create_role(role)
    with pg_db.connect() as conn:
        conn.execute(sql.SQL("GRANT ALL ON SCHEMA public TO {}").format(sql.Identifier(role)))
    return pg_db.conninfo_for(role)


@pytest.fixture
async def executor_conn(pg_db: postgres.PostgresDatabase) -> AsyncIterator[
        psycopg.AsyncConnection[Any]]:
    """The executor's own connection to ``pg_db`` (the cluster's superuser, autocommit,
    application_name ``startupmonkey-executor``, as the executor names its sessions)."""
    conn = await psycopg.AsyncConnection.connect(
        pg_db.conninfo, autocommit=True, application_name="startupmonkey-executor")
    yield conn
    await conn.close()
