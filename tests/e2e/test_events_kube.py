"""``startupmonkey events -n NS MONITOR`` against a real API server and the operator's managed
NATS: the watcher login comes from the operator's Secret, read with the user's own kubeconfig
(a Role granting ``get`` on it by name), and NATS is reached on loopback, as after ``kubectl
port-forward``; a user without that Role is told what to ask for. The NATS Deployment the
operator rendered runs as a local process (tests/support/podrunner.py) with its generated
config, so the server's permissions are the operator's."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from nats.aio.client import Client

from startupmonkey import rbac
from startupmonkey.models import messages
from startupmonkey.models.enums import RemediationState
from tests.support import podrunner
from tests.support.controlplane import ControlPlane, free_port
from tests.support.executor_helpers import table_detection
from tests.support.operator_helpers import Operator, get
from tests.support.streams import next_line

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]
EXE = Path(sys.executable).with_name("startupmonkey")


@pytest.fixture
def managed_nats(control_plane: ControlPlane, namespace: str,
                 data_plane: Callable[..., Operator], tmp_path: Path) -> Iterator[int]:
    """The monitor ``shop``'s NATS, as the operator rendered it, on a loopback port."""
    cp = control_plane
    data_plane()
    plane = podrunner.DataPlane(cp, namespace, "shop", tmp_path / "plane")
    deployment = get(cp, namespace, "deployment", "shop-nats")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    pod = plane._prepare("nats", deployment, {p["name"]: free_port()
                                              for p in container["ports"]})
    plane.pods["nats"] = pod
    try:
        plane._write_files(pod)
        pod.start()
        plane._wait_ready(pod, 60)
        yield pod.ports["client"]
    finally:
        plane.stop()


def _secret(cp: ControlPlane, namespace: str, name: str) -> dict[str, str]:
    data = get(cp, namespace, "secret", name)["data"]
    return {k: base64.b64decode(v).decode() for k, v in data.items()}


def _user(cp: ControlPlane, namespace: str, name: str, secrets: list[str],
          tmp_path: Path) -> Path:
    """A ServiceAccount's kubeconfig: ``get`` on the named Secrets only (none: no Role)."""
    objects: list[dict[str, object]] = [{"apiVersion": "v1", "kind": "ServiceAccount",
                                         "metadata": {"name": name, "namespace": namespace}}]
    if secrets:
        rule = {**rbac.rule("", ["secrets"], ["get"]), "resourceNames": secrets}
        objects += [rbac.role(name, namespace, [rule]),
                    rbac.role_binding(name, namespace, name)]
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objects))
    return cp.kubeconfig_for_token(cp.mint_token(namespace, name),
                                   tmp_path / f"{name}.kubeconfig")


async def test_events_reads_the_watcher_login_with_the_users_kubeconfig(
        control_plane: ControlPlane, namespace: str, managed_nats: int,
        tmp_path: Path) -> None:
    cp = control_plane
    generated = _secret(cp, namespace, "shop-nats")
    assert generated["watcher-user"] == "watcher"
    assert '{user: "watcher", password: ' in generated["nats.conf"]
    assert 'publish: { deny: [">"] }' in generated["nats.conf"]
    # The operator copies the watcher's login into a Secret of its own, and that Secret is all
    # the user may read: the analyser's and executor's logins stay out of reach.
    watcher = _secret(cp, namespace, "shop-nats-watcher")
    assert watcher == {"user": generated["watcher-user"],
                       "password": generated["watcher-password"]}
    kubeconfig = _user(cp, namespace, "watcher", ["shop-nats-watcher"], tmp_path)
    url = f"nats://127.0.0.1:{managed_nats}"
    process = await asyncio.create_subprocess_exec(
        str(EXE), "events", "-n", namespace, "shop", "--nats", url, "-o", "json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=cp.env(kubeconfig))
    assert process.stdout is not None and process.stderr is not None
    analyser, executor = Client(), Client()
    try:
        said = await next_line(process.stderr, "stderr")
        assert said == (f"startupmonkey events: following startupmonkey.v1.{namespace}.shop.> "
                        f"at {url} as watcher; Ctrl-C stops")
        # Published as the analyser and the executor do, with their logins from the Secret.
        await analyser.connect(url, user="analyser", password=generated["analyser-password"])
        await executor.connect(url, user="executor", password=generated["executor-password"])
        detection = table_detection("orders", namespace=namespace)  # of monitor "shop"
        event = messages.RemediationEvent(
            namespace=namespace, monitor="shop", remediation="shop-0123456789",
            key=detection.key, detection_id=detection.id, detector=detection.detector,
            action=detection.proposed_action, state=RemediationState.PENDING_APPROVAL,
            time=detection.published_at, message="waiting for approval")
        await analyser.publish(detection.subject, detection.encode())
        await analyser.flush()
        first = json.loads(await next_line(process.stdout, "stdout"))
        await executor.publish(event.subject, event.encode())
        await executor.flush()
        second = json.loads(await next_line(process.stdout, "stdout"))
        assert first == {"subject": detection.subject,
                         "message": json.loads(detection.encode())}
        assert second == {"subject": event.subject, "message": json.loads(event.encode())}
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert await process.wait() == 0
        rest = (await process.stderr.read()).decode()
        assert "stopped; 1 detection messages, 1 state changes, 0 malformed" in rest
        assert generated["watcher-password"] not in said + rest
    finally:
        await analyser.close()
        await executor.close()
        if process.returncode is None:
            process.kill()
            await process.wait()


def test_a_user_who_may_not_read_the_secret_is_told_what_to_ask_for(
        control_plane: ControlPlane, namespace: str, data_plane: Callable[..., Operator],
        tmp_path: Path) -> None:
    cp = control_plane
    data_plane()
    kubeconfig = _user(cp, namespace, "stranger", [], tmp_path)
    result = subprocess.run([str(EXE), "events", "-n", namespace, "shop"], capture_output=True,
                            text=True, env=cp.env(kubeconfig), timeout=60, check=False)
    assert result.returncode == 1
    assert result.stdout == ""
    assert (f"startupmonkey events: you may not read Secret {namespace}/shop-nats-watcher "
            "(get secrets): ask for a Role allowing get on Secret shop-nats-watcher") in \
        result.stderr

