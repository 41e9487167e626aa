"""Detection lifecycle: one id per occurrence, re-published while active, resolved after
misses, a new id when it comes back, cooldown after a non-fixing remediation."""

from __future__ import annotations

import datetime

import pytest

from startupmonkey.analyser import findings, lifecycle
from startupmonkey.models import messages, remediation
from startupmonkey.models.enums import ActionId, DetectorId, RemediationState
from tests.support import snapshots_build as build

DEAD = DetectorId.DEAD_TUPLES
ALL = frozenset(DetectorId)


def finding(table: str = "orders", severity: findings.Severity = "warning") -> findings.Finding:
    return findings.Finding(DEAD, f"public.{table}", remediation.Target(table=table),
                            ActionId.VACUUM, severity, f"{table} has dead rows", {"n": 1})


def step(life: lifecycle.Lifecycle, t: float, found: list[findings.Finding],
         judged: bool | None = True, enabled: frozenset[DetectorId] = ALL
         ) -> lifecycle.Outcome:
    judged_map = {} if judged is None else {DEAD: judged}
    outcome = life.observe(lifecycle.Round(build.DBNAME, build.at(t), found, judged_map,
                                           enabled))
    for occurrence in outcome.due:
        life.published(occurrence)
    return outcome


def test_same_id_while_active_republished_every_few_snapshots() -> None:
    life = lifecycle.Lifecycle("prod", "shop")
    first = step(life, 0, [finding()])
    assert len(first.due) == 1 and first.opened
    occurrence = first.due[0]
    assert occurrence.key == "prod/shop/dead_tuples/public.orders"
    assert occurrence.id == messages.new_occurrence_id(occurrence.key, build.at(0))
    due_at = [t for t in range(1, 20) if step(life, t, [finding()]).due]
    assert due_at == [lifecycle.REPUBLISH_EVERY * n for n in (1, 2, 3)]
    assert life.active[occurrence.key].id == occurrence.id
    assert life.active[occurrence.key].last_seen == build.at(19)


def test_rising_severity_and_failed_publication_publish_sooner() -> None:
    life = lifecycle.Lifecycle("prod", "shop")
    step(life, 0, [finding()])
    assert step(life, 1, [finding(severity="critical")]).due
    outcome = life.observe(lifecycle.Round(build.DBNAME, build.at(2), [finding("other")],
                                           {DEAD: True}, ALL))
    assert outcome.due  # not confirmed as published...
    assert step(life, 3, [finding("other"), finding()]).due  # ...so due again


def test_resolved_after_misses_then_a_new_id() -> None:
    life = lifecycle.Lifecycle("prod", "shop")
    original = step(life, 0, [finding()]).due[0].id
    for t in range(1, lifecycle.RESOLVE_AFTER):
        assert not step(life, t, []).resolved
    assert step(life, lifecycle.RESOLVE_AFTER, []).resolved
    assert not life.active
    back = step(life, 10, [finding()]).due[0]
    assert back.id != original


def test_rounds_without_judgement_neither_resolve_nor_open() -> None:
    life = lifecycle.Lifecycle("prod", "shop")
    step(life, 0, [finding()])
    for t in range(1, 10):
        step(life, t, [], judged=None)  # missing section, too little history
        step(life, t + 0.5, [], judged=False)  # truncated data: absence proves nothing
    assert life.active


def test_one_miss_between_sightings_keeps_the_id() -> None:
    life = lifecycle.Lifecycle("prod", "shop")
    original = step(life, 0, [finding()]).due[0].id
    step(life, 1, [])
    step(life, 2, [finding()])
    step(life, 3, [])
    step(life, 4, [finding()])
    assert life.active["prod/shop/dead_tuples/public.orders"].id == original


def test_disabling_a_detector_resolves_its_keys() -> None:
    life = lifecycle.Lifecycle("prod", "shop")
    step(life, 0, [finding()])
    assert step(life, 1, [], enabled=ALL - {DEAD}).resolved


