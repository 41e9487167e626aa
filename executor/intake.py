"""How detections reach the executors of one monitor, and how state changes leave them.

Core NATS (default): every executor replica of a monitor joins the queue group
``startupmonkey-executor.<namespace>.<monitor>``, so each detection goes to one of them.
JetStream (``spec.eventBus.jetstream``): a WorkQueue stream per monitor over the monitor's
detection subjects, bounded in messages and bytes, and one durable pull consumer shared by all
replicas, both created idempotently here; a message is acked once its Remediation exists (the
durable record drives the rest), so it is redelivered only if the executor died before
recording it, and the stream drops it once acked. When the stream or the consumer is gone (a
nats-server that lost its store, a hand deletion), both are re-created and re-bound, with
backoff, and the intake reports itself not ready meanwhile. With JetStream on, the Core
subscription is not also held. Remediation state changes are published as RemediationEvent v1
messages (Core NATS only: no stream holds them).
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

from startupmonkey import db, kubetime, natsperms, settings
from startupmonkey.executor import records
from startupmonkey.models import messages

log = logging.getLogger(__name__)
Handler = Callable[[bytes], Awaitable[bool]]
DURABLE = natsperms.DURABLE
stream_name = natsperms.stream_name


def queue_group(namespace: str, monitor: str) -> str:
    """The Core NATS queue group shared by a monitor's executors."""
    return f"startupmonkey-executor.{namespace}.{monitor}"


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
        with contextlib.suppress(Exception):  # the error raised below is the one that matters
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
            with contextlib.suppress(nats.errors.Error):  # a closed connection has none left
                await self._subscription.unsubscribe()  # type: ignore[attr-defined]


#: Bounds of a monitor's stream. A detection is 1-2 KB and the stream holds only what no
#: executor has acked yet (WorkQueue), so these are reached only when every executor has been
#: away for hours while the analyser kept re-publishing; the oldest go first (DiscardOld), and
#: a still-active problem is published again (docs/decisions.md#messages).
STREAM_MAX_MSGS = 10_000
STREAM_MAX_BYTES = 32 * 1024 * 1024
STREAM_MAX_AGE = 7 * 24 * 3600.0
DUPLICATE_WINDOW = 120.0

#: What a fetch or a JetStream API call raises when the stream or the consumer is not there
#: (404), or JetStream cannot answer for them (503: no consumer listens on the pull subject, or
#: JetStream is still starting or is off): re-create and re-bind.
GONE: tuple[type[Exception], ...] = (
    nats.js.errors.NotFoundError, nats.js.errors.ServiceUnavailableError,
    nats.errors.NoRespondersError)


def stream_config(namespace: str, monitor: str) -> nats.js.api.StreamConfig:
    """The stream of one monitor: its detections only, as a bounded work queue."""
    return nats.js.api.StreamConfig(
        name=stream_name(namespace, monitor),
        subjects=[detections_subject(namespace, monitor)],
        retention=nats.js.api.RetentionPolicy.WORK_QUEUE,
        discard=nats.js.api.DiscardPolicy.OLD,
        max_msgs=STREAM_MAX_MSGS, max_bytes=STREAM_MAX_BYTES, max_age=STREAM_MAX_AGE,
        storage=nats.js.api.StorageType.FILE, duplicate_window=DUPLICATE_WINDOW)


