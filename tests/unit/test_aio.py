"""startupmonkey.aio.within: a time limit that never loses a cancellation."""

from __future__ import annotations

import asyncio
import contextlib
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


async def _cancelled_while_waiting_for_a_child(stop: object) -> str:
    """Cancel a task while it waits for a child it has cancelled (the child takes a moment to
    end, as a gRPC reader does); say what the task then did."""
    release = asyncio.Event()
    child_waits = asyncio.Event()

    async def child() -> None:
        try:
            await asyncio.Event().wait()
        finally:  # ends only when released
            child_waits.set()
            await release.wait()

    async def parent() -> str:
        task = asyncio.create_task(child())
        await asyncio.sleep(0)  # the child starts waiting
        await stop(task)  # type: ignore[operator]
        return "carried on"

    outer = asyncio.create_task(parent())
    await child_waits.wait()  # the parent has cancelled the child and waits for it
    outer.cancel()
    release.set()
    try:
        return await outer
    except asyncio.CancelledError:
        return "stopped"


async def _suppressing(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_a_caller_cancelled_while_it_waits_for_cancelled_tasks_stops() -> None:
    assert await _cancelled_while_waiting_for_a_child(aio.cancel_and_wait) == "stopped"


async def test_suppressing_cancelled_error_around_the_wait_loses_that_cancellation() -> None:
    """Why the helper exists: the common idiom swallows the caller's own cancellation."""
    assert await _cancelled_while_waiting_for_a_child(_suppressing) == "carried on"


async def test_cancel_and_wait_ends_every_task_whatever_it_raised() -> None:
    async def fails() -> None:
        raise ValueError("ignored")

    async def waits() -> None:
        await asyncio.Event().wait()

    tasks = [asyncio.create_task(fails()), asyncio.create_task(waits())]
    await asyncio.sleep(0)
    await aio.cancel_and_wait(*tasks)
    assert all(task.done() for task in tasks)
