"""Poll for an outcome with a time budget instead of sleeping and hoping
(docs/design.md#conventions, 12).

Everything in StartupMonkey is eventually consistent: a snapshot reaches the analyser, a
detection crosses NATS, a Remediation changes state. Tests express that as a check that
either returns something truthy or raises ``AssertionError`` (so it can use plain ``assert``
and report *why* it is not true yet); the helpers call it until it passes or the budget is
spent, then fail with the last reason.

- ``await eventually(check, timeout=10)``: for async tests; ``check`` may be sync or async.
- ``wait_until(check, timeout=10)``: for sync code; ``check`` must be sync.

Both return the check's last (truthy) value. Exceptions other than ``retry_on`` propagate at
once: a typo in a check should not cost the whole budget.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")
What = str | Callable[[], str] | None
"""A check's description, or a function that writes it when the check has failed."""

DEFAULT_TIMEOUT = 10.0
DEFAULT_INTERVAL = 0.05


class _Attempts:
    """Book-keeping shared by the sync and async loops: deadline and last failure."""

    def __init__(self, check: Callable[..., Any], timeout: float, what: What) -> None:
        self._what = what
        self.name = getattr(check, "__qualname__", repr(check))
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.count = 0
        self.last_error: BaseException | None = None
        self.last_value: Any = None

    def record(self, value: Any = None, error: BaseException | None = None) -> None:
        self.count += 1
        self.last_value, self.last_error = value, error

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    @property
    def what(self) -> str:
        """The description: a callable ``what`` is called now, at failure time, so it can
        show the state it failed in (logs, records)."""
        what = self._what() if callable(self._what) else self._what
        return what or self.name

    def failure(self) -> AssertionError:
        if self.last_error is not None:
            last = f"{type(self.last_error).__name__}: {self.last_error}"
        else:
            last = f"returned {self.last_value!r}"
        return AssertionError(
            f"{self.what} did not hold within {self.timeout}s ({self.count} attempts); last: {last}"
        )


@overload
async def eventually(
    check: Callable[[], Awaitable[T]],
    timeout: float = ...,  # noqa: ASYNC109
    interval: float = ...,
    *,
    retry_on: tuple[type[BaseException], ...] = ...,
    what: What = ...,
) -> T: ...
@overload
async def eventually(
    check: Callable[[], T],
    timeout: float = ...,  # noqa: ASYNC109
    interval: float = ...,
    *,
    retry_on: tuple[type[BaseException], ...] = ...,
    what: What = ...,
) -> T: ...
async def eventually(
    check: Callable[[], Any],
    # A budget for the whole poll, not for one awaited call, so asyncio.timeout() does not fit.
    timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109
    interval: float = DEFAULT_INTERVAL,
    *,
    retry_on: tuple[type[BaseException], ...] = (AssertionError,),
    what: What = None,
) -> Any:
    """Await until ``check()`` is truthy and does not raise; return its value.

    ``retry_on`` adds exception types that mean "not yet" (e.g. ``psycopg.OperationalError``
    while a server restarts). On timeout raises ``AssertionError`` naming the last failure.
    """
    attempts = _Attempts(check, timeout, what)
    while True:
        try:
            value = check()
            if inspect.isawaitable(value):
                value = await value
        except retry_on as err:
            attempts.record(error=err)
        else:
            if value:
                return value
            attempts.record(value=value)
        remaining = attempts.remaining()
        if remaining <= 0:
            raise attempts.failure() from attempts.last_error
        await asyncio.sleep(min(interval, remaining))


def wait_until(
    check: Callable[[], T],
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = DEFAULT_INTERVAL,
    *,
    retry_on: tuple[type[BaseException], ...] = (AssertionError,),
    what: What = None,
) -> T:
    """Blocking twin of :func:`eventually` for sync tests and fixtures (sync checks only)."""
    attempts = _Attempts(check, timeout, what)
    while True:
        try:
            value = check()
        except retry_on as err:
            attempts.record(error=err)
        else:
            if inspect.iscoroutine(value):
                value.close()  # never awaited otherwise: a RuntimeWarning, an error here
                raise TypeError(f"{attempts.name} is async: use `await eventually(...)`")
            if value:
                return value
            attempts.record(value=value)
        remaining = attempts.remaining()
        if remaining <= 0:
            raise attempts.failure() from attempts.last_error
        time.sleep(min(interval, remaining))
