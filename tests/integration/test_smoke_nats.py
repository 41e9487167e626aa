"""The NATS harness gives later tests the behaviour the event bus relies on
(docs/design.md#event-bus).

On a real ``nats-server`` (fixtures in ``tests/conftest.py``): Core round trips, queue groups
that hand each detection to exactly one executor, JetStream deduplication by ``Nats-Msg-Id``
with a durable pull consumer, and authorization that refuses clients without the right
credentials.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import nats
import nats.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from startupmonkey.localserv import nats as localnats
from tests.support import components, eventually

pytestmark = pytest.mark.integration


async def _quiet_error_cb(err: Exception) -> None:
    """Connection errors are what some tests provoke; the default callback logs them."""


@contextlib.asynccontextmanager
async def _client(url: str, **options: Any) -> AsyncIterator[Client]:
    client = await nats.connect(url, connect_timeout=5, **options)
    try:
        yield client
    finally:
        await client.close()


async def _refused(url: str, **options: Any) -> nats.errors.Error:
    """The error of a first connection attempt that must fail (the socket closed after it).

    nats-py does not close its transport when the initial handshake fails and reconnects are
    off, which leaks a socket (a ResourceWarning, an error here) unless we close the client.
    """
    client = Client()
    try:
        await client.connect(
            url, allow_reconnect=False, connect_timeout=5, error_cb=_quiet_error_cb, **options
        )
    except nats.errors.Error as err:
        return err
    finally:
        await client.close()
    pytest.fail(f"connection to {url} with {sorted(options)} was accepted")


async def test_core_publish_subscribe_round_trip(nats_server: localnats.NatsServer) -> None:
    async with _client(nats_server.url) as client:
        sub = await client.subscribe("startupmonkey.v1.default.smoke.detections.missing_index")
        payload = json.dumps({"key": "default/smoke/missing_index/t", "id": "1"}).encode()
        await client.publish(sub.subject, payload)
        msg = await sub.next_msg(timeout=5)
    assert json.loads(msg.data) == {"key": "default/smoke/missing_index/t", "id": "1"}


async def test_queue_group_delivers_each_message_to_exactly_one_member(
    nats_server: localnats.NatsServer,
) -> None:
    subject, count = "startupmonkey.v1.default.smoke.detections.vacuum_blocked", 40
    received: dict[str, list[bytes]] = {"a": [], "b": []}

    def collect(member: str) -> Any:
        async def handler(msg: Msg) -> None:
            received[member].append(msg.data)

        return handler

    async with (
        _client(nats_server.url) as member_a,
        _client(nats_server.url) as member_b,
        _client(nats_server.url) as publisher,
    ):
        queue = "startupmonkey-executor.default.smoke"
        for member, client in (("a", member_a), ("b", member_b)):
            await client.subscribe(subject, queue=queue, cb=collect(member))
            await client.flush()  # the server knows the subscription before we publish
        for i in range(count):
            await publisher.publish(subject, str(i).encode())
        await publisher.flush()
        await eventually.eventually(lambda: len(received["a"]) + len(received["b"]) >= count)
    everything = received["a"] + received["b"]
    assert sorted(everything, key=int) == [str(i).encode() for i in range(count)]
    assert not set(received["a"]) & set(received["b"])


async def test_jetstream_dedups_by_msg_id_and_durable_pull_consumer_acks(
    nats_jetstream: localnats.NatsServer,
) -> None:
    subject = "startupmonkey.v1.default.smoke.detections.missing_index"
    async with _client(nats_jetstream.url) as client:
        js = client.jetstream()
        await js.add_stream(name="startupmonkey-default-smoke", subjects=[subject])
        headers = {"Nats-Msg-Id": "detection-1"}
        # the re-publish carries other bytes: deduplication is by id, the first copy is kept
        payload = {"id": "detection-1", "lastSeen": "2026-11-28T12:00:00Z"}
        republished = {"id": "detection-1", "lastSeen": "2026-11-28T12:00:10Z"}
        first = await js.publish(subject, json.dumps(payload).encode(), headers=headers)
        again = await js.publish(subject, json.dumps(republished).encode(), headers=headers)
        assert (first.duplicate, again.duplicate, again.seq) == (None, True, first.seq)
        stream = await js.stream_info("startupmonkey-default-smoke")
        assert stream.state.messages == 1

        consumer = await js.pull_subscribe(
            subject, durable="executor", stream="startupmonkey-default-smoke"
        )
        messages = await consumer.fetch(1, timeout=5)
        assert [m.headers for m in messages] == [headers]
        assert [json.loads(m.data) for m in messages] == [payload]
        assert [m.subject for m in messages] == [subject]
        await messages[0].ack_sync(timeout=5)
        info = await js.consumer_info("startupmonkey-default-smoke", "executor")
        assert (info.num_ack_pending, info.num_pending, info.delivered.consumer_seq) == (0, 0, 1)
        with pytest.raises(nats.errors.TimeoutError):
            await consumer.fetch(1, timeout=0.5)
        await consumer.unsubscribe()


async def test_authenticated_server_refuses_missing_or_wrong_credentials(
    nats_auth: components.NatsAuth,
) -> None:
    missing = await _refused(nats_auth.url)
    wrong = await _refused(nats_auth.url, user=nats_auth.user, password="not-" + nats_auth.password)
    assert "Authorization Violation" in str(missing)
    assert "Authorization Violation" in str(wrong)
    async with _client(nats_auth.url, user=nats_auth.user, password=nats_auth.password) as ok:
        assert ok.is_connected
    assert nats_auth.password not in repr(nats_auth)
    assert nats_auth.password not in (nats_auth.server.workdir / "nats-server.log").read_text()


async def test_server_restart_keeps_port_and_jetstream_streams(
    nats_jetstream: localnats.NatsServer,
) -> None:
    url = nats_jetstream.url
    async with _client(url) as client:
        await client.jetstream().add_stream(name="kept", subjects=["smoke.kept"])
    nats_jetstream.restart()
    assert nats_jetstream.url == url
    async with _client(url) as client:
        info = await client.jetstream().stream_info("kept")
    assert info.config.subjects == ["smoke.kept"]
