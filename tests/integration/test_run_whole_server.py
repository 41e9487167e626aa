"""One monitor watching three databases of one real PostgreSQL server (issue 19, item 1).

``startupmonkey run -f`` (collector, analyser, executor and nats-server as child processes)
with ``spec.database.databases`` naming two databases besides the home one. A problem in two
of them: stale statistics on ``public.t`` in database A (the same-named ``public.t`` of the
home database and of B, too small to be stale, stay untouched), and a session idle in its
transaction in database B (terminated, its Remediation's ``spec.database`` naming B). Then A is
dropped while watched (``DROP DATABASE ... WITH (FORCE)``): the executor reports it
unreachable in its ``status.databases`` (journaled in the audit log, what standalone has of
the status), the collector logs it, every component keeps running, and a new problem in B is
still fixed.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from startupmonkey.localserv import postgres
from tests.integration import test_runner as runner_test
from tests.support import workloads
from tests.support.eventually import wait_until
from tests.support.product import run_f

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
COMPONENTS = ("collector", "analyser", "executor")


@contextlib.contextmanager
def _databases(cluster: postgres.PostgresCluster) -> Iterator[tuple[postgres.PostgresDatabase,
                                                                    postgres.PostgresDatabase]]:
    """Two databases of the shared cluster besides the test's own, with names SQL must quote
    (upper case, spaces, a hyphen), dropped afterwards (if the test has not)."""
    label = uuid.uuid4().hex[:8]
    first = cluster.create_database(f"Shop A {label}")
    try:
        second = cluster.create_database(f"shop-b {label}")
        try:
            yield first, second
        finally:
            cluster.drop_database(second.dbname)
    finally:
        cluster.drop_database(first.dbname)


def _table(database: postgres.PostgresDatabase, rows: int) -> None:
    """``public.t`` with ``rows`` rows, never analyzed, autovacuum off (nothing but
    StartupMonkey analyzes it)."""
    with database.connect() as conn:
        conn.execute("CREATE TABLE public.t (id int) WITH (autovacuum_enabled = off)")
        conn.execute("INSERT INTO public.t SELECT generate_series(1, %s)", (rows,))


def _analyzes(database: postgres.PostgresDatabase) -> tuple[int, bool]:
    """``public.t``'s (analyze_count, whether last_analyze is set) in ``database``."""
    with database.connect() as conn:
        row = conn.execute(
            "SELECT analyze_count, last_analyze IS NOT NULL FROM pg_catalog.pg_stat_user_tables "
            "WHERE schemaname = 'public' AND relname = 't'").fetchone()
    assert row is not None
    return int(row[0]), bool(row[1])


def _entries(audit: Path) -> list[dict[str, Any]]:
    if not audit.exists():
        return []
    text = audit.read_text()
    return [json.loads(line) for line in text[:text.rfind("\n") + 1].splitlines()]


def _remediations(audit: Path) -> dict[str, dict[str, Any]]:
    """Remediation name -> its last record (spec and status) in the audit log."""
    return {entry["object"]["metadata"]["name"]: entry["object"]
            for entry in _entries(audit) if entry.get("kind") == "Remediation"}


def _succeeded(audit: Path, action: str, database: str) -> list[dict[str, Any]]:
    return [r for r in _remediations(audit).values()
            if r["spec"]["action"] == action and r["spec"].get("database") == database
            and r["status"].get("state") == "Succeeded"]


def _reach(audit: Path) -> dict[str, dict[str, Any]]:
    """The executor's last ``status.databases`` (journaled with its Database report), by
    database name."""
    reports = [e for e in _entries(audit) if e.get("kind") == "Database" and "databases" in e]
    assert reports, "no report of status.databases yet"
    return {one["name"]: one for one in reports[-1]["databases"]}


def _components(pid: int) -> dict[str, int]:
    """The run's component processes, by component."""
    found: dict[str, int] = {}
    for child in runner_test._children_of(pid):
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            for component in COMPONENTS:
                if component.encode() in argv and b"startupmonkey.cli" in argv:
                    found[component] = child
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _log_lines(private: Path, component: str) -> list[str]:
    return [line for path in private.glob(f"startupmonkey-*/{component}.log")
            for line in path.read_text(errors="replace").splitlines()]


