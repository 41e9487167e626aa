"""What a Remediation changed, in one human sentence, and the time it saves (issue 21.3).

``status.before`` and ``status.after`` hold the executor's raw numbers (``n_dead_tup``,
``index_bytes``, ``verify_start.calls.<queryid>`` ...): exact, but a key dump to a person.
:func:`describe` turns an action and its status into a :class:`Summary`: a sentence of what
changed with units and thousands separators ("50,000 dead rows removed (120,000 live rows)",
"11.7 ms -> 0.07 ms per call over 320 / 404 calls") and, where it was measured, the benefit.
The executor writes both into ``status.summary`` / ``status.benefit`` at every state change
(``kubectl get rem -o wide`` and the JSONL audit log show them); ``startupmonkey status`` and
the demo print them. Pure: no I/O, and it never raises on what a status may hold (NaN,
infinities, negative or huge numbers, missing keys, an action it does not know).

Keys the module knows are either part of an action's sentence or deliberately left out of it
(bookkeeping such as the verification window's start counters); a key it does not know is
never dropped: it is appended readably ("holder xmin age: 1,234"), its unit guessed from its
suffix (``_bytes``, ``_seconds``, ``_ms``). A sentence longer than :data:`MAX_SUMMARY` is cut.

Benefit, only for a create_index kept after verification (state Succeeded, ``decision.keep``)::

    saved per hour = (before_mean_ms - after_mean_ms) x after_calls / after_window_seconds x 3600

the decision's mean execution time per call of the served statements before and after the
build, times their call rate in the after window (``status.after["after_window_seconds"]``,
what the verification measured). Without any of these, or without a positive saving, the
benefit is empty: no number is invented (the maintenance and session actions have no measured
time saved).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping

from startupmonkey.models import remediation
from startupmonkey.models.enums import ActionId, RemediationState

#: Longest sentence written (the CRD field allows 1024; a table cell wants much less).
MAX_SUMMARY = 512
#: Keys known and deliberately not in any sentence: counters the action compares, the
#: verification windows' bookkeeping, the pre-check's limits.
_QUIET = frozenset({
    "vacuum_count", "autovacuum_count", "analyze_count", "autoanalyze_count", "reltuples",
    "n_mod_since_analyze", "n_dead_tup", "n_live_tup", "dead_ratio", "autovacuum_trigger",
    "trigger", "holder_xmin_age", "limit_seconds", "still_running", "session_gone",
    "blocked_sessions", "longest_wait_seconds", "transaction_seconds", "idle_seconds",
    "query_seconds", "dead_removed", "dead_not_removable", "table_rows", "table_bytes",
    "existing_indexes", "leftovers_dropped", "builders_cancelled", "index_bytes",
    "build_seconds", "cost_before", "cost_after", "cost_reduction", "estimated_index_bytes",
    "statements_planned", "statements_using_index", "min_cost_reduction", "max_build_bytes",
    "max_indexes_per_table", "max_selectivity", "before_cross_check_ratio", "before_mean_ms",
    "after_mean_ms", "before_calls", "after_calls", "improvement", "kept", "idx_scan", "valid",
    "dropped", "retry_after_seconds",
})
_QUIET_PREFIXES = ("verify_start.", "plan_time_cumulative_", "before_window_", "after_window_",
                   "selectivity")
#: The pre-check's planner cost of each key it considered (``key_<n>_cost_after``).
_QUIET_PATTERN = re.compile(r"key_\d+_cost_after")
#: States in which nothing has run (yet, or ever).
_NOT_RUN = frozenset({RemediationState.PROPOSED, RemediationState.PENDING_APPROVAL,
                      RemediationState.APPROVED, RemediationState.REJECTED,
                      RemediationState.EXPIRED, RemediationState.RECOMMENDED,
                      RemediationState.OBSERVED})


@dataclasses.dataclass(frozen=True)
class Summary:
    """One Remediation in words: ``text`` (what changed) and ``benefit`` ("" if unmeasured)."""

    text: str = ""
    benefit: str = ""


# --- numbers with units --------------------------------------------------------------------

def _odd(value: float) -> str | None:
    """The text of a value no unit can format (NaN, infinities), else None."""
    if math.isnan(value):
        return "unknown"
    if math.isinf(value):
        return "infinite" if value > 0 else "-infinite"
    return None


def count(value: float) -> str:
    """A count with thousands separators: ``50,000``; huge ones in scientific form."""
    if (odd := _odd(value)) is not None:
        return odd
    if abs(value) >= 1e15:
        return f"{value:.3g}"
    return f"{round(value):,}"


def number(value: float) -> str:
    """A plain number: a count when whole, else three significant digits."""
    if (odd := _odd(value)) is not None:
        return odd
    if value == int(value) or abs(value) >= 1000:
        return count(value)
    if abs(value) < 0.001:  # never in scientific notation
        return f"{value:.6f}".rstrip("0").rstrip(".")
    shown = f"{value:.3g}"
    # 999.9999 rounds to "1e+03" at three digits: the count form never uses an exponent
    return count(value) if "e" in shown else shown


def size(value: float) -> str:
    """Bytes in 1024-based units as PostgreSQL names them: ``12 MB``, ``1.5 GB``, ``1 byte``;
    a value that rounds up to 1024 of a unit is shown in the next (``1.0 MB``, not
    ``1,024 kB``)."""
    if (odd := _odd(value)) is not None:
        return odd
    scaled = float(value)
    units = ("bytes", "kB", "MB", "GB", "TB")
    for index, unit in enumerate(units):
        last = index == len(units) - 1
        rounded = round(scaled, 1) if abs(scaled) < 10 and unit != "bytes" else round(scaled)
        if abs(rounded) < 1024 or last:
            break
        scaled /= 1024
    if unit == "bytes":
        return "1 byte" if scaled == 1 else f"{count(scaled)} bytes"
    return f"{scaled:.1f} {unit}" if abs(scaled) < 10 else f"{count(scaled)} {unit}"


def duration_ms(value: float) -> str:
    """Milliseconds as ``0.07 ms``, ``11.7 ms``, ``2.3 s``, ``4.5 min`` or ``3.2 h``."""
    if (odd := _odd(value)) is not None:
        return odd
    if abs(value) < 1:  # never in scientific notation: 0.07 ms, 0.0049 ms, 0.000 ms
        return f"{value:.2g} ms" if abs(value) >= 0.001 else f"{value:.3f} ms"
    if abs(value) < 1000:
        return f"{value:.3g} ms" if abs(value) < 100 else f"{value:.0f} ms"
    scaled = value / 1000
    for unit, factor in (("s", 60), ("min", 60)):
        if abs(scaled) < 120:
            return f"{number(round(scaled, 1))} {unit}"
        scaled /= factor
    return f"{number(round(scaled, 1))} h"


def seconds(value: float) -> str:
    """Seconds, formatted as :func:`duration_ms` does."""
    return duration_ms(value * 1000) if _odd(value) is None else duration_ms(value)


def _by_suffix(key: str, value: float) -> str:
    if key.endswith("_bytes"):
        return size(value)
    if key.endswith(("_seconds", "_s")):
        return seconds(value)
    if key.endswith("_ms"):
        return duration_ms(value)
    return number(value)


# --- sentences -----------------------------------------------------------------------------

class _Numbers:
    """``before`` and ``after`` read defensively: a missing key is None, never a KeyError."""

    def __init__(self, status: remediation.RemediationStatus) -> None:
        self.before: Mapping[str, float] = status.before or {}
        self.after: Mapping[str, float] = status.after or {}

    def b(self, key: str) -> float | None:
        return _finite(self.before.get(key))

    def a(self, key: str) -> float | None:
        return _finite(self.after.get(key))

    def any(self, key: str) -> float | None:
        value = self.a(key)
        return value if value is not None else self.b(key)


def _finite(value: object) -> float | None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    return float(value) if math.isfinite(value) else None


Describer = Callable[[_Numbers, remediation.RemediationStatus], list[str]]


def _vacuum(n: _Numbers, status: remediation.RemediationStatus) -> list[str]:
    removed, held = n.a("dead_removed"), n.a("dead_not_removable")
    if removed is None:
        return _waiting(n, status)
    sentence = f"{count(removed)} dead rows removed"
    if held:
        sentence += f", {count(held)} not removable yet (the xmin horizon is held)"
    table_bytes, live = n.any("table_bytes"), n.any("n_live_tup")
    if table_bytes is not None:
        sentence += f" ({size(table_bytes)} table)"
    elif live is not None:
        sentence += f" ({count(live)} live rows)"
    return [sentence]


def _analyze(n: _Numbers, status: remediation.RemediationStatus) -> list[str]:
    changed = n.b("n_mod_since_analyze")
    if not n.after or changed is None:
        return _waiting(n, status)
    refreshed = (n.a("analyze_count") or 0) > (n.b("analyze_count") or 0) or \
        (n.a("n_mod_since_analyze") or 0) < changed
    if refreshed:
        return [f"statistics refreshed after {count(changed)} changed rows"]
    return [f"statistics not refreshed: {count(changed)} changed rows"]


def _session_numbers(n: _Numbers) -> list[str]:
    parts = []
    if (blocked := n.b("blocked_sessions")) is not None:
        wait = n.b("longest_wait_seconds")
        longest = f", the longest waiting {seconds(wait)}" if wait is not None else ""
        parts.append(f"it held up {count(blocked)} session(s){longest}")
        if (left := n.a("blocked_sessions")) is not None:
            parts.append(f"{count(left)} still blocked")
    return parts


def _cancel(n: _Numbers, status: remediation.RemediationStatus) -> list[str]:
    still = n.a("still_running")
    if still is None and n.a("session_gone") is None:
        return _waiting(n, status)
    ran = n.b("query_seconds")
    running = f" running for {seconds(ran)}" if ran is not None else ""
    if still:
        head = f"the query{running} kept running after the cancel"
    elif len(status.executed_sql) > 1:
        head = f"terminated the session of a query{running} (the cancel was not enough)"
    else:
        head = f"cancelled a query{running}"
    return [head, *_session_numbers(n)]


def _terminate(n: _Numbers, status: remediation.RemediationStatus) -> list[str]:
    gone = n.a("session_gone")
    if gone is None:
        return _waiting(n, status)
    idle, xact = n.b("idle_seconds"), n.b("transaction_seconds")
    what = "a session"
    if idle is not None and xact is not None and seconds(idle) == seconds(xact):
        what += f" idle in a transaction for {seconds(idle)}"  # idle since it began
    else:
        if idle is not None:
            what += f" idle for {seconds(idle)}"
        if xact is not None:
            what += f" in a transaction open for {seconds(xact)}"
    head = f"terminated {what}" if gone else f"{what} was signalled but is still there"
    return [head, *_session_numbers(n)]


def _create_index(n: _Numbers, status: remediation.RemediationStatus) -> list[str]:
    decision, index_bytes = status.decision, n.a("index_bytes")
    parts = []
    if decision is not None:
        before_ms, after_ms = _finite(decision.before_mean_ms), _finite(decision.after_mean_ms)
        calls = f"{_calls(decision.before_calls)} / {_calls(decision.after_calls)} calls"
        core = (f"{duration_ms(before_ms)} -> {duration_ms(after_ms)} per call over {calls}"
                if before_ms is not None and after_ms is not None
                else f"no time per call measured over {calls}")
        if not decision.keep:
            core = f"index dropped again: {core}"
        elif status.state is RemediationState.ROLLED_BACK:
            core = f"rolled back on request (kept at first: {core})"
        parts.append(core)
        if index_bytes is not None and decision.keep:
            parts.append(f"index {size(index_bytes)}")
    elif index_bytes is not None:
        built = n.a("build_seconds")
        took = f" in {seconds(built)}" if built else ""
        verifying = "; verifying" if status.state is RemediationState.VERIFYING else ""
        parts.append(f"index built ({size(index_bytes)}){took}{verifying}")
    else:
        return _precheck(n, status)
    return parts


def _calls(value: object) -> str:
    found = _finite(value)
    return count(found) if found is not None else "?"


def _precheck(n: _Numbers, status: remediation.RemediationStatus) -> list[str]:
    cost_before, cost_after = n.b("cost_before"), n.b("cost_after")
    if cost_before is None or cost_after is None:
        return _waiting(n, status)
    return [f"nothing built: planner cost {number(cost_before)} -> {number(cost_after)} "
            "with the index"]


def _drop(n: _Numbers, status: remediation.RemediationStatus) -> list[str]:
    if not n.a("dropped"):
        return _waiting(n, status)
    freed = n.b("index_bytes")
    head = f"index dropped, {size(freed)} freed" if freed is not None else "index dropped"
    if (scans := n.b("idx_scan")) is not None:
        head += f" (it had {count(scans)} scans)"
    if cancelled := n.b("builders_cancelled"):
        head += f"; {count(cancelled)} stuck build(s) cancelled"
    return [head]


def _reindex(n: _Numbers, status: remediation.RemediationStatus) -> list[str]:
    old, new = n.b("index_bytes"), n.a("index_bytes")
    if not n.a("valid") or new is None:
        return _waiting(n, status)
    change = f": {size(old)} -> {size(new)}" if old is not None else f": {size(new)}"
    return [f"index rebuilt, valid{change}"]


def _waiting(n: _Numbers, status: remediation.RemediationStatus) -> list[str]:
    """What was measured when the action's own numbers are not there: nothing ran (a
    pre-check said no, or it never started), or it ended before measuring."""
    facts = []
    dead, live = n.b("n_dead_tup"), n.b("n_live_tup")
    if dead is not None:
        beside = f" beside {count(live)} live" if live is not None else ""
        facts.append(f"{count(dead)} dead rows{beside}")
    elif (changed := n.b("n_mod_since_analyze")) is not None:
        facts.append(f"{count(changed)} rows changed since the last analyze")
    for key, label in (("query_seconds", "query running for"), ("idle_seconds", "idle for"),
                       ("limit_seconds", "limit")):
        if (value := n.b(key)) is not None:
            facts.append(f"{label} {seconds(value)}")
    if status.state in _NOT_RUN and facts:
        return [f"nothing ran: {', '.join(facts)}"]
    return facts


_DESCRIBERS: dict[str, Describer] = {
    ActionId.VACUUM.value: _vacuum,
    ActionId.ANALYZE.value: _analyze,
    ActionId.CANCEL_QUERY.value: _cancel,
    ActionId.TERMINATE_SESSION.value: _terminate,
    ActionId.CREATE_INDEX.value: _create_index,
    ActionId.DROP_INVALID_INDEX.value: _drop,
    ActionId.DROP_INDEX.value: _drop,
    ActionId.REINDEX.value: _reindex,
}


def _quiet(key: str) -> bool:
    return key in _QUIET or key.startswith(_QUIET_PREFIXES) or bool(_QUIET_PATTERN.fullmatch(key))


def _label(key: str) -> str:
    return " ".join(key.replace(".", " ").replace("_", " ").split()) or "?"


def _unknown(n: _Numbers) -> list[str]:
    """Every key this module does not know, readably: ``label: before -> after``."""
    parts = []
    for key in dict.fromkeys([*n.before, *n.after]):
        if _quiet(key):
            continue
        values = [v for v in (n.before.get(key), n.after.get(key)) if v is not None]
        shown = [_by_suffix(key, float(v)) if isinstance(v, int | float) else str(v)
                 for v in values]
        if len(shown) == 2 and shown[0] == shown[1]:
            shown = shown[:1]
        parts.append(f"{_label(key)}: {' -> '.join(shown)}")
    return parts


def _retry(n: _Numbers) -> list[str]:
    wait = n.a("retry_after_seconds")
    return [f"retry in {seconds(wait)}"] if wait is not None else []


def benefit(status: remediation.RemediationStatus) -> str:
    """Time saved per hour (the module docstring's formula), or "" when not measured."""
    decision = status.decision
    # improvement is set only when the verification compared two measured windows: an index
    # kept unverified (too few calls to judge) claims no time saved.
    if (decision is None or not decision.keep or decision.improvement is None
            or status.state is not RemediationState.SUCCEEDED):
        return ""
    before_ms, after_ms = _finite(decision.before_mean_ms), _finite(decision.after_mean_ms)
    calls = _finite(decision.after_calls)
    window = _finite((status.after or {}).get("after_window_seconds"))
    if before_ms is None or after_ms is None or calls is None or window is None:
        return ""
    if before_ms < 0 or after_ms < 0 or calls <= 0 or window <= 0 or before_ms <= after_ms:
        return ""
    per_hour = calls / window * 3600
    saved = (before_ms - after_ms) * per_hour
    if not math.isfinite(saved):
        return ""
    return f"{duration_ms(saved)} saved per hour ({count(per_hour)} calls/h)"


def describe(action: ActionId | str, status: remediation.RemediationStatus) -> Summary:
    """The sentence and the benefit of ``status`` for ``action`` (any action id, known or
    not)."""
    n = _Numbers(status)
    describer = _DESCRIBERS.get(str(action), _waiting)
    parts = [*describer(n, status), *_retry(n), *_unknown(n)]
    text = "; ".join(p for p in parts if p)
    if len(text) > MAX_SUMMARY:
        text = text[:MAX_SUMMARY - 3].rstrip() + "..."
    return Summary(text, benefit(status))


def describe_object(obj: Mapping[str, object]) -> Summary:
    """:func:`describe` of a Remediation object as the API or the audit log holds it
    (camelCase); an object whose status does not parse gets an empty summary."""
    spec, status = obj.get("spec"), obj.get("status")
    action = spec.get("action", "") if isinstance(spec, Mapping) else ""
    try:
        parsed = remediation.RemediationStatus.model_validate(
            status if isinstance(status, Mapping) else {})
    except ValueError:
        return Summary()
    return describe(str(action), parsed)


def of_object(obj: Mapping[str, object]) -> Summary:
    """What the executor wrote in ``status.summary`` / ``status.benefit`` of a Remediation
    object, or (an object an executor from before issue 21.3 wrote) :func:`describe_object`."""
    status = obj.get("status")
    if isinstance(status, Mapping) and ("summary" in status or "benefit" in status):
        return Summary(str(status.get("summary") or ""), str(status.get("benefit") or ""))
    return describe_object(obj)
