"""Pure parts of ``check --kube`` (startupmonkey/checkpod.py): reading the check pod's
termination message back, the permissions the executor's ServiceAccount is asked about, the
check pod made from the operator's own executor Deployment, and what a pod's status says.
The same code against a real API server and kubelet: tests/e2e/test_check_kube.py and
tests/pods/test_check_pod_on_a_node.py."""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from startupmonkey import checkpod, rbac
from startupmonkey.check import Check, Level, read_message, write_message
from startupmonkey.operator import children, monitor
from startupmonkey.operator import config as config_mod

C = monitor.Component
SETTINGS = config_mod.OperatorSettings.model_validate(
    {"images": {"data_plane": "example/sm:1", "nats": "example/nats:2"}})

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
    | st.sampled_from([lv.value for lv in Level]),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30)


def _is_checks(found: object) -> bool:
    return isinstance(found, list) and all(
        isinstance(c, Check) and isinstance(c.level, Level) and isinstance(c.name, str)
        and isinstance(c.message, str) and isinstance(c.fix, str) for c in found)


@settings(max_examples=400, deadline=None)
@given(st.text() | JSON.map(json.dumps))
@example("")
@example("[]")
@example('[["a","OK","m","f"]]')
@example('[["a","NOPE","m","f"]]')
@example('{"a": 1, "b": 2, "c": 3, "d": 4}')
@example("[[1, 2]]")
@example("1e999999")
def test_a_message_is_checks_or_a_value_error(text: str) -> None:
    try:
        found = read_message(text)
    except ValueError:
        return
    assert _is_checks(found), found


def test_a_message_nested_too_deep_is_a_value_error() -> None:
    """A message nested 4000 deep fits in a termination message; json's RecursionError must
    come out as the ValueError every other bad report gives."""
    with pytest.raises(ValueError, match="not a check report"):
        read_message("[" * 4000)


def test_a_report_whose_fields_are_not_text_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="not text"):
        read_message('[[null, "OK", null, null]]')


CHECK = st.builds(Check, st.text(max_size=30), st.sampled_from(list(Level)),
                  st.text(max_size=500), st.text(max_size=500))


@settings(max_examples=100, deadline=None)
@given(st.lists(CHECK, max_size=12))
def test_what_the_pod_writes_reads_back_cut_to_fit(tmp_path_factory: pytest.TempPathFactory,
                                                   checks: list[Check]) -> None:
    path = tmp_path_factory.mktemp("message") / "termination-log"
    write_message(path, checks)
    text = path.read_text()
    assert len(text.encode()) <= 4000
    found = read_message(text)
    assert [(c.name, c.level) for c in found] == [(c.name, c.level) for c in checks]
    for wrote, read in zip(checks, found, strict=True):
        assert wrote.message.startswith(read.message) and wrote.fix.startswith(read.fix)


def test_the_executor_is_asked_about_each_verb_on_each_resource() -> None:
    access = checkpod.needed_access(rbac.EXECUTOR_RULES)
    assert len(access) == 15 == len(set(access))
    assert ("patch", "startupmonkey.dev", "databasemonitors", "status") in access
    assert ("create", "startupmonkey.dev", "remediations", "status") in access
    assert ("create", "", "events", "") in access
    assert checkpod._shown("patch", "startupmonkey.dev", "databasemonitors", "status") == \
        "patch databasemonitors/status.startupmonkey.dev"
    assert checkpod._shown("create", "", "events", "") == "create events"


def _view(**database: Any) -> monitor.View:
    spec = {"database": {"host": "db", "dbname": "shop",
                         "credentialsSecret": {"name": "shop-db"}, **database}}
    return monitor.parse({"metadata": {"name": "shop", "namespace": "prod", "uid": "u-1"},
                          "spec": spec})


def _pod(view: monitor.View) -> dict[str, Any]:
    deployment = children.deployment(view, C.EXECUTOR, SETTINGS, "1")
    return checkpod.check_pod(view, deployment, 12.5, "abc123")


def test_the_check_pod_is_the_executors_pod_running_the_check() -> None:
    view = _view()
    executor = children.pod_spec(view, C.EXECUTOR, SETTINGS)
    pod = _pod(view)
    assert pod["metadata"]["name"] == "shop-check-abc123"
    spec = pod["spec"]
    (container,) = spec["containers"]
    assert container["command"][:4] == ["startupmonkey", "check", "--config",
                                        "/etc/startupmonkey/config.yaml"]
    assert "--collector-secret-dir" not in container["command"]
    assert spec["volumes"] == executor["volumes"]
    assert container["volumeMounts"] == executor["containers"][0]["volumeMounts"]
    assert (spec["activeDeadlineSeconds"], spec["restartPolicy"]) == (13, "Never")
    assert spec["serviceAccountName"] == "shop-executor"
    assert spec["securityContext"] == executor["securityContext"]
    assert not {"startupProbe", "livenessProbe", "readinessProbe", "ports"} & set(container)
    # The executor's selector (NetworkPolicies that admit the executor admit it), not the
    # operator's managed-by, and an owner that garbage collection follows but not a controller.
    labels = pod["metadata"]["labels"]
    assert view.selector(C.EXECUTOR).items() <= labels.items()
    assert labels["app.kubernetes.io/managed-by"] == "startupmonkey-check"
    assert monitor.owner_of(pod) is None
    (owner,) = pod["metadata"]["ownerReferences"]
    assert owner["uid"] == "u-1"
    # The Deployment it was made from is untouched.
    assert children.deployment(view, C.EXECUTOR, SETTINGS, "1")["spec"]["template"]["spec"] \
        == executor


