"""The managed NATS: generated credentials kept, a server config nats-server accepts, and the
Secret checks that turn a missing Secret into a readable problem."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path
from typing import Any

import pytest

from startupmonkey import natsperms
from startupmonkey.localserv import nats as natsserver
from startupmonkey.operator import credentials, monitor, nats
from tests.support.components import require


def view(**spec: Any) -> monitor.View:
    base: dict[str, Any] = {"database": {"host": "db", "dbname": "shop",
                                         "credentialsSecret": {"name": "shop-db"}}}
    base.update(spec)
    return monitor.parse({"metadata": {"name": "shop", "namespace": "prod", "uid": "u",
                                       "generation": 1}, "spec": base})


def as_stored(secret: dict[str, Any]) -> dict[str, Any]:
    """What the API server returns for a Secret created with stringData."""
    data = {k: base64.b64encode(v.encode()).decode() for k, v in secret["stringData"].items()}
    return {"metadata": secret["metadata"], "data": data}


def test_credentials_are_random_per_client_and_read_back() -> None:
    one, two = nats.generate_credentials(), nats.generate_credentials()
    assert one["analyser-user"] == "analyser" and one["executor-user"] == "executor"
    assert one["watcher-user"] == "watcher"
    assert one["analyser-password"] != one["executor-password"] != two["executor-password"]
    assert one["watcher-password"] not in (one["analyser-password"], one["executor-password"])
    assert len(one["executor-password"]) >= 40
    stored = as_stored(nats.secret(view(), one))
    assert nats.credentials_from(stored) == one
    assert nats.credentials_from(None) is None
    assert nats.credentials_from({"data": {"analyser-user": "YQ=="}}) is None
    assert nats.conf_in(stored) == nats.server_config(view(), one)


def test_a_secret_from_before_the_watcher_login_counts_as_incomplete() -> None:
    """The reconcile then writes new credentials for every login, the watcher's included
    (not one password of a config nobody stored)."""
    stored = as_stored(nats.secret(view(), nats.generate_credentials()))
    del stored["data"]["watcher-user"], stored["data"]["watcher-password"]
    assert nats.credentials_from(stored) is None


def test_the_watcher_secret_holds_the_watcher_login_alone() -> None:
    creds = nats.generate_credentials()
    secret = nats.watcher_secret(view(), creds)
    assert secret["metadata"]["name"] == "shop-nats-watcher"
    assert secret["metadata"]["namespace"] == "prod"
    assert secret["metadata"]["ownerReferences"][0]["kind"] == "DatabaseMonitor"
    assert {k: base64.b64decode(v).decode() for k, v in secret["data"].items()} == {
        "user": "watcher", "password": creds["watcher-password"]}


@pytest.mark.parametrize("jetstream", [False, True])
def test_nats_server_accepts_the_generated_config(tmp_path: Path, jetstream: bool) -> None:
    try:
        binary = natsserver.find_binary()
    except natsserver.BinaryNotFound as exc:
        require("nats-server", str(exc))
    text = nats.server_config(view(eventBus={"jetstream": jetstream}),
                              nats.generate_credentials())
    assert ("jetstream" in text) is jetstream
    path = tmp_path / "nats.conf"
    path.write_text(text.replace(f'"{nats.DATA_DIR}"', f'"{tmp_path / "js"}"'))
    result = subprocess.run([str(binary), "-c", str(path), "-t"], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stderr + result.stdout


def test_secret_references_and_their_problems() -> None:
    v = view(database={"host": "db", "dbname": "shop", "credentialsSecret": {"name": "a"},
                       "executorCredentialsSecret": {"name": "b", "passwordKey": "pw"}},
             eventBus={"url": "nats://bus:4222", "credentialsSecret": {"name": "bus"}})
    refs = {r.field: (r.ref.name, r.condition) for r in credentials.references(v)}
    assert refs == {"spec.database.credentialsSecret": ("a", "DatabaseReachable"),
                    "spec.database.executorCredentialsSecret": ("b", "DatabaseReachable"),
                    "spec.eventBus.credentialsSecret": ("bus", "EventBusAvailable")}
    ref = credentials.references(v)[1]
    missing = credentials.judge(ref, "prod", None)
    assert missing is not None and missing.reason == "SecretNotFound"
    assert 'Secret "b" (spec.database.executorCredentialsSecret) not found' in missing.message
    no_key = credentials.judge(ref, "prod", {"username", "password"})
    assert no_key is not None and no_key.reason == "SecretKeyNotFound"
    assert '"pw"' in no_key.message
    assert credentials.judge(ref, "prod", {"username", "pw"}) is None


def test_one_shared_secret_is_checked_once() -> None:
    refs = credentials.references(view())
    assert [r.field for r in refs] == ["spec.database.credentialsSecret"]



def test_each_managed_nats_login_has_its_roles_permissions_only() -> None:
    creds = nats.generate_credentials()
    text = nats.server_config(view(), creds)
    logins = [natsperms.Login(creds[f"{c}-user"], creds[f"{c}-password"], nats.ROLES[c])
              for c in nats.LOGINS]
    assert natsperms.authorization(logins, "prod", "shop") in text
    assert [login.role for login in logins] == [natsperms.Role.ANALYSER,
                                                natsperms.Role.EXECUTOR,
                                                natsperms.Role.WATCHER]
    # The watcher may publish nothing at all.
    watcher = natsperms.permissions(natsperms.Role.WATCHER, "prod", "shop")
    assert f"{{user: \"watcher\", password: \"{creds['watcher-password']}\", " \
           f"permissions: {watcher.render()}}}" in text
    assert 'publish: { deny: [">"] }' in watcher.render()
