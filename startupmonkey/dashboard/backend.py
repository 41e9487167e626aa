"""What the dashboard's pages read and do, whoever answers them (issue 25).

A :class:`Backend` is one of:

- the Kubernetes API with the user's own credentials (:class:`startupmonkey.dashboard.kube.
  KubeBackend`: the local mode with the user's kubeconfig, and the in-cluster mode with the
  bearer token the user logged in with);
- a standalone ``startupmonkey run``'s executor API on its private Unix socket
  (:mod:`startupmonkey.dashboard.standalone`).

The pages see only Kubernetes-shaped objects (``metadata``, ``spec``, ``status``) whatever the
backend, so every page is drawn by the same code. A backend's methods block (they are called in
worker threads) and say every refusal as a :class:`Failure`, never a traceback. This module
imports nothing heavy: a backend that does not speak to Kubernetes never loads its client.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from typing import Any, Protocol

#: The commands the pages' forms may send, as the CLI names them.
ACTIONS = ("approve", "reject", "rollback")
#: Each reason at most this long, on one line.
REASON_CHARS = 300


class Failure(Exception):
    """A request that did nothing: ``status`` to answer with and ``reason`` in one line."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def one_line(text: str) -> str:
    """``text`` on one line, at most :data:`REASON_CHARS` long."""
    return " ".join(text.split())[:REASON_CHARS]


@dataclasses.dataclass(frozen=True)
class Listing:
    """Objects as the backend sent them, and a note when the scope was narrowed; the
    namespace listed (None: every one) and the list's version, where following what changes
    after it starts ("": the page is not followed)."""

    items: list[dict[str, Any]]
    note: str = ""
    namespace: str | None = None
    version: str = ""


@dataclasses.dataclass(frozen=True)
class Change:
    """What a followed page is told.

    ``kind`` is ``changed`` (an object was added, modified or deleted: draw the page again),
    ``bookmark`` (nothing changed; the backend says how far it has got), ``expired`` (the
    version asked for is too old to follow: draw the page again and follow its new one),
    ``failed`` (following cannot go on: ``reason``, and the HTTP ``status`` it was refused
    with, if it was) or ``stopped`` (the page went away).
    """

    kind: str
    version: str = ""
    name: str = ""
    reason: str = ""
    status: int = 0


KINDS = ("changed", "bookmark", "expired", "failed", "stopped")


class Follower(Protocol):
    """Follows what one page shows, in a thread of its own, handing each :class:`Change` to
    the page's stream, then one last Change saying why it ended (not after :meth:`stop`)."""

    thread: threading.Thread

    def start(self) -> None: ...

    def stop(self) -> None:
        """End it now, from any thread."""


class Backend(Protocol):
    """What the pages read and do (see the module's text)."""

    #: Said on the pages and at start: whose rights the dashboard acts with.
    rights: str

    def list_objects(self, plural: str, namespace: str | None) -> Listing:
        """Every ``plural`` object (``databasemonitors`` or ``remediations``) in
        ``namespace`` (None: every one the user may see)."""

    def get_remediation(self, namespace: str, name: str, follow: bool = True
                        ) -> tuple[dict[str, Any], str]:
        """One Remediation, and (with ``follow``) the version to follow it from ("": not
        followed)."""

    def act(self, command: str, namespace: str, name: str, sql_hash: str | None,
            reason: str) -> None:
        """Approve (the plan with ``sql_hash``), reject or roll back, with the user's rights."""

    def follower(self, plural: str, namespace: str | None, name: str, since: str,
                 deliver: Callable[[Change], None]) -> Follower:
        """A :class:`Follower` of ``plural`` objects (``name``: that one) after ``since``."""