class JetStreamIntake:
    """One shared durable pull consumer over the monitor's stream.

    ``on_state(up, detail)`` hears whether the intake has a consumer to pull from (readiness
    follows it)."""

    def __init__(self, client: Client, namespace: str, monitor: str, handler: Handler,
                 ack_wait: float = 30.0,
                 on_state: Callable[[bool, str], None] | None = None) -> None:
        self.client = client
        self.namespace = namespace
        self.monitor = monitor
        self.handler = handler
        self.ack_wait = ack_wait
        self.on_state = on_state
        self.stream = stream_name(namespace, monitor)
        self.rebinds = 0
        self._task: asyncio.Task[None] | None = None
        self._subscription: Any = None
        self._stopping = False

    async def ensure_stream(self) -> None:
        """Create or update the stream and the durable consumer (idempotent).

        A stream of another retention (the Limits stream of earlier versions) cannot be
        changed into a work queue in place: it is deleted and created again. Whatever it still
        held is published again by the analyser while the problem lasts."""
        js = self.client.jetstream()
        stream = stream_config(self.namespace, self.monitor)
        try:
            info = await js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            info = None
        if info is not None and info.config.retention != stream.retention:
            log.warning("stream %s has %s retention; re-creating it as a work queue",
                        self.stream, info.config.retention)
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_stream(self.stream)
            info = None
        if info is None:
            try:
                await js.add_stream(stream)
            except nats.js.errors.BadRequestError:  # another replica was first
                await js.update_stream(stream)
        else:
            await js.update_stream(stream)
        consumer = nats.js.api.ConsumerConfig(
            durable_name=DURABLE, ack_policy=nats.js.api.AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait, max_deliver=-1,
            filter_subject=detections_subject(self.namespace, self.monitor))
        try:
            await js.add_consumer(self.stream, consumer)
        except nats.js.errors.BadRequestError as exc:  # it exists with another configuration
            log.warning("the durable consumer %s/%s keeps its existing configuration (%s); a "
                        "changed ackWait applies once it is re-created", self.stream, DURABLE,
                        exc.description or exc)

    async def _bind(self) -> None:
        """Ensure the stream and consumer, then pull through a new subscription."""
        await self.ensure_stream()
        old, self._subscription = self._subscription, await self.client.jetstream(
        ).pull_subscribe_bind(DURABLE, stream=self.stream)
        if old is not None:
            with contextlib.suppress(nats.errors.Error):
                await old.unsubscribe()
        self._report(True, f"pulling from {self.stream}/{DURABLE}")

    async def start(self) -> None:
        """Create what is missing and start pulling."""
        await self._bind()
        self._task = asyncio.create_task(self._pull())

    def _report(self, up: bool, detail: str) -> None:
        if self.on_state is not None:
            self.on_state(up, detail)

    async def _pull(self) -> None:
        while not self._stopping:
            try:
                batch = await self._subscription.fetch(10, timeout=1)
            except (nats.errors.TimeoutError, TimeoutError):
                continue  # nothing to fetch (nats-py also turns a cancel into a timeout)
            except nats.errors.ConnectionClosedError:
                return
            except GONE as exc:
                await self._recover(exc)
                continue
            except nats.errors.Error as exc:  # a reconnect, a JetStream hiccup: pull again
                log.warning("fetching detections failed, retrying: %s", exc)
                await asyncio.sleep(1)
                continue
            for msg in batch:
                await self._one(msg)

    async def _recover(self, reason: Exception) -> None:
        """Re-create the stream and the consumer and re-bind, until it works or we stop."""
        detail = f"no JetStream consumer {self.stream}/{DURABLE} ({_describe(reason)})"
        self._report(False, detail + "; re-creating it")
        log.warning("%s; re-creating the stream and the consumer", detail)
        backoff = db.Backoff(base=0.25, cap=5.0)
        while not self._stopping:
            try:
                await self._bind()
            except nats.errors.ConnectionClosedError:
                return
            except (nats.errors.Error, OSError, TimeoutError) as exc:
                delay = backoff.next_delay()
                self._report(False, f"{detail}; re-creating it failed: {_describe(exc)}")
                log.warning("re-creating the stream %s failed, retrying in %.1fs: %s",
                            self.stream, delay, _describe(exc))
                await asyncio.sleep(delay)
                continue
            self.rebinds += 1
            log.info("stream %s and consumer %s re-created and bound", self.stream, DURABLE)
            return

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


def _describe(exc: BaseException) -> str:
    """An error in one line (nats-py's API errors print as ``Name()``)."""
    text = str(exc)
    name = type(exc).__name__
    return text if name in text else f"{name}: {text}" if text else name


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
            time=kubetime.utcnow(), message=record.status.message,
            database=record.spec.database)
        await self.client.publish(event.subject, event.encode())
