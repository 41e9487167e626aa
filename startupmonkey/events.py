"""``startupmonkey events``: the monitor's detections and Remediation state changes, as they
happen, for anyone who wants to watch (issue 20, item 2).

The bus exists so that more consumers than the executor can listen (docs/design.md#event-bus);
this is the general one. It subscribes to every subject of one monitor
(``startupmonkey.v1.<ns>.<monitor>.>``) as the **watcher** login, which may subscribe and
publish nothing (:data:`startupmonkey.natsperms.Role.WATCHER`: the server refuses any
publication, so a feed can never forge work for the executor), and prints one line per
message: human words (the run view's wording) or, with ``-o json``, one JSON object per line
holding the message exactly as published and its subject (docs/protocol.md#live-events).

Where the watcher login comes from:

- **Standalone** (``--executor unix:///…/executor.sock``, the address ``startupmonkey run``
  prints): run keeps its work folder private (0700) and writes :data:`CONNECTION_FILE` there,
  next to the socket, 0600 (:func:`write_connection`); it is read only when it and its
  folder belong to the user and nobody else may read the file.
- **Cluster** (``-n NS MONITOR``): the operator's Secret ``<monitor>-nats-watcher`` holds the
  watcher login alone (else the watcher's keys of the generated ``<monitor>-nats`` are read,
  which an operator not writing the former has); it is read with the user's own kubeconfig
  (RBAC decides: ``get`` on that Secret), and NATS is reached at ``--nats`` (default
  ``nats://127.0.0.1:4222``, i.e. after ``kubectl port-forward -n NS svc/<monitor>-nats
  4222``).
- **Given** (``--nats URL MONITOR --nats-user-file F --nats-password-file F``): any login, e.g.
  for an external NATS. Passwords are only ever read from files, never taken from argv.

A password is never sent over plain ``nats://`` to anything but loopback (use a port-forward
or ``tls://``). Every message is validated (:mod:`startupmonkey.models.messages`); one that is
not a valid v1 message of this monitor, on its own subject, is said as malformed and counted,
never a crash (:class:`Feed`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import dataclasses
import datetime
import ipaddress
import json
import os
import signal
import ssl
import stat
import sys
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats.errors
from nats.aio.client import Client

from startupmonkey import auditlog, natsperms
from startupmonkey.models import messages

#: The watcher's connection, written by ``startupmonkey run`` next to its executor socket.
CONNECTION_FILE = "nats-watcher.json"
#: Where a ``kubectl port-forward svc/<monitor>-nats 4222`` listens.
PORT_FORWARD_URL = "nats://127.0.0.1:4222"
#: Detection ids remembered to say each occurrence once (re-publications repeat the id).
REMEMBERED_IDS = 10_000
#: The Secret keys of the watcher login (operator/nats.py writes ``<login>-user`` etc.).
WATCHER_KEYS = (f"{natsperms.Role.WATCHER.value}-user",
                f"{natsperms.Role.WATCHER.value}-password")


class Refused(Exception):
    """Why the feed cannot start or must stop, in one line for the user."""


@dataclasses.dataclass(frozen=True)
class Connection:
    """Where the feed connects, as whom, and which monitor it follows."""

    url: str
    namespace: str
    monitor: str
    user: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)


# --- where the login comes from ------------------------------------------------------------

def write_connection(folder: Path, connection: Connection) -> Path:
    """The file ``events --executor`` reads: created 0600 in ``folder`` (run's private work
    folder, beside ``executor.sock``)."""
    path = folder / CONNECTION_FILE
    auditlog.write_private(path, json.dumps(dataclasses.asdict(connection)))
    return path


def _owned_and_private(path: Path, folder: bool) -> None:
    """Refuse a file another user could have written or may read (a folder: written)."""
    info = path.stat()
    if info.st_uid != os.getuid():
        raise Refused(f"{path} belongs to uid {info.st_uid}, not to you: not trusted")
    loose = stat.S_IWGRP | stat.S_IWOTH if folder else 0o077
    if info.st_mode & loose:
        raise Refused(f"{path} has mode {stat.S_IMODE(info.st_mode):04o}: it must be private "
                      "to you (startupmonkey run creates it so)")


def read_connection(executor: str) -> Connection:
    """The watcher connection of the ``startupmonkey run`` whose executor listens at
    ``executor`` (``unix:///…/executor.sock``)."""
    if not executor.startswith("unix://"):
        raise Refused(f"--executor {executor}: give the unix:// address `startupmonkey run` "
                      "printed (its work folder holds the watcher login)")
    folder = Path(executor.removeprefix("unix://")).parent
    path = folder / CONNECTION_FILE
    try:
        _owned_and_private(folder, folder=True)
        _owned_and_private(path, folder=False)
        document = json.loads(path.read_text())
        return Connection(**{k: document.get(k) for k in ("url", "namespace", "monitor",
                                                          "user", "password")})
    except FileNotFoundError as exc:
        raise Refused(f"{exc.filename} not found: is `startupmonkey run` running with this "
                      "executor address (and recent enough to write it)?") from None
    except (OSError, ValueError, TypeError) as exc:
        raise Refused(f"cannot read {path}: {' '.join(str(exc).split())}") from None


def _read_secret_file(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise Refused(f"cannot read {path}: {exc.strerror or exc}") from None


def from_files(args: argparse.Namespace) -> Connection:
    """A login given as files (``--nats-user-file``, ``--nats-password-file``)."""
    if (args.nats_user_file is None) != (args.nats_password_file is None):
        raise Refused("give both --nats-user-file and --nats-password-file, or neither")
    return Connection(args.nats or PORT_FORWARD_URL, args.namespace or "default",
                      args.monitor, _read_secret_file(args.nats_user_file),
                      _read_secret_file(args.nats_password_file))


def from_cluster(args: argparse.Namespace) -> Connection:
    """The watcher login of the monitor's managed NATS, read with the user's own kubeconfig:
    from ``<monitor>-nats-watcher`` (that login alone), else, when the operator does not
    write that one, from the watcher's keys of the generated ``<monitor>-nats``."""
    import urllib3.exceptions

    from startupmonkey import client

    try:
        api, namespace = client._kube_client(args)
    except client.Refused as exc:
        raise Refused(str(exc)) from None
    try:
        return _watcher_login(api, namespace, args.monitor, args.nats or PORT_FORWARD_URL)
    except urllib3.exceptions.HTTPError as exc:
        raise Refused(f"the Kubernetes API server did not answer: "
                      f"{' '.join(str(getattr(exc, 'reason', None) or exc).split())[:300]}"
                      ) from None
    finally:
        api.close()


def _watcher_login(api: Any, namespace: str, monitor: str, url: str) -> Connection:
    import kubernetes.client
    from kubernetes.client.exceptions import ApiException

    from startupmonkey import kubeapi
    from startupmonkey.operator import nats as managed

    core = kubernetes.client.CoreV1Api(api)
    own, shared = managed.watcher_secret_name(monitor), f"{monitor}-nats"
    refused: list[tuple[int | None, str]] = []
    for name, keys in ((own, ("user", "password")), (shared, WATCHER_KEYS)):
        try:
            secret = core.read_namespaced_secret(name, namespace,
                                                 _request_timeout=kubeapi.REQUEST_TIMEOUT)
        except ApiException as exc:
            if exc.status not in (403, 404):
                raise Refused(_secret_refusal(exc.status, namespace, name, own)) from None
            refused.append((exc.status, name))  # not written yet, or a Role for the other
            continue
        data = secret.data or {}
        if not all(key in data for key in keys):
            raise Refused(f"Secret {namespace}/{name} has no watcher login: the operator is "
                          "older than this CLI (upgrade it; it adds one)")
        user, password = (base64.b64decode(data[key]).decode() for key in keys)
        return Connection(url, namespace, monitor, user, password)
    # Neither: the watcher Secret's refusal when it was one (it is the one to ask for).
    status, name = refused[0] if refused[0][0] == 403 else refused[1]
    raise Refused(_secret_refusal(status, namespace, name, own))


def _secret_refusal(status: int | None, namespace: str, name: str, own: str) -> str:
    where = f"Secret {namespace}/{name}"
    if status == 403:
        return (f"you may not read {where} (get secrets): ask for a Role allowing get on "
                f"Secret {own}, the monitor's read-only NATS login "
                "(docs/protocol.md#live-events)")
    if status == 404:
        return (f"{where} not found: no DatabaseMonitor of that name in {namespace}, or it "
                "uses an external NATS (give that bus's login with --nats-user-file and "
                "--nats-password-file)")
    return f"cannot read {where}: Kubernetes API status {status}"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _split(url: str) -> urllib.parse.SplitResult:
    return urllib.parse.urlsplit(url if "://" in url else f"nats://{url}")


def shown_url(url: str) -> str:
    """``url`` as it may be printed: without any ``user:password@`` or token part."""
    parts = _split(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def check_transport(connection: Connection) -> None:
    """Refuse sending a password in clear text beyond this machine, and credentials written
    into the URL (they would bypass this check and show in argv)."""
    url = _split(connection.url)
    if "@" in url.netloc:
        raise Refused(f"{shown_url(connection.url)}: no login in the URL; the password comes "
                      "from --nats-password-file or the watcher Secret")
    if connection.password and url.scheme != "tls" and not _loopback(url.hostname or ""):
        raise Refused(f"{connection.url} is plain NATS beyond this machine: the password would "
                      "cross the network in clear text; use kubectl port-forward and --nats "
                      "nats://127.0.0.1:PORT, or a tls:// address")


def _tls(url: str) -> dict[str, Any]:
    """For ``tls://``, TLS before anything is said: nats-py otherwise upgrades only when the
    server's plain-text INFO asks for it, so a server (or a man in the middle) that does not
    would receive the password in clear text. The server must accept TLS first
    (``handshake_first`` in nats-server 2.10.4+); one that does not fails the handshake, and
    nothing is sent."""
    if _split(url).scheme != "tls":
        return {}
    return {"tls": ssl.create_default_context(), "tls_handshake_first": True}


def resolve(args: argparse.Namespace) -> Connection:
    """The connection the arguments describe (module docstring: the three ways)."""
    if args.executor is not None:
        if args.monitor or args.nats or args.nats_user_file or args.nats_password_file:
            raise Refused("--executor reads everything from startupmonkey run's work folder: "
                          "give it alone, or MONITOR with --nats/-n instead")
        connection = read_connection(args.executor)
    elif not args.monitor:
        raise Refused("say which monitor: -n NAMESPACE MONITOR (cluster), or --executor "
                      "unix:///…/executor.sock (startupmonkey run)")
    elif args.nats_user_file is not None or args.nats_password_file is not None:
        connection = from_files(args)
    else:
        connection = from_cluster(args)
    check_transport(connection)
    return connection


# --- what is shown -------------------------------------------------------------------------

def detection_line(detection: messages.Detection) -> str:
    """A detection in the run view's words."""
    return f"detected {detection.detector.value}: {detection.summary}"


def event_line(event: messages.RemediationEvent) -> str:
    """A state change in the run view's words."""
    line = f"{event.remediation} {event.action.value} -> {event.state.value}"
    return f"{line}: {event.message}" if event.message else line


def printable(text: str) -> str:
    """``text`` with control characters shown as ``\\xNN``: a message cannot drive the
    terminal (colours, cursor moves, a cleared screen)."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def _clock(at: datetime.datetime) -> str:
    try:
        return at.astimezone().strftime("%H:%M:%S")
    except (OverflowError, ValueError, OSError):  # year 1 in a zone west of UTC, and the like
        return at.isoformat()


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class Feed:
    """Bus messages in, output lines out; it counts what it saw and never raises.

    A message is shown when it is a valid v1 message of the followed monitor on the subject
    it belongs on; anything else is malformed (said and counted). Human lines say each
    detection occurrence once (the analyser re-publishes an active one with the same id);
    JSON lines carry every message, re-publications included, as consumers dedupe by id
    (docs/design.md#event-bus).
    """

    def __init__(self, namespace: str, monitor: str, json_lines: bool,
                 clock: Callable[[], datetime.datetime] = _now) -> None:
        self.namespace = namespace
        self.monitor = monitor
        self.json_lines = json_lines
        self.clock = clock
        self.counts: collections.Counter[str] = collections.Counter()
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()

    def take(self, subject: str, data: bytes) -> str | None:
        """The line to print for one message, or None (a detection already said)."""
        try:
            message = self._parse(subject, data)
        except messages.MalformedMessage as exc:
            return self._malformed(subject, str(exc))
        if self.json_lines:
            return json.dumps({"subject": subject, "message": json.loads(data)})
        if isinstance(message, messages.Detection):
            if message.id in self._seen:
                self._seen.move_to_end(message.id)
                return None
            self._seen[message.id] = None
            while len(self._seen) > REMEMBERED_IDS:
                self._seen.popitem(last=False)
            return printable(f"{_clock(message.published_at)} {detection_line(message)}")
        return printable(f"{_clock(message.time)} {event_line(message)}")

    def _parse(self, subject: str, data: bytes
               ) -> messages.Detection | messages.RemediationEvent:
        root = messages.monitor_subjects(self.namespace, self.monitor)[:-1]
        kind = subject.removeprefix(root).split(".", 1)[0] if subject.startswith(root) else ""
        message: messages.Detection | messages.RemediationEvent
        if kind == "detections":
            message = messages.parse_detection(data)
        elif kind == "remediations":
            message = messages.parse_remediation_event(data)
        else:
            raise messages.MalformedMessage("unknown", "not a detection or remediation "
                                            f"subject of {self.namespace}/{self.monitor}")
        if message.subject != subject:
            raise messages.MalformedMessage(
                "detection" if kind == "detections" else "remediation-event",
                f"belongs on {message.subject}")
        self.counts[kind] += 1
        return message

    def _malformed(self, subject: str, reason: str) -> str:
        self.counts["malformed"] += 1
        count = self.counts["malformed"]
        if self.json_lines:
            return json.dumps({"subject": subject, "malformed": reason,
                               "malformedCount": count})
        return printable(f"{_clock(self.clock())} ignored a malformed message on {subject}: "
                         f"{reason} ({count} so far)")

    def totals(self) -> str:
        """What was seen, for the last line."""
        c = self.counts
        return (f"{c['detections']} detection messages, {c['remediations']} state changes, "
                f"{c['malformed']} malformed")


# --- following the bus ---------------------------------------------------------------------

async def follow(connection: Connection, feed: Feed, out: Callable[[str], None],
                 say: Callable[[str], None], stop: asyncio.Event) -> None:
    """Print the feed's lines until ``stop`` is set; :class:`Refused` when the server
    refuses the login or the subscription (nothing would ever arrive). A server not there
    yet (a port-forward still starting) is said once and retried, as a lost one is."""
    refusal: list[str] = []
    said: set[str] = set()
    client = Client()
    closing = False

    async def on_error(exc: Exception) -> None:
        text = " ".join(str(exc).split()) or type(exc).__name__
        if "permissions violation" in text.lower() or "authorization" in text.lower():
            refusal.append(text)
            stop.set()
        elif not client.is_connected and text not in said and len(said) < 20:
            said.add(text)
            say(f"cannot reach NATS at {shown_url(connection.url)}: {text}; retrying")

    async def on_disconnect() -> None:
        if not closing:
            say("lost the connection to NATS; reconnecting")

    async def on_reconnect() -> None:
        say("connected to NATS again")

    async def on_msg(msg: Any) -> None:
        line = feed.take(msg.subject, msg.data)
        if line is not None:
            out(line)

    subject = messages.monitor_subjects(connection.namespace, connection.monitor)
    # nats-py retries a refused login for ever when reconnects are unlimited: the refusal
    # (error callback) ends the attempt instead, as Ctrl-C does.
    connecting = asyncio.create_task(client.connect(
        connection.url, user=connection.user, password=connection.password,
        name="startupmonkey-events", allow_reconnect=True, max_reconnect_attempts=-1,
        reconnect_time_wait=1, connect_timeout=5, error_cb=on_error,
        disconnected_cb=on_disconnect, reconnected_cb=on_reconnect, **_tls(connection.url)))
    waiting = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({connecting, waiting}, return_when=asyncio.FIRST_COMPLETED)
        if not connecting.done():
            if refusal:
                raise Refused(f"NATS at {shown_url(connection.url)} refused the login: "
                              f"{refusal[-1]}")
            return  # asked to stop before the first connection
        try:
            connecting.result()
        except (nats.errors.Error, OSError) as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise Refused(f"cannot connect to NATS at {shown_url(connection.url)}: {reason}"
                          ) from None
        await client.subscribe(subject, cb=on_msg)
        await client.flush()
        say(f"following {subject} at {shown_url(connection.url)} as "
            f"{connection.user or 'no login'}; Ctrl-C stops")
        await stop.wait()
        if refusal:
            raise Refused(f"NATS refused: {refusal[-1]} (is this the watcher login of "
                          f"{connection.namespace}/{connection.monitor}?)")
    finally:
        closing = True
        for task in (connecting, waiting):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, nats.errors.Error, OSError):
                await task
        # Bounded: nats-py's close can wait for ever on a connection that never got past its
        # TLS handshake.
        with contextlib.suppress(nats.errors.Error, OSError, TimeoutError):
            await asyncio.wait_for(client.close(), 5)


def _print(line: str) -> None:
    print(line, flush=True)


def _say(line: str) -> None:
    print(f"startupmonkey events: {line}", file=sys.stderr, flush=True)


def main(args: argparse.Namespace) -> int:
    """Entry point of ``startupmonkey events``."""
    try:
        connection = resolve(args)
    except Refused as exc:
        _say(str(exc))
        return 1
    feed = Feed(connection.namespace, connection.monitor, args.output == "json")

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await follow(connection, feed, _print, _say, stop)

    try:
        asyncio.run(run())
    except Refused as exc:
        _say(str(exc))
        return 1
    _say(f"stopped; {feed.totals()}")
    return 0
