"""The analyser's side of NATS: publish detections, receive remediation events.

Detections go to ``startupmonkey.v1.<ns>.<monitor>.detections.<detector>`` as Detection v1
JSON with a ``Nats-Msg-Id`` header equal to the detection id (JetStream deduplicates
re-publications within its window; Core NATS ignores the header). Remediation events arrive
on ``startupmonkey.v1.<ns>.<monitor>.remediations.>``; a malformed one is counted by kind,
logged with its reason (at most once a minute per kind, saying how many were not) and
dropped.

Credentials are read from the files named in ``NatsSettings`` (``userFile``,
``passwordFile``), never from the config itself. The client reconnects forever; while it is
away publications are buffered by nats-py up to its pending limit, and the ``nats``
dependency of ``/readyz`` reports the connection state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Final

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from startupmonkey import observability, settings
from startupmonkey.analyser import metrics
from startupmonkey.models import messages

log = logging.getLogger(__name__)

CLIENT_NAME: Final = "startupmonkey-analyser"
DEPENDENCY: Final = "nats"
RECONNECT_WAIT: Final = 1
"""Seconds between reconnection attempts."""

EventHandler = Callable[[messages.RemediationEvent], Awaitable[None]]


def read_credentials(config: settings.NatsSettings) -> tuple[str | None, str | None]:
    """User and password from their mounted files (None when not configured)."""
    user = config.user_file.read_text().strip() if config.user_file else None
    password = config.password_file.read_text().strip() if config.password_file else None
    return user, password


def remediation_subjects(namespace: str, monitor: str) -> str:
    """Every remediation event subject of one monitor."""
    return f"{messages.SUBJECT_ROOT}.{namespace}.{monitor}.remediations.>"


class Publisher:
    """One NATS connection: detections out, remediation events in."""

    def __init__(self, config: settings.NatsSettings, monitor: settings.MonitorRef,
                 health: observability.Health, meters: metrics.Metrics,
                 on_event: EventHandler) -> None:
        self.config = config
        self.monitor = monitor
        self.health = health
        self.meters = meters
        self.on_event = on_event
        self._nc: Client | None = None  # set once the first connection is up
        self._client: Client | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._malformed_log = observability.RateLimitedLog(log)
        self._logged_errors: set[str] = set()
        self._closing = False

    @property
    def connected(self) -> bool:
        """True while the connection is up."""
        return self._nc is not None and self._nc.is_connected

    def start(self) -> None:
        """Connect in the background (retried forever); readiness follows the connection."""
        self.health.expect(DEPENDENCY)
        self._connecting = asyncio.create_task(self._connect(), name="nats-connect")

    async def wait_connected(self) -> bool:
        """Wait for the first connection (callers bound it with ``asyncio.timeout``)."""
        if self._connecting is not None:
            await asyncio.shield(self._connecting)
        return self.connected

    async def _connect(self) -> None:
        user, password = read_credentials(self.config)
        nc = self._client = Client()
        await nc.connect(
            servers=[self.config.url], name=CLIENT_NAME, user=user, password=password,
            allow_reconnect=True, max_reconnect_attempts=-1,
            reconnect_time_wait=RECONNECT_WAIT, connect_timeout=5,
            error_cb=self._error, disconnected_cb=self._disconnected,
            reconnected_cb=self._reconnected, closed_cb=self._closed)
        self._nc = nc
        await nc.subscribe(remediation_subjects(self.monitor.namespace, self.monitor.name),
                           cb=self._receive)
        self.health.set(DEPENDENCY, True, "connected")
        log.info("connected to NATS", extra={"url": self.config.url})

    async def _error(self, error: Exception) -> None:
        text = f"{type(error).__name__}: {error}"
        if not self.connected:
            self.health.set(DEPENDENCY, False, text)
        if text not in self._logged_errors and len(self._logged_errors) < 100:
            self._logged_errors.add(text)
            log.warning("NATS error (logged once): %s", text)

    async def _disconnected(self) -> None:
        if self._closing:
            return
        self.health.set(DEPENDENCY, False, "disconnected; reconnecting")
        log.warning("disconnected from NATS; reconnecting")

    async def _reconnected(self) -> None:
        self.health.set(DEPENDENCY, True, "reconnected")
        log.info("reconnected to NATS")

    async def _closed(self) -> None:
        self.health.set(DEPENDENCY, False, "closed")
        if not self._closing:
            log.error("NATS connection closed for good")

    async def publish(self, detection: messages.Detection) -> bool:
        """Publish one detection; False (counted, logged) when it could not be handed over."""
        nc = self._nc
        if nc is None:
            self.meters.publish_errors.inc()
            return False
        try:
            await nc.publish(detection.subject, detection.encode(),
                             headers={"Nats-Msg-Id": detection.id})
        except (nats.errors.Error, OSError) as exc:
            self.meters.publish_errors.inc()
            log.warning("could not publish a detection: %s", exc,
                        extra={"key": detection.key, "detection_id": detection.id})
            return False
        return True

    async def _receive(self, msg: Msg) -> None:
        try:
            event = messages.parse_remediation_event(msg.data)
        except messages.MalformedMessage as exc:
            self._malformed(exc.kind, exc.reason, msg.subject)
            return
        if (event.namespace, event.monitor) != (self.monitor.namespace, self.monitor.name):
            self._malformed("wrong-monitor", f"event for {event.namespace}/{event.monitor}",
                            msg.subject)
            return
        self.meters.events.labels(event.state.value).inc()
        await self.on_event(event)

    def _malformed(self, kind: str, reason: str, subject: str) -> None:
        self.meters.malformed.labels(kind).inc()
        self._malformed_log.warning(kind, "dropping malformed %s message: %s", kind, reason,
                                    extra={"subject": subject})

    async def close(self) -> None:
        """Stop connecting, drain what is pending and close."""
        self._closing = True
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connecting
        nc, self._nc, self._client = self._client, None, None
        if nc is None or nc.is_closed:
            return
        if nc.is_connected:
            try:
                await nc.drain()
            except (nats.errors.Error, OSError, TimeoutError) as exc:
                log.warning("could not drain NATS at close; pending detections are lost: %s",
                            exc)
        if not nc.is_closed:
            await nc.close()
