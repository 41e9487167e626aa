"""startupmonkey.aio.within: a time limit that never loses a cancellation."""

from __future__ import annotations

import asyncio
import sys

import pytest

from startupmonkey import aio


async def _cancelled_as_it_completes(limit: object) -> str:
    """Cancel a task in the very loop iteration its awaited future completes (what a collector
    saw when told to move to a new analyser just as its stream connected); say what the task
    then did."""
    loop = asyncio.get_running_loop()
    connected: asyncio.Future[None] = loop.create_future()
    waiting = asyncio.Event()

    async def connect() -> None:
        waiting.set()
        await connected

    task = asyncio.create_task(limit(connect(), 10))  # type: ignore[operator]
    await waiting.wait()
    connected.set_result(None)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        return "stopped"
    return "carried on"


async def test_a_cancellation_that_lands_as_the_awaitable_completes_is_not_lost() -> None:
    assert await _cancelled_as_it_completes(aio.within) == "stopped"


async def test_asyncio_wait_for_loses_it_on_this_python_which_is_why_within_exists() -> None:
    """The reason for the helper; when this fails, Python fixed wait_for (3.12 did) and the
    helper may go."""
    outcome = await _cancelled_as_it_completes(asyncio.wait_for)
    assert outcome == ("carried on" if sys.version_info < (3, 12) else "stopped")


async def test_within_returns_the_result_and_raises_timeout_error_when_late() -> None:
    async def answer() -> int:
        return 42

    assert await aio.within(answer(), 1) == 42
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    with pytest.raises(TimeoutError):
        await aio.within(never, 0.01)