def test_one_monitor_fixes_two_of_three_databases_and_survives_a_dropped_one(
        pg_cluster: postgres.PostgresCluster, pg_db: postgres.PostgresDatabase,
        tmp_path: Path) -> None:
    role = f"app_{uuid.uuid4().hex[:8]}"
    pg_cluster.create_role(role)  # not a superuser: its sessions may be acted on
    private = Path(tempfile.mkdtemp(prefix="smwhole-", dir="/tmp"))  # the run's work folder
    try:
        with _databases(pg_cluster) as (first, second):
            _table(pg_db, 10)
            _table(first, 5000)  # stale: 5000 rows never analyzed, above minModifiedRows 500
            _table(second, 10)
            manifest = runner_test._manifest(pg_db)
            spec = manifest["spec"]
            assert isinstance(spec, dict)
            spec["database"]["databases"] = [first.dbname, second.dbname]
            with workloads.idle_in_transaction(second.conninfo_for(role)) as held, \
                    run_f(manifest, pg_cluster.superuser, tmp_path,
                          {"TMPDIR": str(private)}) as run:
                # each problem fixed in its own database
                [analyzed] = wait_until(lambda: _succeeded(run.audit, "analyze", first.dbname),
                                        timeout=120)
                [terminated] = wait_until(
                    lambda: _succeeded(run.audit, "terminate_session", second.dbname),
                    timeout=120)
                assert analyzed["spec"]["target"]["table"] == "t"
                assert terminated["spec"]["target"]["pid"] == held.pid
                assert not held.is_alive()
                assert _analyzes(first) == (1, True)
                assert _analyzes(pg_db) == (0, False), "the home database's t was analyzed"
                assert _analyzes(second) == (0, False), "B's t was analyzed"
                assert not [r for r in _remediations(run.audit).values()
                            if r["spec"]["action"] == "analyze"
                            and r["spec"].get("database") != first.dbname], \
                    "an ANALYZE outside database A"
                # both other databases reported reachable by the executor
                wait_until(lambda: all(_reach(run.audit)[name]["reachable"]
                                       for name in (first.dbname, second.dbname)), timeout=60)
                components = wait_until(lambda: len(_components(run.pid)) == 3
                                        and _components(run.pid), timeout=30)

                # a watched database is dropped: reported, not fatal
                pg_cluster.drop_database(first.dbname)

                def dropped_reported() -> dict[str, Any]:
                    gone = _reach(run.audit)[first.dbname]
                    assert gone["reachable"] is False, gone
                    assert "does not exist" in gone.get("lastError", ""), gone
                    return gone

                wait_until(dropped_reported, timeout=90)
                assert _reach(run.audit)[second.dbname]["reachable"] is True
                wait_until(lambda: [line for line in _log_lines(private, "collector")
                                    if "database unavailable" in line
                                    and first.dbname in line and "does not exist" in line],
                           timeout=60, what="the collector logs the dropped database")
                # and the monitor goes on: B's next idle transaction is terminated too
                with workloads.idle_in_transaction(second.conninfo_for(role)) as again:
                    wait_until(lambda: [r for r in _succeeded(run.audit, "terminate_session",
                                                              second.dbname)
                                        if r["spec"]["target"]["pid"] == again.pid],
                               timeout=120)
                    assert not again.is_alive()
                assert {name: _alive(pid) for name, pid in components.items()} == \
                    dict.fromkeys(COMPONENTS, True), "a component exited"
                assert _components(run.pid) == components, "a component was restarted"
    finally:
        shutil.rmtree(private, ignore_errors=True)
    final = json.loads((tmp_path / "state.json").read_text())
    assert final["supervision"] == [], "a component was restarted"
    assert final["database"]["reachable"] is True, "the home database stays reachable"
    by_database = {(r["spec"]["action"], r["spec"].get("database"))
                   for r in final["remediations"].values()}
    assert {("analyze", first.dbname), ("terminate_session", second.dbname)} <= by_database
    with psycopg.connect(pg_cluster.conninfo(), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM pg_catalog.pg_database WHERE datname = %s",
                            (first.dbname,)).fetchone() == (0,)
