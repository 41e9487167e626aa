"""``startupmonkey check --kube NAME [-n NS]``: the checks of ``check -f``, run in the cluster.

With the user's own kubeconfig (loaded as ``startupmonkey status --kube`` loads it,
:func:`startupmonkey.client._kube_client`), for the DatabaseMonitor NAME:

1. **monitor**: it exists and its spec parses (else FAIL with the API server's words).
2. **RBAC**: one check per ServiceAccount the operator makes for the monitor's components
   (``<monitor>-collector``, ``-analyser``, ``-executor``, and ``-nats`` with a managed NATS):
   it exists, and for the executor, a LocalSubjectAccessReview per (verb, resource) of
   :data:`startupmonkey.rbac.EXECUTOR_RULES` as ``system:serviceaccount:NS:SA`` (with the
   ServiceAccount groups) answers allowed. The others need no API access at all. A user who may
   not create LocalSubjectAccessReviews gets a WARN saying so.
3. **the check pod**: a bare Pod (no Job: a cluster without a Job controller still runs it)
   made from the monitor's executor Deployment's pod template, so it runs with the executor's
   ServiceAccount, image, securityContext, resources and the same mounts (the rendered config,
   the executor's database Secret, the NATS login), plus the collector's own database Secret
   at :data:`COLLECTOR_SECRET_DIR` when it logs in with another one. Its command is
   ``startupmonkey check --config ... --message-file /dev/termination-log -o json``; the
   checks come back as the container's termination message (``check.read_message``). The pod
   has the executor's selector labels (a NetworkPolicy that admits the executor, such as the
   managed NATS's, admits it too) but no container port, so no Service sends it traffic, and
   no probes; ``activeDeadlineSeconds`` bounds it, an owner reference to the monitor removes
   it with the monitor, and it is deleted when the check ends, whatever happened. Finished
   check pods of the monitor a killed CLI left behind are deleted at the next check.

Every request has a timeout (:data:`startupmonkey.kubeapi.REQUEST_TIMEOUT`).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import math
import secrets
import time
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any

import kubernetes.client
import urllib3.exceptions
from kubernetes.client.exceptions import ApiException

from startupmonkey import client, kubeapi, kubetime, rbac
from startupmonkey.check import Check, Level, read_message
from startupmonkey.models import monitor as monitor_models
from startupmonkey.operator import monitor, pods, render

TIMEOUT = kubeapi.REQUEST_TIMEOUT
Component = monitor.Component
#: Where the check pod mounts the collector's own database Secret (when it has one).
COLLECTOR_SECRET_DIR = PurePosixPath("/var/run/secrets/startupmonkey/collector-database")
TERMINATION_LOG = "/dev/termination-log"
#: Labels of the check pod besides the executor's selector.
LABEL_CHECK = "startupmonkey.dev/check"
MANAGED_BY = "startupmonkey-check"
#: Waiting reasons after which the container will not start without a change.
STUCK = {"ErrImageNeverPull", "ImagePullBackOff", "InvalidImageName",
         "CreateContainerConfigError", "CreateContainerError", "RunContainerError"}
POLL = 1.0


def _words(text: object, limit: int = 600) -> str:
    return " ".join(str(text).split())[:limit]


def _api_words(exc: ApiException) -> str:
    error = kubeapi.ApiError.from_exception(exc)
    return _words(f"{error.status} {exc.reason or ''}: {error.message}")


def _json(answer: Any) -> dict[str, Any]:
    """The decoded body of a call made with ``_preload_content=False``."""
    found = json.loads(answer.data)
    if not isinstance(found, dict):
        raise ValueError(f"the API server sent {type(found).__name__}, not an object")
    return found


# -- the monitor --------------------------------------------------------------------------------

def _read_monitor(api: kubernetes.client.ApiClient, namespace: str,
                  name: str) -> tuple[Check, monitor.View | None]:
    custom = kubernetes.client.CustomObjectsApi(api)
    try:
        body = custom.get_namespaced_custom_object(
            monitor_models.GROUP, monitor_models.VERSION, namespace, monitor_models.PLURAL,
            name, _request_timeout=TIMEOUT)
    except ApiException as exc:
        if exc.status == 404:
            fix = (f"kubectl get databasemonitors -n {namespace} lists the monitors there; "
                   "-n NAMESPACE names another namespace")
        elif exc.status in (401, 403):
            fix = (f"ask for get on databasemonitors.{monitor_models.GROUP} in {namespace} "
                   "(the chart's viewer ClusterRole grants it)")
        else:
            fix = "read the API server's answer above"
        return Check("monitor", Level.FAIL, f"cannot read DatabaseMonitor {namespace}/{name}: "
                     f"{_api_words(exc)}", fix), None
    if not isinstance(body, dict):
        return Check("monitor", Level.FAIL, "the API server did not send an object"), None
    view = monitor.parse(body)
    if view.spec is None:
        return Check("monitor", Level.FAIL, f"DatabaseMonitor {namespace}/{name} does not "
                     f"parse: {view.spec_error}", "fix the fields named (startupmonkey "
                     "validate -f lists them)"), None
    return Check("monitor", Level.OK, f"DatabaseMonitor {namespace}/{name}, mode "
                 f"{view.spec.mode.value}" + (", suspended" if view.spec.suspend else "")), view


# -- RBAC ---------------------------------------------------------------------------------------

def needed_access(rules: list[rbac.Rule]) -> list[tuple[str, str, str, str]]:
    """(verb, group, resource, subresource) of every permission ``rules`` grant (pure)."""
    found = []
    for item in rules:
        for group in item["apiGroups"]:
            for resource in item["resources"]:
                base, _, sub = resource.partition("/")
                found += [(verb, group, base, sub) for verb in item["verbs"]]
    return found


def _shown(verb: str, group: str, resource: str, sub: str) -> str:
    return f"{verb} {resource}{'/' + sub if sub else ''}{'.' + group if group else ''}"


class _NoReviews(Exception):
    """The user may not ask the API server what someone else may do."""


def _allowed(api: kubernetes.client.ApiClient, namespace: str, serviceaccount: str,
             access: tuple[str, str, str, str]) -> bool:
    verb, group, resource, sub = access
    review: Any = {"apiVersion": "authorization.k8s.io/v1", "kind": "LocalSubjectAccessReview",
              "metadata": {"namespace": namespace},
              "spec": {"user": f"system:serviceaccount:{namespace}:{serviceaccount}",
                       "groups": ["system:serviceaccounts",
                                  f"system:serviceaccounts:{namespace}",
                                  "system:authenticated"],
                       "resourceAttributes": {"namespace": namespace, "verb": verb,
                                              "group": group, "resource": resource,
                                              "subresource": sub}}}
    try:
        answer = _json(kubernetes.client.AuthorizationV1Api(api)
                       .create_namespaced_local_subject_access_review(
                           namespace, review, _preload_content=False,
                           _request_timeout=TIMEOUT))
    except ApiException as exc:
        if exc.status in (401, 403):
            raise _NoReviews(_api_words(exc)) from None
        raise
    return bool((answer.get("status") or {}).get("allowed"))


def _service_account_missing(api: kubernetes.client.ApiClient, namespace: str,
                             name: str) -> bool | None:
    """True when it does not exist, None when the user may not look."""
    try:
        kubernetes.client.CoreV1Api(api).read_namespaced_service_account(
            name, namespace, _preload_content=False, _request_timeout=TIMEOUT)
    except ApiException as exc:
        if exc.status == 404:
            return True
        if exc.status in (401, 403):
            return None
        raise
    return False


def _needs(view: monitor.View) -> list[tuple[Component, list[rbac.Rule]]]:
    found: list[tuple[Component, list[rbac.Rule]]] = [
        (c, rbac.EXECUTOR_RULES if c is Component.EXECUTOR else []) for c in monitor.DATA_PLANE]
    if view.managed_nats:
        found.append((Component.NATS, []))
    return found


def rbac_checks(api: kubernetes.client.ApiClient, view: monitor.View) -> list[Check]:
    """One check per ServiceAccount of the monitor's components."""
    checks = []
    namespace = view.namespace
    operator_fix = (f"the operator creates it with the monitor's children: is it running? "
                    f"(kubectl get dbm {view.name} -n {namespace} -o yaml shows its "
                    "conditions)")
    for component, rules in _needs(view):
        sa = view.child_name(component)
        name = f"rbac {sa}"
        missing = _service_account_missing(api, namespace, sa)
        if missing:
            checks.append(Check(name, Level.FAIL, f"ServiceAccount {namespace}/{sa} does not "
                                f"exist: the {component}'s pods cannot be created",
                                operator_fix))
            continue
        if not rules:
            checks.append(Check(name, Level.OK, f"the {component} needs no Kubernetes API "
                                "access (and gets no token)"))
            continue
        access = needed_access(rules)
        try:
            denied = [a for a in access if not _allowed(api, namespace, sa, a)]
        except _NoReviews as exc:
            checks.append(Check(name, Level.WARN, "not checked: you may not ask what "
                                f"ServiceAccount {sa} may do ({exc})", "ask for create on "
                                "localsubjectaccessreviews.authorization.k8s.io in "
                                f"{namespace} (the admin ClusterRole has it), or check with "
                                f"kubectl auth can-i --as system:serviceaccount:{namespace}:"
                                f"{sa} -n {namespace} --list"))
            continue
        if not denied:
            checks.append(Check(name, Level.OK, f"{sa} may do the {len(access)} things the "
                                f"{component} needs"))
            continue
        checks.append(Check(
            name, Level.FAIL, f"{sa} may not: {', '.join(_shown(*a) for a in denied)} (the "
            f"{component} needs it)",
            f"the operator re-creates Role and RoleBinding {sa} at its next reconcile; if it "
            f"stays denied, kubectl describe role {sa} -n {namespace}; kubectl describe "
            f"rolebinding {sa} -n {namespace} (the binding names ServiceAccount {sa}?), and "
            "is the operator running?"))
    return checks


