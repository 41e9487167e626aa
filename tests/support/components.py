"""Real components for the integration tiers, or a clear skip/fail when one is missing.

docs/design.md#testing-tiers: a test that needs a real component it cannot find fails in CI
(``CI=true``); on a developer machine it skips with a message saying how to get it. The
fixtures in ``tests/conftest.py`` are thin wrappers over the functions here, so the policy
and the start-up details live in one place.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import re
import secrets
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import NoReturn, Protocol

import pytest

from startupmonkey.localserv import nats, postgres

POSTGRES_HOW_TO = (
    f"apt-get install {postgres.DEBIAN_PACKAGES} (server binaries with pg_stat_statements, "
    "plus HypoPG), or put pg_config of a server installation on PATH"
)
NATS_HOW_TO = nats.INSTALL_HINT

_db_counter = itertools.count(1)


def in_ci() -> bool:
    """True when the environment says this is CI (``CI=true``, as GitHub/GitLab set it)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require(component: str, how_to_get: str) -> NoReturn:
    """Give up on a test whose real ``component`` is missing: fail in CI, skip elsewhere."""
    message = f"{component} is not available: {how_to_get}"
    if in_ci():
        pytest.fail(f"{message} (CI=true: missing components fail instead of skipping)")
    pytest.skip(message)


def postgres_binaries(major: int | None = None) -> postgres.Binaries:
    """The PostgreSQL server binaries (Debian's by default, else the cached build of
    ``major``, docs/postgres-support.md), or :func:`require` semantics."""
    try:
        if major is None:
            return postgres.find_binaries()
        return postgres.find_binaries(postgres.matrix_bindir(major))
    except postgres.BinariesNotFound as err:
        require("PostgreSQL server" if major is None else f"PostgreSQL {major} server", str(err))


def nats_server_binary() -> Path:
    """The ``nats-server`` binary, or :func:`require` semantics."""
    try:
        return nats.find_binary()
    except nats.BinaryNotFound:
        require("nats-server", NATS_HOW_TO)


def _require_extensions(cluster: postgres.PostgresCluster,
                        extensions: Sequence[str] = postgres.EXTENSIONS) -> None:
    missing = sorted(set(extensions) - cluster.available_extensions())
    if missing:
        require(f"PostgreSQL extension(s) {', '.join(missing)}", POSTGRES_HOW_TO)


@contextlib.contextmanager
def postgres_cluster(
    settings: Mapping[str, postgres.SettingValue] | None = None, *, major: int | None = None,
    extensions: Sequence[str] = postgres.EXTENSIONS,
) -> Iterator[postgres.PostgresCluster]:
    """A started cluster with ``extensions`` (pg_stat_statements and hypopg) created in
    ``template1``; ``major``: a cached build of that major instead of Debian's.

    Every database created from then on (``CREATE DATABASE`` copies template1) has the
    extensions already; the cluster is stopped and its directory removed on exit.
    """
    binaries = postgres_binaries(major)
    with postgres.PostgresCluster(settings=settings, bindir=binaries.bindir) as cluster:
        _require_extensions(cluster, extensions)
        cluster.install_extensions("template1", extensions)
        yield cluster


def database_name(test_name: str) -> str:
    """A unique, readable database name for a test (at most 63 bytes, lower case)."""
    slug = re.sub(r"[^a-z0-9]+", "_", test_name.lower()).strip("_")
    return f"t{next(_db_counter)}_{slug}"[:63].rstrip("_")


@contextlib.contextmanager
def scratch_database(
    cluster: postgres.PostgresCluster, test_name: str,
    extensions: Sequence[str] = postgres.EXTENSIONS,
) -> Iterator[postgres.PostgresDatabase]:
    """A fresh database with the extensions installed, dropped ``WITH (FORCE)`` afterwards."""
    database = cluster.create_database(database_name(test_name))
    try:
        cluster.install_extensions(database.dbname, extensions)
        yield database
    finally:
        cluster.drop_database(database.dbname)


class PrivateClusterFactory(Protocol):
    """What the ``pg_private_cluster_factory`` fixture yields (:meth:`PrivateClusters.new`)."""

    def __call__(
        self,
        settings: Mapping[str, postgres.SettingValue] | None = None,
        *,
        install_extensions: bool = True,
    ) -> postgres.PostgresCluster: ...


class PrivateClusters:
    """Factory of private clusters for one test; :meth:`close` stops and removes them all.

    For what a shared cluster cannot take: restarts, a low ``max_connections``, statistics
    resets, XID-age tricks with ``run_tool("pg_resetwal", ...)``.
    """

    def __init__(self, major: int | None = None,
                 extensions: Sequence[str] = postgres.EXTENSIONS) -> None:
        self._clusters: list[postgres.PostgresCluster] = []
        self._major, self._extensions = major, extensions

    def __enter__(self) -> PrivateClusters:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def new(
        self,
        settings: Mapping[str, postgres.SettingValue] | None = None,
        *,
        install_extensions: bool = True,
    ) -> postgres.PostgresCluster:
        """A started cluster; with ``install_extensions`` both are created in ``postgres``
        and ``template1``."""
        binaries = postgres_binaries(self._major)
        cluster = postgres.PostgresCluster(settings=settings, bindir=binaries.bindir)
        self._clusters.append(cluster)
        cluster.start()
        if install_extensions:
            _require_extensions(cluster, self._extensions)
            for dbname in ("template1", "postgres"):
                cluster.install_extensions(dbname, self._extensions)
        return cluster

    def close(self) -> None:
        errors: list[BaseException] = []
        for cluster in reversed(self._clusters):
            try:
                cluster.close()
            except Exception as err:  # stop the others anyway
                errors.append(err)
        self._clusters.clear()
        if errors:
            raise errors[0]


@dataclasses.dataclass(frozen=True)
class NatsAuth:
    """An authenticated NATS server and one valid user/password pair for it."""

    url: str
    user: str
    password: str = dataclasses.field(repr=False)
    server: nats.NatsServer


@contextlib.contextmanager
def nats_server(
    *, jetstream: bool = False, users: Mapping[str, str] | None = None
) -> Iterator[nats.NatsServer]:
    """A started ``nats-server`` on a free port, closed (directory removed) on exit."""
    binary = nats_server_binary()
    with nats.NatsServer(jetstream=jetstream, users=users, binary=binary) as server:
        yield server


@contextlib.contextmanager
def nats_auth(user: str = "smtest") -> Iterator[NatsAuth]:
    """A server that requires authorization, with one random password for ``user``."""
    password = secrets.token_urlsafe(16)
    with nats_server(users={user: password}) as server:
        yield NatsAuth(server.url, user, password, server)
