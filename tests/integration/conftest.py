"""Fixtures for the integration tier beyond tests/conftest.py's: a nats-server whose users and
permissions come from ``startupmonkey.natsperms`` (as ``startupmonkey run``'s embedded NATS
and the operator's managed one are configured), with one fresh login per role."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from startupmonkey import natsperms
from startupmonkey.localserv import nats as natsserver
from tests.support import executor_helpers as helpers

Logins = dict[natsperms.Role, natsperms.Login]


@pytest.fixture
def nats_logins() -> Logins:
    """One login per role, random passwords (``natsperms.new_logins``)."""
    return natsperms.new_logins()


@contextlib.contextmanager
def _roles_server(logins: Logins, *, jetstream: bool) -> Iterator[natsserver.NatsServer]:
    users, permissions = natsperms.server_users(list(logins.values()), helpers.NAMESPACE,
                                                helpers.MONITOR)
    with natsserver.NatsServer(jetstream=jetstream, users=users,
                               permissions=permissions) as started:
        yield started


@pytest.fixture
def nats_roles(nats_logins: Logins) -> Iterator[natsserver.NatsServer]:
    """A Core NATS server for ``nats_logins``, each limited to its role on the monitor
    ``helpers.NAMESPACE``/``helpers.MONITOR``."""
    with _roles_server(nats_logins, jetstream=False) as server:
        yield server


@pytest.fixture
def nats_roles_jetstream(nats_logins: Logins) -> Iterator[natsserver.NatsServer]:
    """As ``nats_roles``, with JetStream (a temporary store)."""
    with _roles_server(nats_logins, jetstream=True) as server:
        yield server