# -- the check pod -------------------------------------------------------------------------------

def check_pod(view: monitor.View, deployment: dict[str, Any], pod_timeout: float,
              suffix: str) -> dict[str, Any]:
    """The check pod made from the executor Deployment's pod template (pure)."""
    assert view.spec is not None
    template = copy.deepcopy(deployment["spec"]["template"])
    spec: dict[str, Any] = template["spec"]
    containers = spec["containers"]
    container = next((c for c in containers if c.get("name") == str(Component.EXECUTOR)),
                     containers[0])
    command = ["startupmonkey", "check", "--config", str(render.CONFIG_PATH),
               "--message-file", TERMINATION_LOG, "-o", "json"]
    collector = render.database_secret(view.spec, Component.COLLECTOR)
    if collector != render.database_secret(view.spec, Component.EXECUTOR):
        spec.setdefault("volumes", []).append(pods.secret_volume(
            "collector-database", collector.name, {collector.user_key: render.USER_FILE,
                                                   collector.password_key: render.PASSWORD_FILE}))
        container.setdefault("volumeMounts", []).append(
            {"name": "collector-database", "mountPath": str(COLLECTOR_SECRET_DIR),
             "readOnly": True})
        command += ["--collector-secret-dir", str(COLLECTOR_SECRET_DIR)]
    for key in ("livenessProbe", "readinessProbe", "startupProbe", "ports", "lifecycle",
                "args"):
        container.pop(key, None)
    container.update(name="check", command=command, terminationMessagePath=TERMINATION_LOG,
                     terminationMessagePolicy="File")
    spec.update(containers=[container], restartPolicy="Never",
                activeDeadlineSeconds=max(1, math.ceil(pod_timeout)),
                automountServiceAccountToken=False, terminationGracePeriodSeconds=5)
    labels = {**view.selector(Component.EXECUTOR),
              monitor.LABEL_PART_OF: "startupmonkey", monitor.LABEL_MANAGED_BY: MANAGED_BY,
              monitor.LABEL_MONITOR: view.name, LABEL_CHECK: "true"}
    owner = {k: v for k, v in view.owner_reference().items()
             if k not in ("controller", "blockOwnerDeletion")}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{view.name}-check-{suffix}", "namespace": view.namespace,
                         "labels": labels, "ownerReferences": [owner]},
            "spec": spec}


