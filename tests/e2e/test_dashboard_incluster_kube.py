"""``startupmonkey dashboard --in-cluster`` on the real kube-apiserver (issue 25; docs/dashboard.md,
"In the cluster"): the dashboard runs as a subprocess over HTTPS with its own ServiceAccount,
which has exactly the chart's ClusterRole (create TokenReviews and SubjectAccessReviews, nothing
else). Two people log in with their own ServiceAccount tokens (TokenRequest API): the viewer
(get, list) sees the Remediations and is refused Approve with the API server's own 403; the
approver (get, list, watch, patch) approves. Plain HTTP gets no page, a wrong token is 401
with no cookie, the dashboard's own token may not log in (403: it may not list), a POST from
another origin is refused, logout ends the session, and no token reaches the dashboard's
output. Tokens are never put in an assertion message."""

from __future__ import annotations

import contextlib
import json
import os
import re
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import yaml

from startupmonkey.models import remediation
from tests.e2e.test_dashboard_live_kube import _changed, _live, _next_event, _stream
from tests.support.controlplane import ControlPlane
from tests.support.dashboard import (
    EXE,
    SQL,
    arrange,
    form_token,
    object_of,
    stop_checked,
    text_of,
)
from tests.support.eventually import eventually

pytestmark = pytest.mark.e2e

#: The chart's dashboard ClusterRole rules (helm/startupmonkey/templates/dashboard.yaml; the
#: chart test checks the chart renders exactly these).
DASHBOARD_RULES = [
    {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"],
     "verbs": ["create"]},
    {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"],
     "verbs": ["create"]},
]


