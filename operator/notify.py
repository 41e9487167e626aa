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

Only news is sent: the operator records when it first sees each target (the monitor's
annotation ``startupmonkey.dev/notify-from``, written on the status reconcile of the spec that
adds it, or before judging a Remediation if that comes first) and a state a Remediation entered
before that time (its ``status.history``) is never sent, so enabling notifications, adding or
renaming a target does not replay the retained Remediations. The annotation survives a restart;
whoever may edit the monitor may edit it, as they may edit ``spec.notifications`` itself (an
entry that does not parse is recorded anew). A removed target's entry, worker and metric series
are dropped, and all of a deleted monitor's (:meth:`Notifier.forget_monitor`).

A target's last outcome feeds the monitor's ``NotificationsDelivered`` condition
(``operator/status.py``) and the metrics (``operator/metrics.py``); a change of it triggers a
status reconcile of the monitor.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import datetime
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from startupmonkey import kubetime, notify
from startupmonkey.models import monitor as models
from startupmonkey.operator import credentials, kube, monitor

log = logging.getLogger(__name__)
Key = tuple[str, str]
#: (namespace, monitor, target name)
TargetKey = tuple[str, str, str]
Counter = Callable[[str, str, str, str], None]
#: ``forgotten(namespace, monitor, target)``: a target is gone (its metric series go too).
Forgotten = Callable[[str, str, str], None]


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
                 counted: Counter | None = None, forgotten: Forgotten | None = None) -> None:
        self.api = api
        self.retry = retry or notify.Retry()
        self.counted = counted
        self.forgotten = forgotten
        #: One writer of a monitor's notify-from annotation at a time.
        self.monitor_locks: dict[Key, asyncio.Lock] = {}
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

    async def seen(self, view: monitor.View) -> dict[str, notify.Health]:
        """A status reconcile of the monitor (``reconcile.observe``): record the notify-from
        time of a target seen for the first time, forget removed targets; returns the health
        of each target (``NotificationsDelivered``)."""
        targets = view.spec.notifications if view.spec is not None else []
        names = [t.name for t in targets]
        if view.spec is not None:
            self._drop_targets(view.namespace, view.name, keep=set(names))
        if view.spec is not None and not view.deleting:
            try:
                async with self._monitor_lock(view.key):
                    await self._notify_from(view.body, targets, fresh=False)
            except (kube.ApiError, OSError) as exc:  # judging a Remediation records it too
                log.warning("could not record when notifications of %s/%s start: %s",
                            *view.key, exc)
        return self.health(view.namespace, view.name, names)

    async def remediation_changed(self, body: dict[str, Any]) -> int:
        """Queue what is due about one Remediation; returns how many jobs were queued."""
        meta, spec = body.get("metadata") or {}, body.get("spec") or {}
        namespace, monitor_name = str(meta.get("namespace", "")), str(spec.get("monitor", ""))
        if not namespace or not monitor_name:
            return 0
        async with self._monitor_lock((namespace, monitor_name)):
            found = await self.api.get(kube.MONITOR, namespace, monitor_name)
            if found is None:
                return 0
            try:
                targets = models.DatabaseMonitorSpec.model_validate(found.get("spec") or {}) \
                    .notifications
            except ValueError:
                return 0  # the monitor's own condition says why its spec does not parse
            if not targets:
                return 0
            since = await self._notify_from(found, targets, fresh=True)
        delivered = notify.parse_notified(
            (meta.get("annotations") or {}).get(notify.ANNOTATION_NOTIFIED))
        queued = 0
        for target, state in notify.due(targets, body, delivered, since):
            msg = notify.message(body, state, notify.Place())
            job = notify.Job(namespace, str(meta.get("name", "")), state,
                             notify.build(msg, target.format), msg.delivery_id)
            queued += self._worker(namespace, monitor_name, target).submit(job)
        return queued

    def _monitor_lock(self, key: Key) -> asyncio.Lock:
        return self.monitor_locks.setdefault(key, asyncio.Lock())

    async def _notify_from(self, body: dict[str, Any],
                           targets: list[models.NotificationTarget],
                           fresh: bool) -> dict[str, datetime.datetime]:
        """Each target's notify-from time (:func:`notify.notify_from`), the monitor's
        annotation written when it changes (a target new to it: now). Called under the
        monitor's lock; ``body`` is re-read before a write unless ``fresh``."""
        meta = body.get("metadata") or {}
        namespace, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
        recorded = notify.parse_since((meta.get("annotations") or {}).get(
            notify.ANNOTATION_NOTIFY_FROM))
        since = notify.notify_from(targets, recorded, kubetime.utcnow())
        if since == recorded:
            return since
        if not fresh:  # the copy read for this reconcile may predate another writer's record
            current = await self.api.get(kube.MONITOR, namespace, name)
            if current is None:
                return since
            return await self._notify_from(current, targets, fresh=True)
        value = notify.format_since(since) if since else None
        await self.api.merge_patch(kube.MONITOR, namespace, name, {"metadata": {"annotations": {
            notify.ANNOTATION_NOTIFY_FROM: value}}})
        new = {k: v for k, v in since.items() if recorded.get(k) != v}
        if new:
            log.info("notifications of %s/%s start now: %s", namespace, name,
                     notify.format_since(new))
        return since

    def forget_monitor(self, key: Key) -> None:
        """A monitor is gone: stop its targets' workers, drop their metric series."""
        self._drop_targets(*key, keep=set())
        lock = self.monitor_locks.get(key)
        if lock is not None and not lock.locked():
            del self.monitor_locks[key]

    def _drop_targets(self, namespace: str, monitor_name: str, keep: set[str]) -> None:
        for key in [k for k in self.workers if k[:2] == (namespace, monitor_name)
                    and k[2] not in keep]:
            worker = self.workers.pop(key)
            self.targets.pop(key, None)
            if worker.task is not None and not worker.task.done():
                worker.task.cancel()
                self._tasks.add(worker.task)
                worker.task.add_done_callback(self._tasks.discard)
            if self.forgotten is not None:
                self.forgotten(*key)

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
