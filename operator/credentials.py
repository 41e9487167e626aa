"""Are the Secrets a monitor refers to there, with the keys it names?

A missing Secret must show as a False condition with a readable reason (and an Event), never
as pods stuck without a word or an operator crash loop. The operator may only ``get`` Secrets
(docs/design.md#rbac); it looks at which keys exist and never at, or logs, their values.
"""

from __future__ import annotations

import dataclasses

from startupmonkey.models import monitor as monitor_models
from startupmonkey.operator import kube, monitor, render

REASON_NOT_FOUND = "SecretNotFound"
REASON_KEY_MISSING = "SecretKeyNotFound"
REASON_NOT_READABLE = "SecretNotReadable"
REASONS = (REASON_NOT_FOUND, REASON_KEY_MISSING, REASON_NOT_READABLE)


@dataclasses.dataclass(frozen=True)
class Reference:
    """One Secret reference of the spec and the condition a problem with it affects."""

    field: str
    ref: monitor_models.SecretKeyRef
    condition: str  # "DatabaseReachable" or "EventBusAvailable"


@dataclasses.dataclass(frozen=True)
class Problem:
    """Why a referenced Secret cannot be used."""

    condition: str
    reason: str
    message: str


def references(view: monitor.View) -> list[Reference]:
    """The Secrets the pods will mount (a per-component Secret replaces the shared one)."""
    assert view.spec is not None
    db = view.spec.database
    refs: list[Reference] = []
    for component, own in ((monitor.Component.COLLECTOR, "collectorCredentialsSecret"),
                           (monitor.Component.EXECUTOR, "executorCredentialsSecret")):
        ref = render.database_secret(view.spec, component)
        field = own if ref is not db.credentials_secret else "credentialsSecret"
        if not any(r.field == f"spec.database.{field}" for r in refs):
            refs.append(Reference(f"spec.database.{field}", ref, "DatabaseReachable"))
    bus = view.spec.event_bus.credentials_secret
    if bus is not None and not view.managed_nats:
        refs.append(Reference("spec.eventBus.credentialsSecret", bus, "EventBusAvailable"))
    return refs


def judge(reference: Reference, namespace: str, keys: set[str] | None) -> Problem | None:
    """The problem with one reference given the keys of its Secret (None: no Secret)."""
    ref = reference.ref
    if keys is None:
        return Problem(reference.condition, REASON_NOT_FOUND,
                       f'Secret "{ref.name}" ({reference.field}) not found in namespace '
                       f'"{namespace}"; the pods that mount it cannot start')
    missing = [k for k in (ref.user_key, ref.password_key) if k not in keys]
    if missing:
        return Problem(reference.condition, REASON_KEY_MISSING,
                       f'Secret "{ref.name}" ({reference.field}) has no key '
                       + ", ".join(f'"{k}"' for k in missing))
    return None


async def check(api: kube.Api, view: monitor.View) -> list[Problem]:
    """Every problem with the referenced Secrets (empty: all there)."""
    problems: list[Problem] = []
    for reference in references(view):
        try:
            secret = await api.get(kube.SECRET, view.namespace, reference.ref.name)
        except kube.ApiError as exc:
            problems.append(Problem(reference.condition, REASON_NOT_READABLE,
                                    f'Secret "{reference.ref.name}" ({reference.field}) '
                                    f"cannot be read by the operator: {exc.message}"))
            continue
        keys = None if secret is None else set(secret.get("data") or {})
        problem = judge(reference, view.namespace, keys)
        if problem is not None:
            problems.append(problem)
    return problems
