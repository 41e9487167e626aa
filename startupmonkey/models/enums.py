"""The frozen names (docs/design.md#frozen-names), in one place.

Detector ids, action ids, risk classes and remediation states appear in NATS subjects, CRD
labels, ``spec.thresholds`` keys, gRPC messages and the docs. Everything that writes or reads
one of them imports it from here, so a typo is a type error rather than a silent mismatch.
"""

from __future__ import annotations

import enum


class DetectorId(enum.StrEnum):
    """What the analyser can find; also the keys of ``spec.thresholds``."""

    MISSING_INDEX = "missing_index"
    DEAD_TUPLES = "dead_tuples"
    VACUUM_BLOCKED = "vacuum_blocked"
    STALE_STATISTICS = "stale_statistics"
    LONG_RUNNING_QUERY = "long_running_query"
    IDLE_IN_TRANSACTION = "idle_in_transaction"
    BLOCKING_LOCK = "blocking_lock"
    CONNECTION_SATURATION = "connection_saturation"
    CACHE_HIT_RATIO = "cache_hit_ratio"
    INVALID_INDEX = "invalid_index"
    UNUSED_INDEX = "unused_index"
    DUPLICATE_INDEX = "duplicate_index"
    XID_WRAPAROUND = "xid_wraparound"
    SLOW_STATEMENT = "slow_statement"


class ActionId(enum.StrEnum):
    """What the executor can do about a detection."""

    CREATE_INDEX = "create_index"
    VACUUM = "vacuum"
    ANALYZE = "analyze"
    CANCEL_QUERY = "cancel_query"
    TERMINATE_SESSION = "terminate_session"
    DROP_INVALID_INDEX = "drop_invalid_index"
    REINDEX = "reindex"
    DROP_INDEX = "drop_index"
    ADVICE = "advice"


class RiskClass(enum.StrEnum):
    """How much an action can hurt; policy, timeouts and advisory locks are per class."""

    MAINTENANCE = "maintenance"
    SESSION = "session"
    DDL = "ddl"
    DESTRUCTIVE = "destructive"
    ADVICE = "advice"


class RemediationState(enum.StrEnum):
    """Lifecycle of one Remediation; CamelCase in objects, ``.token`` in NATS subjects."""

    PROPOSED = "Proposed"
    PENDING_APPROVAL = "PendingApproval"
    APPROVED = "Approved"
    RUNNING = "Running"
    VERIFYING = "Verifying"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    ROLLED_BACK = "RolledBack"
    REJECTED = "Rejected"
    EXPIRED = "Expired"
    RECOMMENDED = "Recommended"
    OBSERVED = "Observed"

    @property
    def token(self) -> str:
        """The lower-case form used as a NATS subject token and a label value."""
        return self.value.lower()

    @property
    def terminal(self) -> bool:
        """A terminal state never changes again; the key may be detected anew."""
        return self in TERMINAL_STATES

    @classmethod
    def from_token(cls, token: str) -> RemediationState:
        """Parse either the CamelCase value or the lower-case token."""
        for state in cls:
            if token in (state.value, state.token):
                return state
        raise ValueError(f"unknown remediation state {token!r}")


TERMINAL_STATES = frozenset(
    {
        RemediationState.SUCCEEDED,
        RemediationState.FAILED,
        RemediationState.ROLLED_BACK,
        RemediationState.REJECTED,
        RemediationState.EXPIRED,
        RemediationState.RECOMMENDED,
        RemediationState.OBSERVED,
    }
)

#: States in which a Remediation still has work ahead (counted as "Active").
OPEN_STATES = frozenset(set(RemediationState) - TERMINAL_STATES)


class Mode(enum.StrEnum):
    """How far StartupMonkey may go on its own: globally (``spec.mode``) or per risk class."""

    OBSERVE = "observe"
    APPROVAL = "approval"
    AUTO = "auto"


ACTION_RISK: dict[ActionId, RiskClass] = {
    ActionId.CREATE_INDEX: RiskClass.DDL,
    ActionId.VACUUM: RiskClass.MAINTENANCE,
    ActionId.ANALYZE: RiskClass.MAINTENANCE,
    ActionId.CANCEL_QUERY: RiskClass.SESSION,
    ActionId.TERMINATE_SESSION: RiskClass.SESSION,
    ActionId.DROP_INVALID_INDEX: RiskClass.DDL,
    ActionId.REINDEX: RiskClass.DDL,
    ActionId.DROP_INDEX: RiskClass.DESTRUCTIVE,
    ActionId.ADVICE: RiskClass.ADVICE,
}

#: The action each detector proposes by default (the analyser may pick another, e.g. reindex).
DEFAULT_ACTION: dict[DetectorId, ActionId] = {
    DetectorId.MISSING_INDEX: ActionId.CREATE_INDEX,
    DetectorId.DEAD_TUPLES: ActionId.VACUUM,
    DetectorId.VACUUM_BLOCKED: ActionId.ADVICE,
    DetectorId.STALE_STATISTICS: ActionId.ANALYZE,
    DetectorId.LONG_RUNNING_QUERY: ActionId.CANCEL_QUERY,
    DetectorId.IDLE_IN_TRANSACTION: ActionId.TERMINATE_SESSION,
    DetectorId.BLOCKING_LOCK: ActionId.TERMINATE_SESSION,
    DetectorId.CONNECTION_SATURATION: ActionId.ADVICE,
    DetectorId.CACHE_HIT_RATIO: ActionId.ADVICE,
    DetectorId.INVALID_INDEX: ActionId.DROP_INVALID_INDEX,
    DetectorId.UNUSED_INDEX: ActionId.DROP_INDEX,
    DetectorId.DUPLICATE_INDEX: ActionId.DROP_INDEX,
    DetectorId.XID_WRAPAROUND: ActionId.ADVICE,
    DetectorId.SLOW_STATEMENT: ActionId.ADVICE,
}


#: Every action a detection of each detector may ask for: its default, the alternatives the
#: analyser chooses among (an INVALID index behind a constraint is rebuilt, not dropped), and
#: advice. The executor refuses any other pair as a malformed message, so a forged detection
#: cannot ask for a VACUUM on a cache-hit-ratio finding (issue 24).
ALLOWED_ACTIONS: dict[DetectorId, frozenset[ActionId]] = {
    detector: frozenset({action, ActionId.ADVICE}) for detector, action in DEFAULT_ACTION.items()
}
ALLOWED_ACTIONS[DetectorId.INVALID_INDEX] |= {ActionId.REINDEX}
#: A root blocker idle (in a transaction or not) is terminated, an active one has its statement
#: cancelled (issue 17, item 3); a root the executor must not touch is advice.
ALLOWED_ACTIONS[DetectorId.BLOCKING_LOCK] |= {ActionId.CANCEL_QUERY}


def risk_of(action: ActionId) -> RiskClass:
    """The risk class an action belongs to."""
    return ACTION_RISK[action]
