"""Who may publish and subscribe to what on a monitor's NATS: one login per role, least rights.

Without permissions any login could publish detections (forging work for the executor) or
RemediationEvents (which put keys into cooldown in the analyser). Each role gets exactly the
subjects its component uses (docs/safety.md, "Threat model"):

- ``analyser``: publishes the monitor's detections; subscribes to its remediation events.
- ``executor``: subscribes to the monitor's detections (Core NATS) or consumes them from the
  monitor's JetStream stream through its durable consumer (the JetStream API subjects of that
  stream and consumer only, and acks; it manages that one stream, which it creates, re-creates
  when NATS lost it and upgrades); publishes remediation events; replies come to
  ``_INBOX.>``.
- ``watcher``: a read-only consumer (``startupmonkey run``'s view, ``startupmonkey events``, a
  notifier): subscribes to every subject of the monitor, never in a queue group (it could take
  detections away from the executors' group), and publishes nothing. It is the one login a
  person may be handed (docs/protocol.md#live-events).

The managed NATS of the operator and the embedded one of ``startupmonkey run`` render the same
``authorization`` block from here (:func:`authorization`), with a login of each role.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import secrets

from startupmonkey.models import messages

DURABLE = "startupmonkey-executor"
"""The executor's durable JetStream consumer."""


class Role(enum.StrEnum):
    """A NATS login's job."""

    ANALYSER = "analyser"
    EXECUTOR = "executor"
    WATCHER = "watcher"


def stream_name(namespace: str, monitor: str) -> str:
    """The JetStream stream of one monitor (no dots allowed in stream names)."""
    return f"startupmonkey_{namespace}_{monitor}"


def _root(namespace: str, monitor: str) -> str:
    return f"{messages.SUBJECT_ROOT}.{namespace}.{monitor}"


@dataclasses.dataclass(frozen=True)
class Permissions:
    """Subjects a login may publish to and subscribe to (an empty list allows nothing)."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    #: Subscriptions refused although ``subscribe`` allows the subject, as nats-server's
    #: ``"<subject> <queue>"`` form: a queue subscription is one the server load-balances.
    subscribe_deny: tuple[str, ...] = ()

    def render(self) -> str:
        """The ``permissions`` value of a user in nats-server's config."""
        def side(allowed: tuple[str, ...], denied: tuple[str, ...] = ()) -> str:
            if not allowed:
                return '{ deny: [">"] }'
            text = "{ allow: [" + ", ".join(json.dumps(s) for s in allowed) + "]"
            if denied:
                text += ", deny: [" + ", ".join(json.dumps(s) for s in denied) + "]"
            return text + " }"
        return (f"{{ publish: {side(self.publish)}, "
                f"subscribe: {side(self.subscribe, self.subscribe_deny)} }}")


def permissions(role: Role, namespace: str, monitor: str) -> Permissions:
    """What ``role`` may do on the NATS of monitor ``namespace/monitor``."""
    root = _root(namespace, monitor)
    detections, events = f"{root}.detections.>", f"{root}.remediations.>"
    if role is Role.ANALYSER:
        return Permissions(publish=(detections,), subscribe=(events,))
    if role is Role.WATCHER:
        # Reads everything, but never in a queue group: joining the executors' group would
        # make the server hand it a share of the detections, which the executor then never
        # sees.
        return Permissions(publish=(), subscribe=(f"{root}.>",),
                           subscribe_deny=(f"{root}.> >",))
    stream = stream_name(namespace, monitor)
    api = "$JS.API"
    return Permissions(
        publish=(events, f"{api}.INFO", f"{api}.STREAM.CREATE.{stream}",
                 f"{api}.STREAM.UPDATE.{stream}", f"{api}.STREAM.INFO.{stream}",
                 # its own stream only: a stream of an earlier version is re-created once
                 f"{api}.STREAM.DELETE.{stream}",
                 f"{api}.CONSUMER.CREATE.{stream}", f"{api}.CONSUMER.CREATE.{stream}.>",
                 f"{api}.CONSUMER.DURABLE.CREATE.{stream}.{DURABLE}",
                 f"{api}.CONSUMER.INFO.{stream}.{DURABLE}",
                 f"{api}.CONSUMER.MSG.NEXT.{stream}.{DURABLE}",
                 f"$JS.ACK.{stream}.{DURABLE}.>"),
        subscribe=(detections, "_INBOX.>"))


@dataclasses.dataclass(frozen=True)
class Login:
    """One user of the server, with the role that decides its permissions."""

    user: str
    password: str
    role: Role


def authorization(logins: list[Login], namespace: str, monitor: str) -> str:
    """nats-server's ``authorization`` block: every login with its role's permissions."""
    users = ",\n".join(
        f"    {{user: {json.dumps(login.user)}, password: {json.dumps(login.password)}, "
        f"permissions: {permissions(login.role, namespace, monitor).render()}}}"
        for login in logins)
    return f"authorization {{\n  users: [\n{users}\n  ]\n}}"


def new_logins() -> dict[Role, Login]:
    """One login per role, each with a fresh random password (never logged)."""
    return {role: Login(role.value, secrets.token_urlsafe(24), role) for role in Role}


def server_users(logins: list[Login], namespace: str, monitor: str
                 ) -> tuple[dict[str, str], dict[str, Permissions]]:
    """The ``users`` and ``permissions`` of a local nats-server
    (:class:`startupmonkey.localserv.nats.NatsServer`) for these logins."""
    return ({login.user: login.password for login in logins},
            {login.user: permissions(login.role, namespace, monitor) for login in logins})
