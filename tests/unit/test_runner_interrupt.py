"""``startupmonkey run`` stops cleanly when Ctrl-C arrives while it starts, also when the signal
handler's exception surfaces wrapped by a library (pydantic wraps what is raised inside a
serializer function, so a signal during the config dump arrives as its serialization error)."""

from __future__ import annotations

import signal
from pathlib import Path

import pydantic
import pytest

from startupmonkey import runner


class _WithPath(pydantic.BaseModel):
    path: Path


def _dump_interrupted() -> BaseException:
    """What a signal during the config dump raises: the handler's exception, raised inside
    pydantic's serializer of a Path, as pydantic lets it out."""
    model = _WithPath(path=Path("/x"))
    previous = signal.signal(signal.SIGUSR1, runner._interrupt)
    runner._SIGNALLED.clear()
    original = Path.__str__

    def signalled(self: Path) -> str:
        signal.raise_signal(signal.SIGUSR1)
        return original(self)

    try:
        Path.__str__ = signalled  # type: ignore[method-assign]
        with pytest.raises(BaseException) as caught:
            model.model_dump(mode="json")
        return caught.value
    finally:
        Path.__str__ = original  # type: ignore[method-assign]
        signal.signal(signal.SIGUSR1, previous)
        runner._SIGNALLED.clear()


def test_an_interrupt_wrapped_by_a_library_is_still_an_interrupt() -> None:
    raised = _dump_interrupted()
    assert not isinstance(raised, runner._Interrupted)  # wrapped: what the start saw in CI
    assert runner.interrupted(raised)


def test_other_errors_are_not_interrupts() -> None:
    assert not runner.interrupted(ValueError("no"))
    try:
        try:
            raise KeyError("inner")
        except KeyError as inner:
            raise RuntimeError("outer") from inner
    except RuntimeError as outer:
        assert not runner.interrupted(outer)
    assert not runner.interrupted(None)


def test_a_cycle_of_causes_ends() -> None:
    first, second = ValueError("a"), ValueError("b")
    first.__cause__, second.__cause__ = second, first
    assert not runner.interrupted(first)
