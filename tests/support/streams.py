"""Reading a child process's output as the tests that run a command do (asyncio pipes)."""

from __future__ import annotations

import asyncio


async def next_line(stream: asyncio.StreamReader, what: str) -> str:
    """The next line of ``stream`` without its newline, within 30 seconds; fails saying
    ``what`` ended when the stream has closed."""
    async with asyncio.timeout(30):
        raw = await stream.readline()
    assert raw, f"{what} ended"
    return raw.decode().rstrip("\n")
