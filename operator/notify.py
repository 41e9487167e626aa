"""The operator's notifications: it already watches Remediations, so it sends them
(docs/notifications.md; the choice is in docs/decisions.md).

Every Remediation event (kopf ``on.event``, the initial listing after a restart included) is
judged by :func:`startupmonkey.notify.due` against its monitor's ``spec.notifications`` and
what the Remediation's annotation ``startupmonkey.dev/notified`` records as delivered; what is
due is queued on the target's own :class:`startupmonkey.notify.Worker` (one task per target:
a slow or dead webhook never delays another, nor the reconciles). After a 2xx the worker
records ``<state>@<target>`` in that annotation (a merge patch of metadata only: the executor
writes ``status`` with compare-and-set and retries on the changed resourceVersion; the
approver policy and webhook look at other annotations only). So a restart of the operator
neither loses a delivery (not recorded: sent again) nor repeats a recorded one. The URL and
signing key are read from the target's Secret at every attempt and never logged.

A target's last outcome feeds the monitor's ``NotificationsDelivered`` condition
(``operator/status.py``) and the metrics (``operator/metrics.py``); a change of it triggers a
status reconcile of the monitor.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from startupmonkey import notify
from startupmonkey.models import monitor as models
from startupmonkey.operator import credentials, kube

log = logging.getLogger(__name__)
Key = tuple[str, str]
#: (namespace, monitor, target name)
TargetKey = tuple[str, str, str]
Counter = Callable[[str, str, str, str], None]


def _value(secret: dict[str, Any], key: str) -> bytes | None:
    raw = (secret.get("data") or {}).get(key)
    if not isinstance(raw, str):
        return None
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        return None


class Notifier:
    """The workers of every target of every watched monitor, in one operator process."""

    def __init__(self, api: kube.Api, retry: notify.Retry | None = None,
                 counted: Counter | None = None) -> None:
        self.api = api
        self.retry = retry or notify.Retry()
        self.counted = counted
        self.targets: dict[TargetKey, models.NotificationTarget] = {}
        self.workers: dict[TargetKey, notify.Worker] = {}
        #: One writer of a Remediation's annotation at a time (two targets may succeed at once);
        #: a lock is dropped only when no writer holds or awaits it (``_users`` counts them).
        self.locks: dict[Key, asyncio.Lock] = {}
        self._users: collections.Counter[Key] = collections.Counter()
        #: Told when a target's health changes (the operator reconciles the monitor's status).
        self.changed: Callable[[Key], Awaitable[Any]] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def health(self, namespace: str, monitor: str,
               names: list[str]) -> dict[str, notify.Health]:
        """The last outcome of each named target (healthy when nothing was sent yet)."""
        out: dict[str, notify.Health] = {}
        for name in names:
            worker = self.workers.get((namespace, monitor, name))
            out[name] = worker.health if worker is not None else notify.Health()
        return out

    async def remediation_changed(self, body: dict[str, Any]) -> int:
        """Queue what is due about one Remediation; returns how many jobs were queued."""
        meta, spec = body.get("metadata") or {}, body.get("spec") or {}
        namespace, monitor = str(meta.get("namespace", "")), str(spec.get("monitor", ""))
        if not namespace or not monitor:
            return 0
        found = await self.api.get(kube.MONITOR, namespace, monitor)
        if found is None:
            return 0
        try:
            targets = models.DatabaseMonitorSpec.model_validate(found.get("spec") or {}) \
                .notifications
        except ValueError:
            return 0  # the monitor's own condition says why its spec does not parse
        if not targets:
            return 0
        delivered = notify.parse_notified(
            (meta.get("annotations") or {}).get(notify.ANNOTATION_NOTIFIED))
        queued = 0
        for target, state in notify.due(targets, body, delivered):
            msg = notify.message(body, state, notify.Place())
            job = notify.Job(namespace, str(meta.get("name", "")), state,
                             notify.build(msg, target.format), msg.delivery_id)
            queued += self._worker(namespace, monitor, target).submit(job)
        return queued

    def forget(self, body: dict[str, Any]) -> None:
        """A Remediation was deleted: drop what the workers keep of it."""
        meta = body.get("metadata") or {}
        prefix = f"{meta.get('namespace', '')}/{meta.get('name', '')}/"
        for worker in self.workers.values():
            worker.forget(prefix)

    def _worker(self, namespace: str, monitor: str,
                target: models.NotificationTarget) -> notify.Worker:
        key = (namespace, monitor, target.name)
        self.targets[key] = target  # the latest spec: the resolver reads its Secret
        worker = self.workers.get(key)
        if worker is None:
            def listener(outcome: str, job: notify.Job, health: notify.Health) -> None:
                self._told(key, outcome, job, health)

            async def refresh(job: notify.Job) -> notify.Job | None:
                return await self._refresh(key, job)

            worker = notify.Worker(target.name, lambda: self._resolve(key), self._record,
                                   listener, self.retry, refresh)
            self.workers[key] = worker
        return worker

    async def _refresh(self, key: TargetKey, job: notify.Job) -> notify.Job | None:
        """Before each attempt: the job as the Remediation warrants it now (a GET within the
        attempt timeout; when that fails, the job as it was built)."""
        try:
            async with asyncio.timeout(self.retry.timeout):
                fresh = await self.api.get(kube.REMEDIATION, job.namespace, job.remediation)
        except (kube.ApiError, OSError, TimeoutError) as exc:
            log.debug("re-reading %s/%s before a notification: %s", job.namespace,
                      job.remediation, exc)
            return job
        target = self.targets[key]
        return notify.rejudge(fresh, job, target.name, target.format, notify.Place())

    async def _resolve(self, key: TargetKey) -> notify.Endpoint:
        namespace, _, name = key
        ref = self.targets[key].secret_ref
        where = f'Secret "{ref.name}" (spec.notifications[{name}].secretRef)'
        try:
            secret = await self.api.get(kube.SECRET, namespace, ref.name)
        except (kube.ApiError, OSError) as exc:
            raise notify.Unresolved(credentials.REASON_NOT_READABLE,
                                    f"{where} cannot be read by the operator: {exc}") from exc
        if secret is None:
            raise notify.Unresolved(credentials.REASON_NOT_FOUND,
                                    f'{where} not found in namespace "{namespace}"')
        url = _value(secret, ref.url_key)
        if url is None:
            raise notify.Unresolved(credentials.REASON_KEY_MISSING, f'{where} has no key '
                                    f'"{ref.url_key}"')
        key_bytes = None
        if ref.hmac_key is not None:
            key_bytes = _value(secret, ref.hmac_key)
            if key_bytes is None:
                raise notify.Unresolved(credentials.REASON_KEY_MISSING, f'{where} has no key '
                                        f'"{ref.hmac_key}"')
            key_bytes = notify.signing_key(key_bytes)
            if not key_bytes:  # never sent unsigned to a receiver that checks signatures
                raise notify.Unresolved(credentials.REASON_KEY_MISSING, f'{where} key '
                                        f'"{ref.hmac_key}" is empty')
        return notify.Endpoint(url.decode(errors="replace").strip(), key_bytes)

    async def _record(self, target: str, job: notify.Job) -> None:
        """Add ``<state>@<target>`` to the Remediation's annotation (a fresh read under the
        lock, so two targets' records never overwrite each other)."""
        key = (job.namespace, job.remediation)
        lock = self.locks.setdefault(key, asyncio.Lock())
        self._users[key] += 1
        try:
            async with lock:
                current = await self.api.get(kube.REMEDIATION, job.namespace, job.remediation)
                if current is None:
                    return  # deleted meanwhile (retention): nothing left to record on
                annotations = (current.get("metadata") or {}).get("annotations") or {}
                pairs = notify.parse_notified(annotations.get(notify.ANNOTATION_NOTIFIED))
                pairs.add(notify.pair(job.state, target))
                await self.api.merge_patch(
                    kube.REMEDIATION, job.namespace, job.remediation,
                    {"metadata": {"annotations": {
                        notify.ANNOTATION_NOTIFIED: notify.format_notified(pairs)}}})
        finally:
            self._users[key] -= 1
            if self._users[key] <= 0:  # nobody holds or awaits it: a later writer makes anew
                del self._users[key]
                self.locks.pop(key, None)

    def _told(self, key: TargetKey, outcome: str, job: notify.Job,
              health: notify.Health) -> None:
        namespace, monitor, name = key
        if self.counted is not None:
            self.counted(namespace, monitor, name, outcome)
        if self.changed is not None:
            task = asyncio.create_task(self._reconcile((namespace, monitor)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _reconcile(self, key: Key) -> None:
        assert self.changed is not None
        try:
            await self.changed(key)
        except Exception as exc:  # the status timer will try again
            log.debug("status after a notification of %s/%s: %s", *key, exc)

    async def stop(self) -> None:
        """Stop every worker (what was not recorded is sent after the next start)."""
        for worker in self.workers.values():
            await worker.stop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
