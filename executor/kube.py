"""The Kubernetes store: Remediation objects, the monitor's executor-owned status, Events.

Remediations live in the monitor's namespace, named and labelled as docs/design.md#remediation
says; they are not owned by the monitor (the audit trail outlives it). ``create`` relies on the
API server's name uniqueness (409: another replica has it); ``update`` is a compare-and-set on
the state with the object's resourceVersion, retried when only something else changed (an
approval, a label). After every change the monitor's ``status.remediations`` is recomputed from
the objects, never incremented, so replicas converge; the status is written through the models
(``DatabaseMonitorStatus.patch``). The official client is synchronous: every call runs in a
thread so the event loop never blocks, with a request timeout
(``startupmonkey.kubeapi.REQUEST_TIMEOUT``), so a hung API server fails the call
(``kubeapi.Unanswered``) instead of stalling the intake, the tick and a worker thread for ever;
a refusal raises ``startupmonkey.kubeapi.ApiError``, the operator's error type too. Permissions
used are exactly the executor's list in docs/design.md#rbac (Remediations and their status, the
monitor and its status, Events)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import kubernetes.client
import urllib3.exceptions
from kubernetes.client.exceptions import ApiException

from startupmonkey import kubeapi, kubetime, observability
from startupmonkey.executor import records
from startupmonkey.executor.records import remediation_counts  # shared with api.py
from startupmonkey.models import monitor as monitor_models
from startupmonkey.models import remediation
from startupmonkey.models.enums import RemediationState

log = logging.getLogger(__name__)
GROUP, VERSION = monitor_models.GROUP, monitor_models.VERSION
#: What a call to the API server raises when the server refuses or cannot be reached.
API_ERRORS = kubeapi.ERRORS


def _unknown_field(exc: kubeapi.ApiError) -> bool:
    """Whether the API server refused a create for a field its schema does not know (strict
    field validation): 400 or 422 with "unknown field" in its message."""
    return exc.status in (400, 422) and "unknown field" in str(exc.message)


class KubernetesStore:
    """A :class:`records.Store` over Remediation objects of one monitor."""

    vouches_for_annotations = False

    def __init__(self, namespace: str, monitor: str,
                 api_client: kubernetes.client.ApiClient | None = None) -> None:
        self.namespace = namespace
        self.monitor = monitor
        self.client = api_client or kubeapi.load_client()
        self.custom = kubernetes.client.CustomObjectsApi(self.client)
        self.core = kubernetes.client.CoreV1Api(self.client)
        self.unreadable = 0
        self._unreadable_log = observability.RateLimitedLog(log)

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """One call of the official client, in a thread, with a request timeout; a refusal
        raises kubeapi.ApiError, no answer in time kubeapi.Unanswered."""
        timeout = kwargs.setdefault("_request_timeout", kubeapi.REQUEST_TIMEOUT)
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except kubeapi.ApiError:
            raise
        except ApiException as exc:
            raise kubeapi.ApiError.from_exception(exc) from exc
        except kubeapi.Unanswered:
            raise
        except urllib3.exceptions.HTTPError as exc:
            raise kubeapi.Unanswered.of(getattr(fn, "__name__", "a call"), exc,
                                        timeout) from exc

    async def create(self, record: records.Record) -> bool:
        """Create the object with server-side field validation ``Strict``: a CRD older than
        this executor (without ``spec.database``) would otherwise prune the field silently
        and the record would read as the home database's. Refused so, or (an API server
        that ignores the validation) stored without the database it was sent, the record is
        stored ended Failed saying so instead, nothing run (:meth:`_older_crd`)."""
        body = record.body()
        status = body.pop("status")
        body["metadata"].pop("creationTimestamp", None)
        created: dict[str, Any] = {}
        for last in (False, True):
            try:
                created = await self._create(body)
                break
            except kubeapi.ApiError as exc:
                if exc.status == 409:
                    return False
                if last or not _unknown_field(exc) or "database" not in body["spec"]:
                    raise
                # The CRD cannot hold spec.database: store the record without it, ended.
                body["spec"].pop("database")
        if record.spec.database is not None and \
                (created.get("spec") or {}).get("database") != record.spec.database:
            self._older_crd(record)
            status = record.status.dump()
        record.version = created["metadata"]["resourceVersion"]
        record.created = kubetime.parse(created["metadata"]["creationTimestamp"])
        await self._patch_status(record, status)
        await self._after_change(record)
        return True

    async def _create(self, body: dict[str, Any]) -> dict[str, Any]:
        created: dict[str, Any] = await self._call(
            self.custom.create_namespaced_custom_object, GROUP, VERSION, self.namespace,
            remediation.PLURAL, body, field_validation="Strict")
        return created

    @staticmethod
    def _older_crd(record: records.Record) -> None:
        """End ``record`` Failed (nothing ran) because the stored object lost its database."""
        log.error("the Remediation CRD has no spec.database (older than this executor): %s "
                  "of database %r ended Failed; apply the CRDs of this version (crds/)",
                  record.name, record.spec.database)
        record.move(RemediationState.FAILED,
                    f"not acted on: the Remediation CRD in this cluster has no spec.database "
                    f"(older than this executor), so the object could not say that it acts "
                    f"in database {record.spec.database!r}; apply the CRDs of this version "
                    "(crds/) and the problem will be re-detected; nothing ran")

    async def _patch_status(self, record: records.Record, status: dict[str, Any]) -> None:
        patched = await self._call(
            self.custom.patch_namespaced_custom_object_status, GROUP, VERSION, self.namespace,
            remediation.PLURAL, record.name,
            {"metadata": {"resourceVersion": record.version}, "status": status})
        record.version = patched["metadata"]["resourceVersion"]

    async def get(self, name: str) -> records.Record | None:
        try:
            body = await self._call(self.custom.get_namespaced_custom_object, GROUP, VERSION,
                                    self.namespace, remediation.PLURAL, name)
        except kubeapi.ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return self._readable(body)

    async def list(self, *, key: str | None = None,
                   active: bool = False) -> list[records.Record]:
        listing = await self._call(
            self.custom.list_namespaced_custom_object, GROUP, VERSION, self.namespace,
            remediation.PLURAL, label_selector=f"{remediation.LABEL_MONITOR}={self.monitor}")
        found = []
        for item in listing.get("items", []):
            record = self._readable(item)
            if record is None:
                continue
            if key is not None and record.spec.detection_key != key:
                continue
            if active and not record.active:
                continue
            found.append(record)
        return found

    def _readable(self, item: dict[str, Any]) -> records.Record | None:
        """The record of ``item``, or None (counted, logged) when it cannot be read: one
        object edited by hand into nonsense must not stop every intake and tick."""
        try:
            return records.Record.from_body(item)
        except (KeyError, TypeError, ValueError) as exc:
            name = (item.get("metadata") or {}).get("name", "?") if isinstance(item, dict) else "?"
            self.unreadable += 1
            self._unreadable_log.warning(
                "unreadable", "skipping Remediation %s: it cannot be read (%s); fix or delete it",
                name, " ".join(str(exc).split())[:300])
            return None

    async def update(self, record: records.Record, expected: RemediationState) -> None:
        for _ in range(5):
            current = await self.get(record.name)
            if current is None or current.state is not expected:
                raise records.Conflict(f"{record.name} is no longer {expected.value}")
            record.version = current.version
            try:
                await self._patch_status(record, record.status.dump())
            except kubeapi.ApiError as exc:
                if exc.status == 409:
                    continue  # something else changed the object; look again
                raise
            await self._after_change(record)
            return
        raise records.Conflict(f"{record.name} keeps changing under us")

    async def _after_change(self, record: records.Record) -> None:
        await self._call(self.custom.patch_namespaced_custom_object, GROUP, VERSION,
                         self.namespace, remediation.PLURAL, record.name,
                         {"metadata": {"labels": record.labels()}})
        await self._event(record)
        await self.refresh_monitor_status()

    async def _event(self, record: records.Record) -> None:
        now = kubetime.format(kubetime.utcnow())
        failed = record.state in (RemediationState.FAILED, RemediationState.ROLLED_BACK)
        event = {
            "metadata": {"generateName": f"{record.name}.", "namespace": self.namespace},
            "involvedObject": {"apiVersion": f"{GROUP}/{VERSION}", "kind": remediation.KIND,
                               "name": record.name, "namespace": self.namespace},
            "reason": record.state.value, "message": record.status.message[:1024] or
            record.state.value, "type": "Warning" if failed else "Normal",
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
            "source": {"component": "startupmonkey-executor"},
        }
        try:
            await self._call(self.core.create_namespaced_event, self.namespace, event)
        except kubeapi.ApiError as exc:
            log.warning("could not record an Event for %s: %s", record.name, exc.reason)

    async def refresh_monitor_status(self) -> None:
        """Recompute ``status.remediations`` of the monitor from the objects."""
        counts = remediation_counts(await self.list())
        await self.patch_monitor_status(monitor_models.DatabaseMonitorStatus(remediations=counts))

    async def approve(self, name: str, approver: str) -> None:
        """Patch ``spec.approved`` with this store's credentials (the caller's, via the API),
        naming the approver the API established (SelfSubjectReview) in the annotation the
        operator's webhook writes for ``kubectl patch``; when the webhook runs, it sets the
        same name from the request itself."""
        await self._call(self.custom.patch_namespaced_custom_object, GROUP, VERSION,
                         self.namespace, remediation.PLURAL, name,
                         {"metadata": {"annotations": {
                             remediation.ANNOTATION_APPROVED_BY: approver[:253]}},
                          "spec": {"approved": True}})

    async def request_rollback(self, name: str, requester: str, reason: str) -> None:
        """Annotate the Remediation; the executor reverts it on its next tick."""
        await self._call(self.custom.patch_namespaced_custom_object, GROUP, VERSION,
                         self.namespace, remediation.PLURAL, name,
                         {"metadata": {"annotations": {
                             remediation.ANNOTATION_ROLLBACK: f"{requester}: {reason}"[:1024]}}})

    async def request_reject(self, name: str, requester: str, reason: str) -> None:
        """Annotate the Remediation; the executor rejects it on its next tick (the caller
        needs ``patch`` on remediations, never on their status)."""
        await self._call(self.custom.patch_namespaced_custom_object, GROUP, VERSION,
                         self.namespace, remediation.PLURAL, name,
                         {"metadata": {"annotations": {
                             records.ANNOTATION_REJECT: f"{requester}: {reason}"[:1024]}}})

    async def who_am_i(self) -> str | None:
        """The user this store's credentials authenticate as (SelfSubjectReview, which any
        authenticated user may make), or None when the API server cannot say."""
        review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
        try:
            answer = await self._call(
                kubernetes.client.AuthenticationV1Api(self.client).create_self_subject_review,
                review)
        except API_ERRORS as exc:
            log.info("could not tell who is calling: %s", exc)
            return None
        user = answer.status.user_info if answer.status else None
        return user.username if user is not None and user.username else None

    async def report_database(self, status: dict[str, Any],
                              databases: Sequence[dict[str, Any]] | None = None) -> None:
        """``status.database`` of the monitor (``status`` is a DatabaseStatus's wire form),
        and ``status.databases`` (and ``databasesReachable``, the home database counted as
        ``status`` says) when given; given empty, both are deleted (no other database is
        acted in any more: an old list must not stay). ``status.remediations`` is recomputed
        too: the counts written after a change can be a moment behind (another replica's
        change in between, a list served before the change was visible), and without this
        they would stay wrong until the next change."""
        counts = remediation_counts(await self.list())
        report = monitor_models.DatabaseMonitorStatus(
            database=monitor_models.DatabaseStatus.model_validate(status), remediations=counts)
        if databases:
            report.databases = [monitor_models.DatabaseReach.model_validate(entry)
                                for entry in databases]
            report.databases_reachable = monitor_models.databases_reachable(
                bool(status.get("reachable")), report.databases)
        elif databases is not None:  # no other database acted in (any more): both deleted
            await self._merge_status({**report.patch(), "databases": None,
                                      "databasesReachable": None})
            return
        await self.patch_monitor_status(report)

    async def patch_monitor_status(self, status: monitor_models.DatabaseMonitorStatus) -> None:
        """Merge-patch the keys set on ``status`` (the executor's own) into the monitor's
        status (missing monitor: ignored)."""
        await self._merge_status(status.patch())

    async def _merge_status(self, body: dict[str, Any]) -> None:
        """Merge-patch ``body`` into the monitor's status (a null value deletes its key);
        a missing monitor is ignored."""
        try:
            await self._call(self.custom.patch_namespaced_custom_object_status, GROUP, VERSION,
                             self.namespace, monitor_models.PLURAL, self.monitor,
                             {"status": body})
        except kubeapi.ApiError as exc:
            if exc.status != 404:
                raise

