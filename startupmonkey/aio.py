"""asyncio helpers every component shares."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")


async def within(awaitable: Awaitable[T], seconds: float) -> T:
    """``await awaitable``, raising TimeoutError after ``seconds``.

    Use it instead of ``asyncio.wait_for``: on Python 3.11 (the image's), ``wait_for`` returns
    the result when its task is cancelled in the same loop iteration as the awaitable
    completes, so the cancellation is lost and the task carries on (fixed in 3.12). A collector
    told to move to a new analyser just as its stream connected kept streaming to the old one
    that way. ``asyncio.timeout`` lets the cancellation through.
    """
    async with asyncio.timeout(seconds):
        return await awaitable


async def cancel_and_wait(*tasks: asyncio.Future[Any]) -> None:
    """Cancel ``tasks`` and wait until each has ended, however it ended.

    Use it instead of ``task.cancel()`` then ``with suppress(CancelledError): await task``:
    that also swallows a cancellation of the *caller* that lands while it waits, and the caller
    carries on. A collector's send loop did this every pass (for its buffer-changed waiter), so
    a restart for a new analyser address that landed then was lost. Here the caller's own
    cancellation is raised (``gather`` passes it on) and the tasks' outcomes are dropped.
    """
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