@pytest.mark.parametrize(("database", "mounted"), [
    ({"collectorCredentialsSecret": {"name": "collector-db", "userKey": "u",
                                     "passwordKey": "p"}}, "collector-db"),
    # The executor has its own login: the collector's is the shared one, not mounted there.
    ({"executorCredentialsSecret": {"name": "executor-db"}}, "shop-db"),
])
def test_the_collectors_own_login_is_mounted_beside_the_executors(
        database: dict[str, Any], mounted: str) -> None:
    pod = _pod(_view(**database))
    (container,) = pod["spec"]["containers"]
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == "collector-database"]
    assert volume["secret"]["secretName"] == mounted
    assert {"mountPath": str(checkpod.COLLECTOR_SECRET_DIR), "name": "collector-database",
            "readOnly": True} in container["volumeMounts"]
    assert container["command"][-2:] == ["--collector-secret-dir",
                                         str(checkpod.COLLECTOR_SECRET_DIR)]


@pytest.mark.parametrize(("status", "spec", "state"), [
    ({}, {}, ("waiting", "no node was assigned to it (is a scheduler running?)")),
    ({"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                      "message": "0/1 nodes are available: 1 Insufficient memory."}]}, {},
     ("waiting", "not scheduled (Unschedulable): 0/1 nodes are available: 1 Insufficient "
                 "memory.")),
    ({"phase": "Pending"}, {"nodeName": "n1"}, ("waiting", None)),
    ({"containerStatuses": [{"state": {"waiting": {"reason": "ContainerCreating"}}}]},
     {"nodeName": "n1"}, ("waiting", "ContainerCreating")),
    ({"containerStatuses": [{"state": {"waiting": {
        "reason": "ImagePullBackOff", "message": "Back-off pulling image \"x:1\""}}}]},
     {"nodeName": "n1"}, ("stuck", "ImagePullBackOff: Back-off pulling image \"x:1\"")),
    ({"containerStatuses": [{"state": {"waiting": {
        "reason": "CreateContainerConfigError",
        "message": "couldn't find key password in Secret prod/shop-db"}}}]},
     {"nodeName": "n1"},
     ("stuck", "CreateContainerConfigError: couldn't find key password in Secret "
               "prod/shop-db")),
    ({"phase": "Failed", "reason": "DeadlineExceeded",
      "message": "Pod was active on the node longer than the specified deadline"},
     {"nodeName": "n1"}, ("stuck", "DeadlineExceeded: Pod was active on the node longer "
                                   "than the specified deadline")),
    ({"phase": "Failed", "containerStatuses": [{"state": {"terminated": {
        "exitCode": 1, "message": '[["config","OK","m",""]]'}}}]}, {"nodeName": "n1"},
     ("done", '[["config","OK","m",""]]')),
    ({"containerStatuses": [{"state": {"terminated": {"exitCode": 2}}}]}, {"nodeName": "n1"},
     ("done", "")),
])
def test_a_pods_status_in_words(status: dict[str, Any], spec: dict[str, Any],
                                state: tuple[str, str | None]) -> None:
    assert checkpod.pod_state({"status": status, "spec": spec}) == state



def test_only_a_check_pod_past_its_own_deadline_is_swept() -> None:
    """Another person's check running beside this one is never deleted under it."""
    now = datetime.datetime(2026, 12, 6, 17, 0, tzinfo=datetime.UTC)

    def pod(phase: str, age: float, deadline: object = 180) -> dict[str, object]:
        created = now - datetime.timedelta(seconds=age)
        return {"metadata": {"creationTimestamp": created.strftime("%Y-%m-%dT%H:%M:%SZ")},
                "spec": {"activeDeadlineSeconds": deadline}, "status": {"phase": phase}}

    assert checkpod._abandoned(pod("Succeeded", 600), now)
    assert checkpod._abandoned(pod("Failed", 241), now)
    assert not checkpod._abandoned(pod("Succeeded", 5), now)  # someone's, just finished
    assert not checkpod._abandoned(pod("Running", 600), now)
    assert not checkpod._abandoned(pod("Succeeded", 600, deadline=None), now)
