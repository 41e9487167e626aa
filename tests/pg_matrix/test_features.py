"""What is off on each major and why (issue 22, docs/postgres-support.md): the executor's
``status.database`` report and ``startupmonkey validate --database`` read the real server;
on the matrix's builds HypoPG is absent, so index building is off and they say so, and
nothing else is."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from startupmonkey.executor import dbcheck
from startupmonkey.localserv import postgres
from tests.integration import test_runner as runner_test

pytestmark = pytest.mark.pg_matrix


async def test_the_report_says_index_building_is_off_without_hypopg_and_nothing_else(
        executor_conn: psycopg.AsyncConnection[Any], pg_major: int) -> None:
    status = await dbcheck.check(executor_conn)
    assert status.server_version is not None
    assert status.server_version.startswith(f"{pg_major}.")
    assert status.extensions == ["pg_stat_statements"]
    (off,) = status.features_off()
    assert off.startswith("create_index:") and "CREATE EXTENSION hypopg" in off


def test_validate_database_names_what_is_off_on_the_connected_server(
        pg_cluster: postgres.PostgresCluster, pg_db: postgres.PostgresDatabase,
        tmp_path: Path, pg_major: int) -> None:
    manifest = tmp_path / "monitor.yaml"
    manifest.write_text(yaml.safe_dump(runner_test._manifest(pg_db)))
    out = subprocess.run(
        [str(runner_test.EXE), "validate", "-f", str(manifest), "--database", "--user",
         pg_cluster.superuser], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    said = [line.strip() for line in out.stdout.splitlines() if "database: " in line]
    assert len(said) == 1, out.stdout
    assert said[0].startswith(f"database: off on PostgreSQL {pg_major}.")
    assert "create_index:" in said[0] and "hypopg" in said[0]
