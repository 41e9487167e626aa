"""``startupmonkey events`` never sends its login where it could be read (review findings):
``tls://`` speaks TLS before anything else, so a server whose first words do not ask for TLS
(or a man in the middle) never sees a CONNECT; a login written into the URL is refused and a
URL is never printed with one."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import secrets
import time

import pytest

from startupmonkey import events
from startupmonkey.events import Connection
from tests.support.eventually import eventually

pytestmark = pytest.mark.integration


async def test_tls_sends_nothing_to_a_server_that_speaks_plain_text_first() -> None:
    password = secrets.token_urlsafe(16)
    heard: list[bytes] = []

    async def plain_nats(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b'INFO {"server_id":"x","auth_required":true,"max_payload":1048576}\r\n')
        await writer.drain()
        try:
            while data := await reader.read(4096):
                heard.append(data)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(plain_nats, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    said: list[str] = []
    feed = events.Feed("dev", "shop", json_lines=True)
    connection = Connection(f"tls://127.0.0.1:{port}", "dev", "shop", "watcher", password)
    try:
        following = asyncio.create_task(events.follow(connection, feed, said.append,
                                                      said.append, stop))
        # The client spoke first (TLS, its ClientHello) and the server heard it.
        await eventually(lambda: heard, timeout=30)
        stop.set()
        with contextlib.suppress(events.Refused):
            await asyncio.wait_for(following, 30)
    finally:
        server.close()
        await server.wait_closed()
    everything = b"".join(heard)
    assert everything[:1] == b"\x16", everything[:20]  # a TLS handshake record, not text
    assert b"CONNECT" not in everything and password.encode() not in everything


@pytest.mark.parametrize("netloc", ["{token}@nats.example:4222", "watcher:{token}@127.0.0.1:4222",
                                    "u:{token}@nats.example"])
@pytest.mark.parametrize("scheme", ["nats", "tls"])
def test_a_login_in_the_url_is_refused_and_never_printed(scheme: str, netloc: str) -> None:
    token = secrets.token_urlsafe(12)
    url = f"{scheme}://{netloc.format(token=token)}"
    with pytest.raises(events.Refused) as refused:
        events.check_transport(Connection(url, "dev", "shop"))
    assert token not in str(refused.value)
    assert token not in events.shown_url(url) and "@" not in events.shown_url(url)


def test_a_message_time_the_local_zone_cannot_show_is_printed_as_it_came(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Year 1 in a zone west of UTC overflows astimezone(): the line is still printed."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        at = datetime.datetime(1, 1, 1, tzinfo=datetime.UTC)
        assert events._clock(at) == at.isoformat()
    finally:
        monkeypatch.undo()
        time.tzset()
