"""The Kubernetes client layer the operator and the executor share: how to reach the API
server and the one error type a refused request raises.

:func:`load_client` finds the API server as every component does (in a pod: its ServiceAccount;
elsewhere: ``$KUBECONFIG`` or ``~/.kube/config``). :class:`ApiError` is what a request the API
server refused raises, whichever way it was made: the operator's JSON requests raise it
directly, the executor's calls through the official client translate the client's
``ApiException`` into it (:meth:`ApiError.from_exception`). :data:`ERRORS` adds a server that
gave no answer (:class:`Unanswered`: every request has a timeout, :data:`REQUEST_TIMEOUT`). (The
CLI's cluster mode, ``--kube``, talks to the API server with the user's own kubeconfig through
the official client's loader, so no user token ever reaches the executor; it does not load
this module.)"""

from __future__ import annotations

import json

import kubernetes.client
import kubernetes.config
import urllib3.exceptions
from kubernetes.client.exceptions import ApiException

#: Seconds a request to the API server may take, (connect, read): a stopped or hung server
#: fails the call after this instead of stalling its caller, and a worker thread, for ever.
#: Every call passes it (``_request_timeout``); see docs/executor.md#timeouts.
REQUEST_TIMEOUT: tuple[float, float] = (5.0, 20.0)
#: Retries of a request that got no answer (urllib3's default is 3, which would make a GET to
#: a hung server take four read timeouts).
RETRIES = 1


def load_client() -> kubernetes.client.ApiClient:
    """In a pod: the ServiceAccount; elsewhere: $KUBECONFIG or ~/.kube/config. Requests that
    get no answer are retried at most :data:`RETRIES` times."""
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    config = kubernetes.client.Configuration.get_default_copy()
    config.retries = RETRIES
    return kubernetes.client.ApiClient(config)


class Unanswered(urllib3.exceptions.HTTPError):
    """A request the API server did not answer (in time, or at all): one line naming the
    call and the timeout, instead of urllib3's nested retry message."""

    @classmethod
    def of(cls, call: str, exc: urllib3.exceptions.HTTPError,
           timeout: object = None) -> Unanswered:
        """The error of ``call`` that failed with ``exc``."""
        reason = getattr(exc, "reason", None) or exc
        within = ""
        if isinstance(timeout, tuple) and len(timeout) == 2:
            within = f" within {timeout[0]:g}s (connect) / {timeout[1]:g}s (read)"
        detail = " ".join(str(reason).split())[:300]
        return cls(f"the Kubernetes API server did not answer {call}{within}: {detail}")


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
