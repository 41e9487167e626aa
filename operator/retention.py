"""Remediation retention: the audit trail outlives its monitor, but not forever.

Remediations are not owned by their monitor
(docs/design.md#remediation), so nothing else ever removes them. A
background sweep (every ``retention.interval``) lists them in the watched namespaces, groups
them by ``spec.monitor`` (whether or not that monitor still exists) and deletes finished ones
(terminal states only: open work is never pruned) that are older than ``retention.maxAge``
since their last state change, or beyond the newest ``retention.count`` of their monitor. A
deletion carries the listed resourceVersion as a precondition, so a Remediation that changed
meanwhile is left for the next sweep.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime
import logging
from collections.abc import Callable, Iterable
from typing import Any

from startupmonkey import kubetime
from startupmonkey.models import durations, enums
from startupmonkey.operator import config as config_mod
from startupmonkey.operator import kube

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Item:
    """What pruning needs of one Remediation."""

    namespace: str
    name: str
    monitor: str
    finished: bool
    last_change: datetime.datetime
    resource_version: str


def item(body: dict[str, Any]) -> Item:
    """Parse a Remediation body (as listed)."""
    meta, st = body["metadata"], body.get("status") or {}
    try:
        state = enums.RemediationState(st.get("state", enums.RemediationState.PROPOSED.value))
    except ValueError:
        state = enums.RemediationState.PROPOSED  # unknown: treat as open, never prune
    history = st.get("history") or []
    last = kubetime.parse_or_none(history[-1].get("time")) if history else None
    created = kubetime.parse_or_none(meta.get("creationTimestamp")) or kubetime.utcnow()
    return Item(namespace=meta["namespace"], name=meta["name"],
                monitor=str((body.get("spec") or {}).get("monitor", "")),
                finished=state in enums.TERMINAL_STATES, last_change=last or created,
                resource_version=str(meta.get("resourceVersion", "")))


def select(items: Iterable[Item], now: datetime.datetime, count: int,
           max_age: float) -> list[Item]:
    """The Remediations to delete: finished ones too old, or beyond ``count`` per monitor."""
    groups: dict[tuple[str, str], list[Item]] = collections.defaultdict(list)
    for it in items:
        if it.finished:
            groups[(it.namespace, it.monitor)].append(it)
    victims: list[Item] = []
    for group in groups.values():
        group.sort(key=lambda it: it.last_change, reverse=True)
        for rank, it in enumerate(group):
            if rank >= count or (now - it.last_change).total_seconds() > max_age:
                victims.append(it)
    return victims


async def sweep(api: kube.Api, namespaces: list[str], retention: config_mod.Retention,
                now: datetime.datetime) -> int:
    """One pruning pass; returns how many Remediations were deleted."""
    bodies: list[dict[str, Any]] = []
    scopes: list[str | None] = list(namespaces) or [None]
    for namespace in scopes:
        bodies += await api.list(kube.REMEDIATION, namespace)
    max_age = durations.parse_duration(retention.max_age)
    deleted = 0
    for victim in select(map(item, bodies), now, retention.count, max_age):
        if await api.delete(kube.REMEDIATION, victim.namespace, victim.name,
                            victim.resource_version):
            deleted += 1
            log.info("pruned Remediation %s/%s (monitor %s, last change %s)",
                     victim.namespace, victim.name, victim.monitor, victim.last_change)
    return deleted


async def run(api: kube.Api, namespaces: list[str], retention: config_mod.Retention,
              pruned: Callable[[int], None] | None = None) -> None:
    """Sweep forever (until cancelled); a failed sweep is logged and retried next time.
    ``pruned`` is told how many each sweep deleted (the metrics)."""
    interval = durations.parse_duration(retention.interval)
    while True:
        try:
            deleted = await sweep(api, namespaces, retention, kubetime.utcnow())
            if pruned is not None:
                pruned(deleted)
        except (kube.ApiError, OSError) as exc:
            log.warning("Remediation retention sweep failed: %s", exc)
        except Exception:  # a bug must not end retention for the operator's lifetime
            log.exception("Remediation retention sweep failed")
        await asyncio.sleep(interval)
