"""What an action reports back: done or not, why, the numbers before and after, the SQL run."""

from __future__ import annotations

import dataclasses
from typing import Self

from startupmonkey.models.enums import RemediationState


@dataclasses.dataclass
class Outcome:
    """The result of pre-checking and running one action.

    ``state`` is where the Remediation goes next: Succeeded, Failed, Rejected (a pre-check said
    no, nothing ran) or Verifying (reversible action waiting for keep-or-revert).
    """

    state: RemediationState
    message: str
    before: dict[str, float] = dataclasses.field(default_factory=dict)
    after: dict[str, float] = dataclasses.field(default_factory=dict)
    executed_sql: list[str] = dataclasses.field(default_factory=list)
    retry_after: float | None = None
    """Seconds after which the same plan should run again (the attempt ended cleanly: a lock
    timeout, a cancel, a server that went away); the engine counts attempts and gives up when
    it wants. None: do not retry. The same number is in ``after["retry_after_seconds"]``."""

    def with_retry(self, attempt: int) -> Self:
        """Mark this outcome as ending cleanly, with retry ``attempt`` due after
        :func:`backoff`."""
        self.retry_after = backoff(attempt)
        self.after["retry_after_seconds"] = self.retry_after
        self.message += f"; retry due in {self.retry_after:.0f}s (attempt {attempt})"
        return self

    @classmethod
    def rejected(cls, message: str, **before: float) -> Outcome:
        """A pre-check refused: nothing ran."""
        return cls(RemediationState.REJECTED, message, before=dict(before))


def backoff(attempt: int, base: float = 30.0, cap: float = 3600.0) -> float:
    """Seconds before retry number ``attempt`` (1, 2, ...): 30 s doubling, at most an hour."""
    return min(cap, base * 2.0 ** max(0, attempt - 1))
