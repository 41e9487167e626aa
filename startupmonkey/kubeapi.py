"""The Kubernetes client layer the operator and the executor share: how to reach the API
server and the one error type a refused request raises.

:func:`load_client` finds the API server as every component does (in a pod: its ServiceAccount;
elsewhere: ``$KUBECONFIG`` or ``~/.kube/config``). :class:`ApiError` is what a request the API
server refused raises, whichever way it was made: the operator's JSON requests raise it
directly, the executor's calls through the official client translate the client's
``ApiException`` into it (:meth:`ApiError.from_exception`). :data:`ERRORS` adds a server that
gave no answer. (The CLI only reads a bearer token from kubeconfig for the executor's gRPC API;
it never calls the API server, so it does not load this client.)
"""

from __future__ import annotations

import json

import kubernetes.client
import kubernetes.config
import urllib3.exceptions
from kubernetes.client.exceptions import ApiException


def load_client() -> kubernetes.client.ApiClient:
    """In a pod: the ServiceAccount; elsewhere: $KUBECONFIG or ~/.kube/config."""
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    return kubernetes.client.ApiClient()


class ApiError(ApiException):
    """A request the API server refused: ``status`` is the HTTP code, ``message`` the
    server's explanation (its Status ``message``), ``reason`` the HTTP reason phrase and
    ``body`` the answer as sent. It is an ``ApiException``, so code written against the
    official client catches it too."""

    def __init__(self, status: int, message: str, reason: str | None = None,
                 body: str | None = None) -> None:
        super().__init__(status=status, reason=reason, body=body)
        self.status: int = status
        self.message = message

    def __str__(self) -> str:
        return f"{self.status}: {self.message}"

    @classmethod
    def from_exception(cls, exc: ApiException) -> ApiError:
        """The same refusal raised by the official client."""
        error = cls(int(exc.status or 0), _status_message(exc.body) or str(exc.reason or ""),
                    reason=exc.reason, body=exc.body)
        error.headers = exc.headers
        return error


def _status_message(body: str | None) -> str:
    """The ``message`` of a ``metav1.Status`` answer, or "" when the body is something else."""
    try:
        found = json.loads(body or "{}")
    except ValueError:
        return ""
    message = found.get("message") if isinstance(found, dict) else None
    return str(message) if message else ""


#: What a call to the API server raises when the server refuses or cannot be reached.
ERRORS: tuple[type[Exception], ...] = (ApiError, urllib3.exceptions.HTTPError)
