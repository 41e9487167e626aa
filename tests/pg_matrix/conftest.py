"""The version matrix (issue 22, docs/postgres-support.md): the tests of this folder run on
every PostgreSQL major other than Debian's 15 (which the whole suite runs on), from the server
builds ``hack/install-postgres.sh`` caches.

The fixtures here override the suite's own (``tests/conftest.py``) by name, so the modules of
this folder import integration tests as they are and run them on each major: ``pg_cluster``
is one shared cluster per major (session scope, parametrized by :func:`pg_major`), ``pg_db``
a database on it, ``pg_private_cluster_factory`` private clusters of that major. HypoPG is
packaged for 15 only and the cached builds have no headers to build it against, so these
clusters have pg_stat_statements only: the tests run the path where HypoPG is absent.

Which majors: ``STARTUPMONKEY_PG_MAJORS`` (``13,16``; ``all``, the default; or ``rotate``,
one major chosen from the commit hash, as ``make test`` runs it: README, "The two
commands").
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from startupmonkey.localserv import postgres
from tests.support import components

MAJORS_VARIABLE = "STARTUPMONKEY_PG_MAJORS"
EXTENSIONS = ("pg_stat_statements",)
"""What every cached build ships; hypopg is not among them (see the module docstring)."""


def rotating_major(commit: str) -> int:
    """The major a run at ``commit`` (hex) covers: every major within a few landings."""
    return postgres.MATRIX_MAJORS[int(commit[:8], 16) % len(postgres.MATRIX_MAJORS)]


def _head_commit() -> str:
    """The checked-out commit; all zeros outside a git clone (the first major, then)."""
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"],
                             capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return "0" * 40
    return out.stdout.strip() or "0" * 40


def selected_majors(value: str | None) -> tuple[int, ...]:
    """The majors ``STARTUPMONKEY_PG_MAJORS`` names (ValueError for one outside the matrix)."""
    text = (value or "all").strip().lower()
    if text == "all":
        return postgres.MATRIX_MAJORS
    if text == "rotate":
        return (rotating_major(_head_commit()),)
    parts = [part.strip() for part in text.split(",") if part.strip()]
    majors = tuple(int(part) for part in parts if part.isdigit())
    unknown = sorted(set(majors) - set(postgres.MATRIX_MAJORS))
    if unknown or not majors or len(majors) < len(parts):
        raise ValueError(f"{MAJORS_VARIABLE}={value!r}: choose among "
                         f"{postgres.MATRIX_MAJORS}, 'all' or 'rotate'")
    return majors


MAJORS = selected_majors(os.environ.get(MAJORS_VARIABLE))


def pytest_report_header() -> str:
    return f"pg_matrix: PostgreSQL {', '.join(map(str, MAJORS))} ({MAJORS_VARIABLE})"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test of this folder carries the tier's marker, the imported ones included."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.pg_matrix)


@pytest.fixture(scope="session", params=MAJORS, ids=lambda major: f"pg{major}")
def pg_major(request: pytest.FixtureRequest) -> int:
    """The PostgreSQL major the test runs on."""
    major: int = request.param
    return major


@pytest.fixture(scope="session")
def pg_cluster(pg_major: int) -> Iterator[postgres.PostgresCluster]:
    """The shared cluster of ``pg_major``: pg_stat_statements preloaded and in template1."""
    with components.postgres_cluster(major=pg_major, extensions=EXTENSIONS) as cluster:
        yield cluster


@pytest.fixture
def pg_db(pg_cluster: postgres.PostgresCluster,
          request: pytest.FixtureRequest) -> Iterator[postgres.PostgresDatabase]:
    """A fresh database on ``pg_major`` with pg_stat_statements, dropped after."""
    with components.scratch_database(pg_cluster, request.node.name, EXTENSIONS) as database:
        yield database


@pytest.fixture
def pg_private_cluster_factory(pg_major: int) -> Iterator[components.PrivateClusterFactory]:
    """Private clusters of ``pg_major`` (see tests/conftest.py)."""
    with components.PrivateClusters(pg_major, EXTENSIONS) as clusters:
        yield clusters.new
