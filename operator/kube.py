"""The operator's Kubernetes calls: server-side apply, get, list, patch and delete as dicts.

kopf watches and patches the DatabaseMonitor itself; everything else (children, status, the
Secret checks, Remediation pruning) goes through :class:`Api`, a thin layer over the official
client's REST transport that speaks plain JSON dicts (no generated model classes, so no field
is lost in translation); the client is loaded, and refusals raised, as the executor's are
(``startupmonkey.kubeapi``). The official client is synchronous: every request runs in a thread so
the event loop never blocks
(docs/design.md#conventions, 8). Children are written with server-side apply under
one field manager, so a re-apply is idempotent, removes what we stopped declaring and takes
back fields someone edited by hand.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import dataclasses
import functools
import json
from collections.abc import Callable
from typing import Any

import kubernetes.client

# The loader and the error type are shared with the executor; named here for the operator.
from startupmonkey.kubeapi import ApiError as ApiError
from startupmonkey.kubeapi import load_client as load_client

FIELD_MANAGER = "startupmonkey-operator"
REQUEST_TIMEOUT = 30.0
#: Requests in flight at once (threads and pooled connections of :class:`Api`). asyncio's
#: default pool has ``cores + 4`` threads (6 on two cores) and the client ``cores x 5``
#: connections: with hundreds of monitors reconciling, requests queued there, not at the API
#: server (issue 19, item 5).
CONCURRENCY = 16


@dataclasses.dataclass(frozen=True)
class Kind:
    """A resource type: ``apiVersion``, kind and plural."""

    api_version: str
    kind: str
    plural: str

    def path(self, namespace: str | None, name: str | None = None,
             subresource: str | None = None) -> str:
        """The REST path of a collection or of one object."""
        base = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        where = f"/namespaces/{namespace}" if namespace else ""
        tail = f"/{name}" if name else ""
        sub = f"/{subresource}" if subresource else ""
        return f"{base}{where}/{self.plural}{tail}{sub}"


CONFIGMAP = Kind("v1", "ConfigMap", "configmaps")
SECRET = Kind("v1", "Secret", "secrets")
SERVICE = Kind("v1", "Service", "services")
SERVICEACCOUNT = Kind("v1", "ServiceAccount", "serviceaccounts")
DEPLOYMENT = Kind("apps/v1", "Deployment", "deployments")
NETWORKPOLICY = Kind("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies")
ROLE = Kind("rbac.authorization.k8s.io/v1", "Role", "roles")
ROLEBINDING = Kind("rbac.authorization.k8s.io/v1", "RoleBinding", "rolebindings")
MONITOR = Kind("startupmonkey.dev/v1alpha1", "DatabaseMonitor", "databasemonitors")
REMEDIATION = Kind("startupmonkey.dev/v1alpha1", "Remediation", "remediations")
KINDS = {k.kind: k for k in (CONFIGMAP, SECRET, SERVICE, SERVICEACCOUNT, DEPLOYMENT,
                             NETWORKPOLICY, ROLE, ROLEBINDING, MONITOR, REMEDIATION)}


#: Requests made in the current task (and the tasks it starts), when a caller counts them:
#: :func:`counting` sets a fresh one-element list, :meth:`Api.request` adds to it. Lets a
#: reconcile report its own API cost without a label per monitor (``operator/metrics.py``).
_COUNTED: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar(
    "startupmonkey_operator_requests", default=None)


def counting() -> tuple[list[int], contextvars.Token[list[int] | None]]:
    """Start counting the requests of this task: returns the count (read ``[0]``) and the
    token for :func:`stop_counting`."""
    box = [0]
    return box, _COUNTED.set(box)


def stop_counting(token: contextvars.Token[list[int] | None]) -> None:
    """Stop counting (restores the enclosing count, if any)."""
    _COUNTED.reset(token)


#: ``listener(method, status or None, detail)``: see :attr:`Api.listener`.
Listener = Callable[[str, int | None, str], None]


class Api:
    """Async JSON requests against the API server (each in a worker thread)."""

    def __init__(self, client: kubernetes.client.ApiClient,
                 listener: Listener | None = None) -> None:
        self.client = client
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=CONCURRENCY, thread_name_prefix="kube-api")
        pool_manager = getattr(getattr(client, "rest_client", None), "pool_manager", None)
        if pool_manager is not None:  # as many kept-alive connections as threads
            kw = pool_manager.connection_pool_kw
            kw["maxsize"] = max(int(kw.get("maxsize") or 1), CONCURRENCY)
        #: Told of every request's outcome (metrics and readiness): method, HTTP status or
        #: None when no answer came, and a short detail.
        self.listener = listener

    def close(self) -> None:
        """Release the connection pool and the threads."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self.client is not None:
            self.client.close()

    def _request(self, method: str, path: str, body: Any = None,
                 query: list[tuple[str, str]] | None = None,
                 content_type: str = "application/json") -> tuple[int, Any]:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        method, url, headers, body, _ = self.client.param_serialize(
            method, path, query_params=query or None, header_params=headers, body=body,
            auth_settings=["BearerToken"])
        response = self.client.call_api(method, url, header_params=headers, body=body,
                                        _request_timeout=REQUEST_TIMEOUT)
        response.read()
        data = json.loads(response.data) if response.data else None
        return response.status, data

    async def request(self, method: str, path: str, body: Any = None,
                      query: list[tuple[str, str]] | None = None,
                      content_type: str = "application/json",
                      missing_ok: bool = False) -> Any:
        """One request; returns the decoded body, None for a tolerated 404, else raises."""
        box = _COUNTED.get()
        if box is not None:
            box[0] += 1
        try:
            status, data = await asyncio.get_running_loop().run_in_executor(
                self._pool, functools.partial(self._request, method, path, body, query,
                                              content_type))
        except Exception as exc:  # no answer (connection refused, timeout, TLS, ...)
            if self.listener is not None:
                self.listener(method, None, f"{type(exc).__name__}: {exc}"[:300])
            raise
        message = ""
        if status >= 400:
            message = data.get("message", "") if isinstance(data, dict) else str(data)
        if self.listener is not None:
            self.listener(method, status, message)
        if status == 404 and missing_ok:
            return None
        if status >= 400:
            raise ApiError(status, message)
        return data

    async def get(self, kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        found: dict[str, Any] | None = await self.request(
            "GET", kind.path(namespace, name), missing_ok=True)
        return found

    async def list(self, kind: Kind, namespace: str | None,
                   label_selector: str | None = None) -> list[dict[str, Any]]:
        """Every object of a kind in a namespace (None: all namespaces)."""
        query = [("labelSelector", label_selector)] if label_selector else None
        listing = await self.request("GET", kind.path(namespace), query=query)
        items: list[dict[str, Any]] = listing.get("items", [])
        return items

    async def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply (create or converge) as our field manager, taking conflicts."""
        kind = KINDS[obj["kind"]]
        meta = obj["metadata"]
        applied: dict[str, Any] = await self.request(
            "PATCH", kind.path(meta["namespace"], meta["name"]), obj,
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            content_type="application/apply-patch+yaml")
        return applied

    async def create(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        """Create; None when it exists already (409)."""
        kind = KINDS[obj["kind"]]
        try:
            created: dict[str, Any] = await self.request(
                "POST", kind.path(obj["metadata"]["namespace"]), obj,
                query=[("fieldManager", FIELD_MANAGER)])
        except ApiError as exc:
            if exc.status == 409:
                return None
            raise
        return created

    async def merge_patch(self, kind: Kind, namespace: str, name: str, patch: dict[str, Any],
                          subresource: str | None = None) -> dict[str, Any] | None:
        """JSON merge patch; None when the object is gone."""
        patched: dict[str, Any] | None = await self.request(
            "PATCH", kind.path(namespace, name, subresource), patch,
            query=[("fieldManager", FIELD_MANAGER)],
            content_type="application/merge-patch+json", missing_ok=True)
        return patched

    async def delete(self, kind: Kind, namespace: str, name: str,
                     resource_version: str | None = None) -> bool:
        """Delete (background propagation); False when already gone or changed meanwhile."""
        body: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1",
                                "propagationPolicy": "Background"}
        if resource_version:
            body["preconditions"] = {"resourceVersion": resource_version}
        try:
            gone = await self.request("DELETE", kind.path(namespace, name), body,
                                      missing_ok=True)
        except ApiError as exc:
            if exc.status == 409:
                return False
            raise
        return gone is not None