def _event(occurrence: lifecycle.Occurrence, state: RemediationState, t: float
           ) -> messages.RemediationEvent:
    return messages.RemediationEvent(
        namespace="prod", monitor="shop", remediation="shop-abc", key=occurrence.key,
        detection_id=occurrence.id, detector=DEAD, action=ActionId.VACUUM, state=state,
        time=build.at(t))


@pytest.mark.parametrize("state", sorted(lifecycle.NON_FIXING))
def test_cooldown_after_a_non_fixing_end_then_a_new_id(state: RemediationState) -> None:
    life = lifecycle.Lifecycle("prod", "shop")
    occurrence = step(life, 0, [finding()]).due[0]
    assert life.remediation_event(_event(occurrence, state, 5), cooldown=60)
    assert not life.active
    quiet = [step(life, t, [finding()]) for t in range(6, 65)]
    assert not any(o.due for o in quiet) and quiet[0].suppressed
    again = step(life, 65, [finding()]).due
    assert again and again[0].id != occurrence.id


@pytest.mark.parametrize("state", [RemediationState.SUCCEEDED, RemediationState.RECOMMENDED,
                                   RemediationState.OBSERVED, RemediationState.RUNNING])
def test_fixing_or_open_states_keep_the_occurrence(state: RemediationState) -> None:
    life = lifecycle.Lifecycle("prod", "shop")
    occurrence = step(life, 0, [finding()]).due[0]
    assert not life.remediation_event(_event(occurrence, state, 5), cooldown=60)
    assert life.active[occurrence.key].id == occurrence.id
    assert not step(life, 6, [finding()]).opened


def test_cooldown_from_an_older_occurrence_does_not_close_the_current_one() -> None:
    life = lifecycle.Lifecycle("prod", "shop")
    old = step(life, 0, [finding()]).due[0]
    for t in range(1, 1 + lifecycle.RESOLVE_AFTER):
        step(life, t, [])
    current = step(life, 10, [finding()]).due[0]
    life.remediation_event(_event(old, RemediationState.FAILED, 11), cooldown=60)
    assert life.active[current.key].id == current.id
    assert life.cooldowns[current.key] == build.at(11) + datetime.timedelta(seconds=60)


def _idle(pid: int, backend_start: float, state_change: float) -> findings.Finding:
    """An idle_in_transaction finding of a session of the same user and application."""
    target = remediation.Target(pid=pid, backend_start=build.at(backend_start),
                                state_change=build.at(state_change))
    return findings.Finding(
        DetectorId.IDLE_IN_TRANSACTION,
        findings.session_key(pid, build.at(backend_start), build.at(state_change)), target,
        ActionId.TERMINATE_SESSION, "warning", f"pid {pid} (app/shop-web) idle", {"pid": pid})


@pytest.mark.parametrize("state", [RemediationState.SUCCEEDED, RemediationState.FAILED])
def test_a_second_idle_session_after_the_first_ended_is_a_new_occurrence(
        state: RemediationState) -> None:
    """Neither the first session's fix nor its cooldown hides the next session of the same
    user and application: the key is per backend and idle spell, so a cooldown quiets that
    spell only."""
    life = lifecycle.Lifecycle("prod", "shop")
    judged = {DetectorId.IDLE_IN_TRANSACTION: True}
    first = life.observe(lifecycle.Round(build.DBNAME, build.at(0), [_idle(11, -10, -5)],
                                         judged, ALL)).opened[0]
    event = messages.RemediationEvent(
        namespace="prod", monitor="shop", remediation="shop-abc", key=first.key,
        detection_id=first.id, detector=DetectorId.IDLE_IN_TRANSACTION,
        action=ActionId.TERMINATE_SESSION, state=state, time=build.at(2))
    life.remediation_event(event, cooldown=3600)
    # The first session is gone; the second one opens right after.
    second = life.observe(lifecycle.Round(build.DBNAME, build.at(10), [_idle(12, 4, 5)],
                                          judged, ALL))
    assert not second.suppressed
    (opened,) = second.opened
    assert opened.finding.target.pid == 12 and opened.id != first.id
    assert [o.id for o in second.due] == [opened.id]
