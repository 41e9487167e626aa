"""Each NATS login may do only its role's job (issue 24.3), on a real nats-server.

The server is configured from ``startupmonkey.natsperms`` exactly as ``startupmonkey run`` and
the operator's managed NATS are. A forbidden publish or subscription is refused by the server
(nats-py reports the server's ``Permissions Violation``) and nobody receives the message; the
real executor still takes detections through JetStream with its own login, so the permissions
are not only tight but sufficient.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from nats.aio.client import Client

from startupmonkey import natsperms
from startupmonkey.localserv import nats as natsserver
from startupmonkey.localserv import postgres
from startupmonkey.models import messages
from startupmonkey.models.enums import RemediationState
from tests.support import executor_helpers as helpers
from tests.support.eventually import eventually

pytestmark = pytest.mark.integration
NS, MON = helpers.NAMESPACE, helpers.MONITOR
Role = natsperms.Role


class Session:
    """A connection as one login, keeping the errors the server sent it."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.client = Client()

    async def connect(self, url: str, login: natsperms.Login) -> Session:
        async def on_error(exc: Exception) -> None:
            self.errors.append(str(exc))
        await self.client.connect(url, user=login.user, password=login.password,
                                  error_cb=on_error, max_reconnect_attempts=0)
        return self

    def refused(self, subject: str) -> bool:
        return any("permissions violation" in e.lower() and subject.lower() in e.lower()
                   for e in self.errors)


@pytest.fixture
async def connect(nats_roles_jetstream: natsserver.NatsServer,
                  nats_logins: dict[Role, natsperms.Login]) -> AsyncIterator[object]:
    sessions: list[Session] = []

    async def as_role(role: Role) -> Session:
        session = await Session().connect(nats_roles_jetstream.url, nats_logins[role])
        sessions.append(session)
        return session
    yield as_role
    for session in sessions:
        await session.client.close()


def _event() -> messages.RemediationEvent:
    detection = helpers.table_detection("orders")
    return messages.RemediationEvent(
        namespace=NS, monitor=MON, remediation=f"{MON}-0123456789", key=detection.key,
        detection_id=detection.id, detector=detection.detector,
        action=detection.proposed_action, state=RemediationState.SUCCEEDED,
        time=detection.published_at)


async def _received(client: Client, subject: str) -> list[bytes]:
    got: list[bytes] = []

    async def keep(msg: object) -> None:
        got.append(msg.data)  # type: ignore[attr-defined]
    await client.subscribe(subject, cb=keep)
    await client.flush()
    return got


def _published_until_seen(client: Client, message: messages.Detection
                          | messages.RemediationEvent, seen: list[bytes]
                          ) -> Callable[[], Awaitable[bool]]:
    """A check for ``eventually``: the message has arrived, else it is published again."""
    async def check() -> bool:
        if message.encode() in seen:
            return True
        await client.publish(message.subject, message.encode())
        await client.flush()
        return message.encode() in seen
    return check


async def test_the_analyser_may_publish_detections_but_not_forge_remediation_events(
        connect: object) -> None:
    analyser = await connect(Role.ANALYSER)  # type: ignore[operator]
    watcher = await connect(Role.WATCHER)  # type: ignore[operator]
    seen = await _received(watcher.client, messages.monitor_subjects(NS, MON))
    event, detection = _event(), helpers.table_detection("orders")

    await analyser.client.publish(event.subject, event.encode())
    await analyser.client.flush()
    # Core NATS delivers at most once; under a heavy load one allowed message was twice never
    # delivered (once behind a refused one, once before it), so the allowed one is published
    # until it arrives: what is tested is that it may be, and that the forged one never is.
    await eventually(_published_until_seen(analyser.client, detection, seen), timeout=30,
                     interval=1.0)
    await eventually(lambda: analyser.refused(event.subject), timeout=30)
    await watcher.client.flush()  # anything the server had for the watcher has arrived
    assert event.encode() not in seen, "the forged event reached a subscriber"


async def test_the_executor_may_not_publish_detections(connect: object) -> None:
    executor = await connect(Role.EXECUTOR)  # type: ignore[operator]
    watcher = await connect(Role.WATCHER)  # type: ignore[operator]
    seen = await _received(watcher.client, messages.monitor_subjects(NS, MON))
    detection, event = helpers.table_detection("orders"), _event()

    await executor.client.publish(detection.subject, detection.encode())
    await executor.client.flush()
    await eventually(_published_until_seen(executor.client, event, seen), timeout=30,
                     interval=1.0)
    await eventually(lambda: executor.refused(detection.subject), timeout=30)
    await watcher.client.flush()
    assert detection.encode() not in seen, "the forged detection reached a subscriber"


async def test_a_watcher_reads_its_monitor_only_and_publishes_nothing(
        connect: object) -> None:
    watcher = await connect(Role.WATCHER)  # type: ignore[operator]
    other = messages.monitor_subjects(NS, "another-monitor")
    detection = helpers.table_detection("orders")
    detections = f"startupmonkey.v1.{NS}.{MON}.detections.>"

    # Joining the executors' queue group would take detections away from them.
    await watcher.client.subscribe(detections, queue=f"startupmonkey-executor.{NS}.{MON}")
    await watcher.client.subscribe(other)
    await watcher.client.publish(detection.subject, detection.encode())
    await watcher.client.flush()

    await eventually(lambda: watcher.refused(detection.subject), timeout=10)
    await eventually(lambda: watcher.refused(other), timeout=10)
    await eventually(lambda: watcher.refused(detections), timeout=10)


async def test_only_the_executor_manages_its_stream_and_nobody_another_monitors(
        connect: object) -> None:
    ours = natsperms.stream_name(NS, MON)
    theirs = natsperms.stream_name(NS, "another-monitor")
    forbidden = {Role.ANALYSER: [ours, theirs], Role.WATCHER: [ours, theirs],
                 Role.EXECUTOR: [theirs]}
    for role, streams in forbidden.items():
        session = await connect(role)  # type: ignore[operator]
        for stream in streams:
            subject = f"$JS.API.STREAM.DELETE.{stream}"
            await session.client.publish(subject, b"")
            await session.client.flush()
            try:
                await eventually(lambda s=session, j=subject: s.refused(j), timeout=10)
            except AssertionError as exc:
                raise AssertionError(f"{role}: {session.errors}") from exc


async def test_the_real_executor_consumes_from_jetstream_with_its_own_login(
        pg_db: postgres.PostgresDatabase, nats_roles_jetstream: natsserver.NatsServer,
        nats_logins: dict[Role, natsperms.Login], connect: object, tmp_path: Path) -> None:
    helpers.stale_tables(pg_db.conninfo, "orders")
    cfg = helpers.config(pg_db, nats_roles_jetstream.url, tmp_path, jetstream=True)
    assert cfg.executor is not None
    login = nats_logins[Role.EXECUTOR]
    (tmp_path / "user").write_text(login.user)
    (tmp_path / "password").write_text(login.password)
    cfg.executor.nats.user_file = tmp_path / "user"
    cfg.executor.nats.password_file = tmp_path / "password"
    async with helpers.running_executor(cfg) as executor:
        analyser = await connect(Role.ANALYSER)  # type: ignore[operator]
        detection = helpers.table_detection("orders")
        await analyser.client.publish(detection.subject, detection.encode(),
                                      headers={"Nats-Msg-Id": detection.id})
        await analyser.client.flush()
        assert executor.engine is not None
        store = executor.engine.store

        async def analysed() -> bool:
            return list((await helpers.states(store)).values()) == ["Succeeded"]
        await eventually(analysed, timeout=30)
    assert analyser.errors == []
