"""The dashboard's Kubernetes API requests: the CLI's ``--kube`` mode, reused.

Every request is made with the user's own kubeconfig, loaded per request by
:func:`startupmonkey.client._kube_client` exactly as ``startupmonkey status --kube`` loads it
(``$KUBECONFIG``, tokens, token files, client certificates, exec plugins; ``https://`` only), so
the API server authenticates the user and RBAC decides. Approve, reject and roll back are the
CLI's own code path (:func:`startupmonkey.client._kube`): the same SelfSubjectReview, the same
checks and the same patch. Nothing is cached: the dashboard holds no state of its own.

A refusal is a :class:`Failure` carrying the HTTP status to answer with and the reason in one
line (the API server's own for a 403), never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

import kubernetes.client
import urllib3.exceptions
from kubernetes.client.exceptions import ApiException

from startupmonkey import client, kubeapi
from startupmonkey.models import monitor, remediation

T = TypeVar("T")
#: The commands the pages' forms may send, as the CLI names them.
ACTIONS = ("approve", "reject", "rollback")


class Failure(Exception):
    """A request that did nothing: ``status`` to answer with and ``reason`` in one line."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def guarded(call: Callable[[], T]) -> T:
    """``call()``, with every way the API request can fail turned into a :class:`Failure`."""
    try:
        return call()
    except client.Refused as exc:
        raise Failure(409, str(exc)) from exc
    except ApiException as exc:
        raise Failure(int(exc.status or 502),
                      f"Kubernetes API: {client._api_reason(exc)}") from exc
    except urllib3.exceptions.HTTPError as exc:
        detail = " ".join(str(getattr(exc, "reason", None) or exc).split())[:300]
        raise Failure(502, f"the Kubernetes API server did not answer: {detail}") from exc


@dataclasses.dataclass(frozen=True)
class Listing:
    """Objects as the API server sent them, and a note when the scope was narrowed."""

    items: list[dict[str, Any]]
    note: str = ""


def _items(answer: object) -> list[dict[str, Any]]:
    items = client._object(answer).get("items") or []
    return [item for item in items if isinstance(item, dict)]


def list_objects(plural: str, namespace: str | None) -> Listing:
    """Every ``plural`` object in ``namespace``; with None, in every namespace the user may
    list, else (403) in the kubeconfig context's namespace, saying so."""
    api, default_namespace = client._kube_client(argparse.Namespace(namespace=namespace))
    custom = kubernetes.client.CustomObjectsApi(api)
    timeout = kubeapi.REQUEST_TIMEOUT
    group, version = monitor.GROUP, monitor.VERSION
    try:
        if namespace:
            return Listing(_items(custom.list_namespaced_custom_object(
                group, version, namespace, plural, _request_timeout=timeout)))
        try:
            return Listing(_items(custom.list_cluster_custom_object(
                group, version, plural, _request_timeout=timeout)))
        except ApiException as exc:
            if exc.status != 403:
                raise
            note = (f"You may not list {plural} in every namespace "
                    f"({client._api_reason(exc)}); showing namespace {default_namespace}.")
        return Listing(_items(custom.list_namespaced_custom_object(
            group, version, default_namespace, plural, _request_timeout=timeout)), note)
    finally:
        api.close()


def get_remediation(namespace: str, name: str) -> dict[str, Any]:
    """One Remediation as the API server sent it."""
    api, _ = client._kube_client(argparse.Namespace(namespace=namespace))
    try:
        return client._object(kubernetes.client.CustomObjectsApi(api).get_namespaced_custom_object(
            monitor.GROUP, monitor.VERSION, namespace, remediation.PLURAL, name,
            _request_timeout=kubeapi.REQUEST_TIMEOUT))
    finally:
        api.close()


def act(command: str, namespace: str, name: str, sql_hash: str | None, reason: str) -> None:
    """``startupmonkey <command> <name> --kube -n <namespace>``, as the CLI runs it."""
    if command not in ACTIONS:
        raise client.Refused(f"unknown action {command!r}")
    client._kube(argparse.Namespace(command=command, remediation=name, namespace=namespace,
                                    sql_hash=sql_hash, reason=reason))
