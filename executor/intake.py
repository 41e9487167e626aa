"""How detections reach the executors of one monitor, and how state changes leave them.

Core NATS (default): every executor replica of a monitor joins the queue group
``startupmonkey-executor.<namespace>.<monitor>``, so each detection goes to one of them.
JetStream (``spec.eventBus.jetstream``): a stream per monitor over the monitor's subjects and
one durable pull consumer shared by all replicas, both created idempotently here; a message is
acked once its Remediation exists (the durable record drives the rest), so it is redelivered
only if the executor died before recording it. With JetStream on, the Core subscription is not
also held. Remediation state changes are published as RemediationEvent v1 messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.api
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from startupmonkey import settings
from startupmonkey.executor import records
from startupmonkey.models import messages

log = logging.getLogger(__name__)
Handler = Callable[[bytes], Awaitable[bool]]
DURABLE = "startupmonkey-executor"


def queue_group(namespace: str, monitor: str) -> str:
    """The Core NATS queue group shared by a monitor's executors."""
    return f"startupmonkey-executor.{namespace}.{monitor}"


def stream_name(namespace: str, monitor: str) -> str:
    """The JetStream stream of one monitor (no dots allowed in stream names)."""
    return f"startupmonkey_{namespace}_{monitor}"


def detections_subject(namespace: str, monitor: str) -> str:
    """Every detection subject of one monitor."""
    return f"{messages.SUBJECT_ROOT}.{namespace}.{monitor}.detections.>"


def credentials(nats_settings: settings.NatsSettings) -> dict[str, str]:
    """User and password read from their mounted files (empty when not configured)."""
    found: dict[str, str] = {}
    if nats_settings.user_file is not None:
        found["user"] = Path(nats_settings.user_file).read_text().strip()
    if nats_settings.password_file is not None:
        found["password"] = Path(nats_settings.password_file).read_text().rstrip("\r\n")
    return found


async def connect(nats_settings: settings.NatsSettings, name: str,
                  on_state: Callable[[bool, str], None] | None = None) -> Client:
    """Connect with credentials read from their files; retries forever on disconnects.

    ``on_state(up, detail)`` hears every disconnect and reconnect (readiness follows it)."""
    options: dict[str, object] = {"name": name, "max_reconnect_attempts": -1,
                                  "reconnect_time_wait": 1, "drain_timeout": 5,
                                  **credentials(nats_settings)}
    if on_state is not None:
        async def disconnected() -> None:
            on_state(False, "disconnected from NATS; reconnecting")

        async def reconnected() -> None:
            on_state(True, nats_settings.url)

        options.update(disconnected_cb=disconnected, reconnected_cb=reconnected)
    client = Client()
    try:
        await client.connect(nats_settings.url, **options)  # type: ignore[arg-type]
    except BaseException:
        with contextlib.suppress(Exception):
            await client.close()
        raise
    return client


class CoreIntake:
    """The Core NATS queue-group subscription."""

    def __init__(self, client: Client, namespace: str, monitor: str, handler: Handler) -> None:
        self.client = client
        self.subject = detections_subject(namespace, monitor)
        self.queue = queue_group(namespace, monitor)
        self.handler = handler
        self._subscription: object | None = None
        self._tasks: set[asyncio.Task[bool]] = set()

    async def start(self) -> None:
        """Subscribe."""
        self._subscription = await self.client.subscribe(self.subject, queue=self.queue,
                                                         cb=self._on_message)

    async def _on_message(self, msg: Msg) -> None:
        # Core NATS has no redelivery: the analyser re-publishes active detections.
        try:
            await self.handler(msg.data)
        except Exception:  # never let one message end the subscription's callback loop
            log.exception("a detection on %s could not be handled", msg.subject)

    async def stop(self) -> None:
        """Unsubscribe."""
        if self._subscription is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._subscription.unsubscribe()  # type: ignore[attr-defined]


class JetStreamIntake:
    """One shared durable pull consumer over the monitor's stream."""

    def __init__(self, client: Client, namespace: str, monitor: str, handler: Handler,
                 ack_wait: float = 30.0) -> None:
        self.client = client
        self.namespace = namespace
        self.monitor = monitor
        self.handler = handler
        self.ack_wait = ack_wait
        self._task: asyncio.Task[None] | None = None
        self._subscription: Any = None
        self._stopping = False

    async def ensure_stream(self) -> None:
        """Create or update the stream and the durable consumer (idempotent)."""
        js = self.client.jetstream()
        stream = nats.js.api.StreamConfig(
            name=stream_name(self.namespace, self.monitor),
            subjects=[messages.monitor_subjects(self.namespace, self.monitor)],
            retention=nats.js.api.RetentionPolicy.LIMITS, max_age=7 * 24 * 3600,
            duplicate_window=120)
        try:
            await js.add_stream(stream)
        except nats.js.errors.BadRequestError:
            await js.update_stream(stream)
        consumer = nats.js.api.ConsumerConfig(
            durable_name=DURABLE, ack_policy=nats.js.api.AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait, max_deliver=-1,
            filter_subject=detections_subject(self.namespace, self.monitor))
        with contextlib.suppress(nats.js.errors.BadRequestError):
            await js.add_consumer(stream.name or "", consumer)

    async def start(self) -> None:
        """Create what is missing and start pulling."""
        await self.ensure_stream()
        js = self.client.jetstream()
        self._subscription = await js.pull_subscribe_bind(
            DURABLE, stream=stream_name(self.namespace, self.monitor))
        self._task = asyncio.create_task(self._pull(self._subscription))

    async def _pull(self, subscription: object) -> None:
        while not self._stopping:
            try:
                batch = await subscription.fetch(10, timeout=1)  # type: ignore[attr-defined]
            except (nats.errors.TimeoutError, TimeoutError):
                continue  # nothing to fetch (nats-py also turns a cancel into a timeout)
            except nats.errors.ConnectionClosedError:
                return
            except nats.errors.Error as exc:  # a reconnect, a JetStream hiccup: pull again
                log.warning("fetching detections failed, retrying: %s", exc)
                await asyncio.sleep(1)
                continue
            for msg in batch:
                await self._one(msg)

    async def _one(self, msg: Msg) -> None:
        """Handle one message; whatever goes wrong, the pull loop goes on."""
        try:
            done = await self.handler(msg.data)
        except Exception:
            log.exception("a detection on %s could not be handled; redelivering it",
                          msg.subject)
            done = False
        try:
            if done:
                await msg.ack()
            else:
                await msg.nak(delay=2)
        except nats.errors.Error as exc:  # unacked: JetStream redelivers after the ack wait
            log.warning("could not %s a detection: %s", "ack" if done else "nak", exc)

    async def stop(self) -> None:
        """Stop pulling (unacked messages are redelivered to another replica)."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError, nats.errors.Error):
                await self._task
        if self._subscription is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._subscription.unsubscribe()


class NatsEvents:
    """Publishes RemediationEvent v1 for every state change (an :class:`EventSink`)."""

    def __init__(self, client: Client) -> None:
        self.client = client

    async def emit(self, record: records.Record) -> None:
        """Publish the record's current state."""
        event = messages.RemediationEvent(
            namespace=record.namespace, monitor=record.spec.monitor, remediation=record.name,
            key=record.spec.detection_key, detection_id=record.spec.detection_id,
            detector=record.spec.detector, action=record.spec.action, state=record.state,
            time=records.utcnow(), message=record.status.message)
        await self.client.publish(event.subject, event.encode())