def certificate(folder: Path) -> tuple[Path, Path]:
    """A throwaway self-signed certificate for 127.0.0.1 (openssl), and its key."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "tls.crt", folder / "tls.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1",
                    "-addext", "basicConstraints=critical,CA:TRUE",
                    "-addext", "keyUsage=critical,digitalSignature,keyCertSign",
                    "-addext", "extendedKeyUsage=serverAuth"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def own_identity(cp: ControlPlane, namespace: str, tmp_path: Path) -> tuple[str, Path]:
    """The dashboard's ServiceAccount bound to exactly the chart's ClusterRole: its token and
    a kubeconfig with it."""
    name = f"dashboard-{namespace}"
    objects = [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": "dashboard", "namespace": namespace}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": name}, "rules": DASHBOARD_RULES},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": name},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": "dashboard",
                       "namespace": namespace}]}]
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objects))
    token = cp.mint_token(namespace, "dashboard")
    return token, cp.kubeconfig_for_token(token, tmp_path / "dashboard.kubeconfig", namespace)


class InCluster:
    """A running ``startupmonkey dashboard --in-cluster`` on 127.0.0.1, any free port;
    ``secrets`` (tokens) must never reach its output."""

    def __init__(self, kubeconfig: Path, cert: Path, key: Path, folder: Path,
                 secrets: tuple[str, ...]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.out, self.err = folder / "dashboard.out", folder / "dashboard.err"
        self.secrets = secrets
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                [str(EXE), "dashboard", "--in-cluster", "--tls-cert", str(cert), "--tls-key",
                 str(key), "--address", "127.0.0.1", "--port", "0"], stdout=out, stderr=err,
                env={**os.environ, "KUBECONFIG": str(kubeconfig)}, start_new_session=True)

    async def address(self) -> str:
        def listening() -> str:
            assert self.proc.poll() is None, self.err.read_text()
            found = re.findall(r"https://127\.0\.0\.1:\d+/", self.out.read_text())
            return found[0].rstrip("/") if found else ""

        return await eventually(listening, timeout=30, what="the dashboard's address")

    def stop(self) -> str:
        """Stop it (SIGTERM); its output, checked: exit 0, no traceback, no secret (hidden
        in what a message shows)."""
        return stop_checked(self.proc, self.out, self.err, self.secrets)


@contextlib.contextmanager
def in_cluster(kubeconfig: Path, cert: Path, key: Path, folder: Path,
               *secrets: str) -> Iterator[InCluster]:
    running = InCluster(kubeconfig, cert, key, folder, secrets)
    try:
        yield running
    finally:
        with contextlib.suppress(AssertionError):
            running.stop()


@contextlib.asynccontextmanager
async def browser(cert: Path) -> AsyncIterator[aiohttp.ClientSession]:
    """A client trusting the throwaway certificate, keeping its cookies."""
    context = ssl.create_default_context(cafile=str(cert))
    async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=30), cookie_jar=aiohttp.CookieJar(unsafe=True),
            connector=aiohttp.TCPConnector(ssl=context)) as session:
        yield session


async def log_in(session: aiohttp.ClientSession, url: str, token: str
                 ) -> tuple[int, str, list[str]]:
    async with session.post(url + "/login", data={"token": token}, headers={"Origin": url},
                            allow_redirects=False) as answer:
        return answer.status, await answer.text(), answer.headers.getall("Set-Cookie", [])


async def fetch(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url) as answer:
        return answer.status, await answer.text()


async def send(session: aiohttp.ClientSession, url: str, form: dict[str, str],
               origin: str) -> tuple[int, str]:
    async with session.post(url, data=form, headers={"Origin": origin}) as answer:
        return answer.status, await answer.text()


async def test_each_user_logs_in_with_a_token_and_acts_with_its_own_rights(
        control_plane: ControlPlane, namespace: str, tmp_path: Path) -> None:
    cp = control_plane
    users = await arrange(cp, namespace, tmp_path)
    own_token, own_kubeconfig = own_identity(cp, namespace, tmp_path)
    cert, key = certificate(tmp_path / "tls")
    page_of = f"/ns/{namespace}/remediations"
    sql_hash = remediation.sql_hash(SQL, None)
    try:
        with in_cluster(own_kubeconfig, cert, key, tmp_path / "dashboard",
                        users.viewer, users.approver, own_token) as running:
            url = await running.address()

            # Plain HTTP to the HTTPS port: no page at all.
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as plain:
                with pytest.raises(aiohttp.ClientError):
                    async with plain.get(url.replace("https://", "http://") + "/login") as a:
                        await a.text()

            async with browser(cert) as nobody:
                status, page, cookies = await log_in(nobody, url, "not-a-real-token")
                assert status == 401
                assert "The API server did not accept this token" in text_of(page)
                assert cookies == [] and len(nobody.cookie_jar) == 0
                # The dashboard's own identity may review, but not list remediations.
                status, page, cookies = await log_in(nobody, url, own_token)
                assert status == 403 and cookies == []
                said = text_of(page)
                assert f"system:serviceaccount:{namespace}:dashboard may not list " \
                       "remediations.startupmonkey.dev" in said
                status, _ = await fetch(nobody, url + "/")
                assert status == 401

            async with browser(cert) as viewer:
                status, _, cookies = await log_in(viewer, url, users.viewer)
                assert status == 303 and len(cookies) == 1
                assert all(flag in cookies[0] for flag in ("Secure", "HttpOnly",
                                                           "SameSite=Strict", "Path=/"))
                status, listed = await fetch(viewer, url + "/remediations")
                assert status == 200
                assert f'href="{page_of}/shop-orders"' in listed
                assert f"showing namespace {namespace}" in text_of(listed)
                # Let in in its own namespace only (a Role there): the header says which.
                assert f"Namespace {namespace}; as system:serviceaccount:{namespace}:viewer" \
                    in text_of(listed)
                status, confirm = await fetch(viewer, url + f"{page_of}/shop-orders/approve")
                assert status == 200
                viewer_form_token = form_token(confirm)
                status, refused = await send(viewer, url + f"{page_of}/shop-orders/approve",
                                             {"csrf": form_token(confirm),
                                              "sql_hash": sql_hash}, url)
                assert status == 403
                said = text_of(refused)
                assert "Approve refused: Kubernetes API: 403 Forbidden:" in said
                assert f"system:serviceaccount:{namespace}:viewer" in said
                assert 'cannot patch resource "remediations"' in said
                # The live page's watch is the viewer's too: it may not watch.
                status, one = await fetch(viewer, url + f"{page_of}/shop-orders")
                assert status == 200
                async with _stream(viewer, url + _live(one)) as stream:
                    kind, data = await _next_event(stream)
                assert (kind, data["then"]) == ("ended", "stop"), (kind, data)
                assert f"system:serviceaccount:{namespace}:viewer" in data["reason"]
                assert 'cannot watch resource "remediations"' in data["reason"]
            assert object_of(cp, namespace, "shop-orders")["spec"]["approved"] is False

            async with browser(cert) as approver:
                status, _, _ = await log_in(approver, url, users.approver)
                assert status == 303
                approve = url + f"{page_of}/shop-orders/approve"
                status, confirm = await fetch(approver, approve)
                assert status == 200
                token = form_token(confirm)
                status, refused = await send(approver, approve,
                                             {"csrf": token, "sql_hash": sql_hash},
                                             "https://evil.example")
                assert status == 403 and "sent from another site" in refused
                # From the right origin, but without this session's form token: no form
                # token, a wrong one, another session's (the viewer's).
                for form in ({"sql_hash": sql_hash}, {"csrf": "x" * 43, "sql_hash": sql_hash},
                             {"csrf": viewer_form_token, "sql_hash": sql_hash}):
                    status, refused = await send(approver, approve, form, url)
                    assert status == 403, form.keys()
                    assert "did not come from this dashboard" in text_of(refused)
                assert object_of(cp, namespace, "shop-orders")["spec"]["approved"] is False
                status, done = await send(approver, approve,
                                          {"csrf": token, "sql_hash": sql_hash}, url)
                assert status == 200
                assert "Approved: the executor re-checks the plan and runs it." in done

                def approved() -> bool:
                    found = object_of(cp, namespace, "shop-orders")
                    return found["spec"]["approved"] is True and found["metadata"][
                        "annotations"][remediation.ANNOTATION_APPROVED_BY] == \
                        f"system:serviceaccount:{namespace}:approver"

                assert await eventually(approved, timeout=30, what="shop-orders approved")

                # The approver's live page follows with the approver's token (watch allowed).
                status, one = await fetch(approver, url + f"{page_of}/shop-returns")
                assert status == 200
                async with _stream(approver, url + _live(one)) as stream:
                    cp.kubectl("annotate", "remediations.startupmonkey.dev", "shop-returns",
                               "-n", namespace, "e2e/touched=yes")
                    await _changed(stream, "shop-returns")

                # Logout ends the session: its live page stops following (no more watching
                # with its token), and the same cookie opens nothing afterwards.
                status, overview = await fetch(approver, url + "/")
                assert status == 200
                kept = {c.key: c.value for c in approver.cookie_jar}
                async with _stream(approver, url + _live(overview)) as stream:
                    status, _ = await send(approver, url + "/logout",
                                           {"csrf": form_token(overview)}, url)
                    assert status == 200  # on to the login form
                    kind, data = await _next_event(stream)
                    assert (kind, data) == ("ended", {"reason": "you logged out: log in again "
                                                      "to follow this page", "then": "stop"})
                approver.cookie_jar.update_cookies(kept)
                status, page = await fetch(approver, url + "/")
                assert status == 401 and 'type="password"' in page
        output = running.stop()  # also: no token reached the dashboard's output
        assert "https://127.0.0.1:" in output
    finally:
        cp.kubectl("delete", "clusterrolebinding,clusterrole", f"dashboard-{namespace}",
                   "--ignore-not-found")


async def test_a_user_allowed_only_through_a_group_binding_is_let_in(
        control_plane: ControlPlane, namespace: str, tmp_path: Path) -> None:
    """The SubjectAccessReview carries the user's groups: a ServiceAccount with no binding of
    its own, whose namespace's group (``system:serviceaccounts:<ns>``) may list remediations
    there, logs in (and sees its namespace); without its groups the review would refuse it."""
    cp = control_plane
    own_token, own_kubeconfig = own_identity(cp, namespace, tmp_path)
    cert, key = certificate(tmp_path / "tls")
    reader = f"remediation-reader-{namespace}"
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": "grouped", "namespace": namespace}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": reader},
         "rules": [{"apiGroups": ["startupmonkey.dev"],
                    "resources": ["remediations", "databasemonitors"],
                    "verbs": ["get", "list"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "every-serviceaccount-reads", "namespace": namespace},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": reader},
         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group",
                       "name": f"system:serviceaccounts:{namespace}"}]}]))
    grouped = cp.mint_token(namespace, "grouped")
    user = f"system:serviceaccount:{namespace}:grouped"

    def allowed(groups: list[str]) -> bool:
        review = cp.kubectl_json("create", "-f", "-", input=json.dumps({
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {"user": user, "groups": groups, "resourceAttributes": {
                "namespace": namespace, "verb": "list", "group": "startupmonkey.dev",
                "resource": "remediations"}}}))
        return bool(review["status"].get("allowed"))

    assert not allowed([]), "the user itself has a binding"
    assert allowed([f"system:serviceaccounts:{namespace}"])
    try:
        with in_cluster(own_kubeconfig, cert, key, tmp_path / "dashboard",
                        grouped, own_token) as running:
            url = await running.address()
            async with browser(cert) as session:
                status, page, cookies = await log_in(session, url, grouped)
                assert status == 303, text_of(page)
                assert len(cookies) == 1
                status, listed = await fetch(session, url + "/remediations")
                assert status == 200
                assert f"Namespace {namespace}; as {user}" in text_of(listed)
        running.stop()  # also: neither token reached the dashboard's output
    finally:
        cp.kubectl("delete", "clusterrolebinding,clusterrole", f"dashboard-{namespace}",
                   "--ignore-not-found")
        cp.kubectl("delete", "clusterrole", reader, "--ignore-not-found")