def _said(reason: object, message: object) -> str:
    return _words(f"{reason}: {message}" if message else reason)


def pod_state(pod: dict[str, Any]) -> tuple[str, str | None]:
    """("done", message) once the container terminated; ("stuck", why) when it will not
    start without a change; ("waiting", why or None) otherwise (pure)."""
    status = pod.get("status") or {}
    for container in status.get("containerStatuses") or []:
        state = container.get("state") or {}
        if "terminated" in state:
            return "done", state["terminated"].get("message") or ""
        waiting = state.get("waiting") or {}
        if waiting.get("reason") in STUCK:
            return "stuck", _said(waiting["reason"], waiting.get("message"))
        if waiting.get("reason"):
            return "waiting", _said(waiting["reason"], waiting.get("message"))
    if status.get("phase") in ("Failed", "Succeeded"):
        return "stuck", _said(status.get("reason") or status["phase"], status.get("message"))
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return "waiting", _said(f"not scheduled ({condition.get('reason')})",
                                    condition.get("message"))
    if not (pod.get("spec") or {}).get("nodeName"):
        return "waiting", "no node was assigned to it (is a scheduler running?)"
    return "waiting", None


def _events(core: kubernetes.client.CoreV1Api, namespace: str, pod: str) -> str:
    """The pod's last events, in words ("" when there are none or they cannot be read)."""
    try:
        found = _json(core.list_namespaced_event(
            namespace, field_selector=f"involvedObject.name={pod}", _preload_content=False,
            _request_timeout=TIMEOUT))
    except (ApiException, ValueError, urllib3.exceptions.HTTPError):
        return ""
    items = sorted(found.get("items") or [],
                   key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
    return "; ".join(_said(e.get("reason"), e.get("message"))[:300] for e in items[-3:])


def _log_tail(core: kubernetes.client.CoreV1Api, namespace: str, pod: str) -> str:
    try:
        answer: Any = core.read_namespaced_pod_log(pod, namespace, tail_lines=5, limit_bytes=2000,
                                              _preload_content=False, _request_timeout=TIMEOUT)
    except (ApiException, urllib3.exceptions.HTTPError):
        return ""
    return _words(answer.data.decode(errors="replace"), 800)


def _sweep(core: kubernetes.client.CoreV1Api, view: monitor.View) -> None:
    """Delete finished check pods of this monitor a killed CLI left behind (best effort)."""
    with contextlib.suppress(ApiException, ValueError, urllib3.exceptions.HTTPError):
        found = _json(core.list_namespaced_pod(
            view.namespace, label_selector=f"{LABEL_CHECK}=true,{monitor.LABEL_MONITOR}="
            f"{view.name}", _preload_content=False, _request_timeout=TIMEOUT))
        for pod in found.get("items") or []:
            if _abandoned(pod, kubetime.utcnow()):
                _delete(core, view.namespace, pod["metadata"]["name"])


def _abandoned(pod: dict[str, Any], now: datetime.datetime) -> bool:
    """A finished check pod past its own deadline (and a minute): a check running beside
    this one (another person's) reads its pod well within that, so it is never swept away
    under it."""
    if (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
        return False
    created = kubetime.parse_or_none((pod.get("metadata") or {}).get("creationTimestamp"))
    deadline = (pod.get("spec") or {}).get("activeDeadlineSeconds")
    if created is None or not isinstance(deadline, int):
        return False
    return (now - created).total_seconds() > deadline + 60


def _delete(core: kubernetes.client.CoreV1Api, namespace: str, name: str) -> str | None:
    """Delete a pod now; the error in words when that failed."""
    try:
        core.delete_namespaced_pod(name, namespace, grace_period_seconds=0,
                                   _preload_content=False, _request_timeout=TIMEOUT)
    except ApiException as exc:
        return None if exc.status == 404 else _api_words(exc)
    except urllib3.exceptions.HTTPError as exc:
        return _words(getattr(exc, "reason", None) or exc)
    return None


def pod_checks(api: kubernetes.client.ApiClient, view: monitor.View, pod_timeout: float,
               clock: Callable[[], float] = time.monotonic) -> list[Check]:
    """The database and NATS checks, run by the check pod in the monitor's namespace."""
    namespace = view.namespace
    executor = view.child_name(Component.EXECUTOR)
    try:
        deployment = _json(kubernetes.client.AppsV1Api(api).read_namespaced_deployment(
            executor, namespace, _preload_content=False, _request_timeout=TIMEOUT))
    except ApiException as exc:
        missing = exc.status == 404
        return [Check("check pod", Level.FAIL, f"cannot read Deployment {namespace}/{executor}"
                      f": {_api_words(exc)}" + (": the operator has not made the monitor's "
                                                "data plane" if missing else ""),
                      f"is the operator running and watching {namespace}? kubectl get dbm "
                      f"{view.name} -n {namespace} -o yaml shows its conditions" if missing
                      else f"ask for get on deployments in {namespace}")]
    core = kubernetes.client.CoreV1Api(api)
    _sweep(core, view)
    body: Any = check_pod(view, deployment, pod_timeout, secrets.token_hex(3))
    name = body["metadata"]["name"]
    try:
        core.create_namespaced_pod(namespace, body, _preload_content=False,
                                   _request_timeout=TIMEOUT)
    except ApiException as exc:
        return [Check("check pod", Level.FAIL, f"cannot create the check pod in {namespace}: "
                      f"{_api_words(exc)}",
                      f"run as someone who may create pods in {namespace} (kubectl auth can-i "
                      f"create pods -n {namespace}), or use check -f from a machine that "
                      "reaches the database" if exc.status in (401, 403)
                      else "read the API server's answer above")]
    checks: list[Check] = []
    try:
        checks = _wait(core, namespace, name, body, pod_timeout, clock)
    finally:
        error = _delete(core, namespace, name)
        if error is not None:
            checks.append(Check("check pod deleted", Level.WARN, f"the check pod {namespace}/"
                                f"{name} could not be deleted: {error}", f"kubectl delete pod "
                                f"{name} -n {namespace}"))
    return checks


def _wait(core: kubernetes.client.CoreV1Api, namespace: str, name: str, body: dict[str, Any],
          pod_timeout: float, clock: Callable[[], float]) -> list[Check]:
    container = body["spec"]["containers"][0]
    what = (f"pod {namespace}/{name} (ServiceAccount {body['spec'].get('serviceAccountName')}, "
            f"image {container.get('image')})")
    start = clock()
    deadline = start + pod_timeout
    why: str | None = None
    while True:
        pod = _json(core.read_namespaced_pod(name, namespace, _preload_content=False,
                                             _request_timeout=TIMEOUT))
        state, why = pod_state(pod)
        if state == "done":
            return _finished(core, namespace, name, what, why or "", clock() - start)
        if state == "stuck" or clock() >= deadline:
            events = _events(core, namespace, name)
            said = why or "it did not start"
            timed_out = state != "stuck"
            return [Check("check pod", Level.FAIL,
                          f"{what} did not run the checks"
                          + (f" within {pod_timeout:g} s" if timed_out else "") + f": {said}"
                          + (f" (events: {events})" if events else ""),
                          "the executor's pods would fail the same way: kubectl describe pod "
                          f"-n {namespace} -l app.kubernetes.io/component=executor; "
                          "--pod-timeout gives a slow node more time" if timed_out else
                          "the executor's pods would fail the same way: kubectl describe pod "
                          f"-n {namespace} -l app.kubernetes.io/component=executor")]
        time.sleep(POLL)


def _finished(core: kubernetes.client.CoreV1Api, namespace: str, name: str, what: str,
              message: str, seconds: float) -> list[Check]:
    try:
        found = read_message(message)
    except ValueError:
        tail = _log_tail(core, namespace, name)
        return [Check("check pod", Level.FAIL, f"{what} ended without a check report"
                      + (f"; its last output: {tail}" if tail else ""),
                      "is the data-plane image as new as this CLI? One without `startupmonkey "
                      "check --config` cannot run the checks: upgrade it, or use check -f from "
                      "a machine that reaches the database")]
    return [Check("check pod", Level.OK, f"{what} ran the checks in {seconds:.0f} s"), *found]


# -- the whole --------------------------------------------------------------------------------

def cluster_checks(name: str, namespace: str | None, pod_timeout: float) -> list[Check]:
    """Everything ``check --kube NAME -n NS`` says."""
    try:
        api, namespace = client._kube_client(argparse.Namespace(namespace=namespace))
    except client.Refused as exc:
        return [Check("kubeconfig", Level.FAIL, str(exc),
                      "kubectl get databasemonitors must work with the same KUBECONFIG")]
    try:
        found, view = _read_monitor(api, namespace, name)
        if view is None:
            return [found]
        return [found, *rbac_checks(api, view), *pod_checks(api, view, pod_timeout)]
    except urllib3.exceptions.HTTPError as exc:
        return [Check("kubernetes", Level.FAIL, "the Kubernetes API server did not answer "
                      f"within {TIMEOUT[0]:g} s (connect) / {TIMEOUT[1]:g} s (read): "
                      f"{_words(getattr(exc, 'reason', None) or exc, 300)}",
                      "kubectl get databasemonitors must work with the same KUBECONFIG")]
    except (ApiException, ValueError) as exc:
        said = _api_words(exc) if isinstance(exc, ApiException) else _words(exc)
        return [Check("kubernetes", Level.FAIL, f"the Kubernetes API refused a request: {said}",
                      "read the API server's answer above")]
    finally:
        api.close()
