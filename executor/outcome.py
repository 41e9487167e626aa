"""What an action reports back: done or not, why, the numbers before and after, the SQL run."""

from __future__ import annotations

import dataclasses

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

    @classmethod
    def rejected(cls, message: str, **before: float) -> Outcome:
        """A pre-check refused: nothing ran."""
        return cls(RemediationState.REJECTED, message, before=dict(before))
