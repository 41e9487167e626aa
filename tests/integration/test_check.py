"""``startupmonkey check -f`` on real servers (issue 21, item 1): each FAIL it can print is made
real here (a wrong password, nothing listening, a role without pg_monitor, without
pg_signal_backend, owning no table, no extension, an extension not preloaded, track_counts off,
a standby, a NATS that does not answer) and the exact line and fix are read back, with the exit
status; the same role once fixed reads OK, so no line is a constant."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from startupmonkey import check as check_mod
from startupmonkey import settings
from startupmonkey.localserv import nats as natsserver
from startupmonkey.localserv import postgres
from startupmonkey.models import monitor
from tests.support import components

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
EXE = Path(sys.executable).with_name("startupmonkey")


def _manifest(tmp_path: Path, cluster: postgres.PostgresCluster, dbname: str,
              **spec: Any) -> Path:
    path = tmp_path / "monitor.yaml"
    path.write_text(yaml.safe_dump({
        "apiVersion": "startupmonkey.dev/v1alpha1", "kind": "DatabaseMonitor",
        "metadata": {"name": "check-test", "namespace": "dev"},
        "spec": {"database": {"host": cluster.host, "port": cluster.port, "dbname": dbname,
                              "credentialsSecret": {"name": "unused-standalone"}}, **spec}}))
    return path


def check(manifest: Path, user: str, password: str | None = None,
          *extra: str) -> tuple[int, dict[str, dict[str, str]], str]:
    """Run ``check -o json``: exit status, checks by name, and the text form's output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGPASSWORD")}
    if password is not None:
        env["PGPASSWORD"] = password
    args = [str(EXE), "check", "-f", str(manifest), "--user", user, *extra]
    done = subprocess.run([*args, "-o", "json"], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    report = json.loads(done.stdout)
    assert report["ok"] == (done.returncode == 0), done.stdout
    text = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert text.returncode == done.returncode, text.stdout + text.stderr
    if password is not None:
        assert password not in done.stdout + done.stderr + text.stdout + text.stderr
    return done.returncode, {c["name"]: c for c in report["checks"]}, text.stdout


@pytest.fixture
def role(pg_cluster: postgres.PostgresCluster,
         pg_db: postgres.PostgresDatabase) -> Iterator[tuple[str, str]]:
    """A login role with a password and no privileges; dropped (with what it owns) after."""
    name, password = f"chk_{uuid.uuid4().hex[:10]}", secrets.token_urlsafe(16)
    pg_cluster.create_role(name, password)
    try:
        yield name, password
    finally:
        _sql(pg_cluster, pg_db.dbname, f'DROP OWNED BY "{name}"')
        pg_cluster.drop_role(name)


def _sql(cluster: postgres.PostgresCluster, dbname: str, statements: str) -> None:
    """Run statements of this test's own making as the superuser."""
    with cluster.connect(dbname) as conn:
        conn.execute(statements.encode())


def test_a_superuser_on_a_full_setup_passes_every_check(
        pg_cluster: postgres.PostgresCluster, pg_db: postgres.PostgresDatabase,
        tmp_path: Path) -> None:
    code, checks, text = check(_manifest(tmp_path, pg_cluster, pg_db.dbname),
                               pg_cluster.superuser)
    assert code == 0, text
    assert {c["level"] for c in checks.values()} == {"OK"}, text
    assert {"database login", "server version", "primary", "pg_stat_statements", "hypopg",
            "track_counts", "track_io_timing", "collector role", "executor signals",
            "table ownership", "event bus"} <= set(checks)
    assert "everything the configured mode needs is there" in text


def test_a_wrong_password_fails_the_login_with_the_fix_and_never_prints_the_password(
        pg_cluster: postgres.PostgresCluster, pg_db: postgres.PostgresDatabase,
        role: tuple[str, str], tmp_path: Path) -> None:
    name, _ = role
    code, checks, _ = check(_manifest(tmp_path, pg_cluster, pg_db.dbname), name,
                            "not-" + secrets.token_urlsafe(12))
    assert code == 1
    login = checks["database login"]
    assert login["level"] == "FAIL"
    assert "password authentication failed" in login["message"]
    assert "PGPASSWORD" in login["fix"] and "credentialsSecret" in login["fix"]
    assert "server version" not in checks  # nothing judged without a login


def test_nothing_listening_fails_with_connection_refused_in_words(tmp_path: Path) -> None:
    port = postgres.free_port()
    manifest = tmp_path / "monitor.yaml"
    manifest.write_text(yaml.safe_dump({
        "apiVersion": "startupmonkey.dev/v1alpha1", "kind": "DatabaseMonitor",
        "metadata": {"name": "nowhere"},
        "spec": {"database": {"host": "127.0.0.1", "port": port, "dbname": "shop",
                              "credentialsSecret": {"name": "s"}}}}))
    code, checks, text = check(manifest, "nobody")
    assert code == 1
    login = checks["database login"]
    assert login["level"] == "FAIL" and "Connection refused" in login["message"]
    assert login["fix"].startswith(f"nothing listens on 127.0.0.1:{port}")
    assert f"fix: nothing listens on 127.0.0.1:{port}" in text


def test_a_role_without_pg_monitor_fails_until_it_is_granted(
        pg_cluster: postgres.PostgresCluster, pg_db: postgres.PostgresDatabase,
        role: tuple[str, str], tmp_path: Path) -> None:
    name, password = role
    manifest = _manifest(tmp_path, pg_cluster, pg_db.dbname, mode="observe")
    code, checks, _ = check(manifest, name, password)
    assert code == 1
    assert checks["collector role"]["level"] == "FAIL"
    assert checks["collector role"]["fix"] == f'GRANT pg_monitor TO "{name}";'
    _sql(pg_cluster, pg_db.dbname, f'GRANT pg_monitor TO "{name}"')
    code, checks, text = check(manifest, name, password)
    assert checks["collector role"]["level"] == "OK"
    # observe mode needs no signal and no table: what the executor lacks is only a warning
    assert checks["executor signals"]["level"] == "WARN"
    assert code == 0, text


def test_pg_signal_backend_is_needed_in_auto_mode_and_only_warned_of_in_observe_mode(
        pg_cluster: postgres.PostgresCluster, pg_db: postgres.PostgresDatabase,
        role: tuple[str, str], tmp_path: Path) -> None:
    name, password = role
    _sql(pg_cluster, pg_db.dbname, f'GRANT pg_monitor TO "{name}"')
    _sql(pg_cluster, pg_db.dbname, f'CREATE TABLE public.mine (a int); '
           f'ALTER TABLE public.mine OWNER TO "{name}"')
    auto = check(_manifest(tmp_path, pg_cluster, pg_db.dbname, mode="auto"), name, password)
    assert auto[0] == 1
    assert auto[1]["executor signals"]["level"] == "FAIL"
    assert auto[1]["executor signals"]["fix"] == f'GRANT pg_signal_backend TO "{name}";'
    sessions_observed = check(_manifest(tmp_path, pg_cluster, pg_db.dbname, mode="auto",
                                        policy={"session": "observe"}), name, password)
    assert sessions_observed[1]["executor signals"]["level"] == "WARN"
    assert sessions_observed[0] == 0, sessions_observed[2]


def test_tables_the_executor_does_not_own_are_named_and_fail_when_it_owns_none(
        pg_cluster: postgres.PostgresCluster, pg_db: postgres.PostgresDatabase,
        role: tuple[str, str], tmp_path: Path) -> None:
    name, password = role
    _sql(pg_cluster, pg_db.dbname, f'GRANT pg_monitor, pg_signal_backend TO "{name}"')
    _sql(pg_cluster, pg_db.dbname, "CREATE TABLE public.theirs (a int)")
    manifest = _manifest(tmp_path, pg_cluster, pg_db.dbname)
    code, checks, _ = check(manifest, name, password)
    tables = checks["table ownership"]
    assert code == 1 and tables["level"] == "FAIL"
    assert "owns 0 of 1 tables" in tables["message"] and "public.theirs" in tables["message"]
    _sql(pg_cluster, pg_db.dbname, f'CREATE TABLE public.mine (a int); '
           f'ALTER TABLE public.mine OWNER TO "{name}"')
    code, checks, text = check(manifest, name, password)
    tables = checks["table ownership"]
    assert tables["level"] == "WARN", text
    assert "owns 1 of 2 tables" in tables["message"] and "public.theirs" in tables["message"]
    assert "public.mine" not in tables["message"]
    assert code == 0, text


def test_missing_extensions_fail_with_create_extension_and_hypopg_only_when_indexes_are_built(
        pg_cluster: postgres.PostgresCluster, pg_db: postgres.PostgresDatabase,
        tmp_path: Path) -> None:
    _sql(pg_cluster, pg_db.dbname, "DROP EXTENSION pg_stat_statements; DROP EXTENSION hypopg")
    code, checks, _ = check(_manifest(tmp_path, pg_cluster, pg_db.dbname),
                            pg_cluster.superuser)
    assert code == 1
    statements = checks["pg_stat_statements"]
    assert statements["level"] == "FAIL" and "not created" in statements["message"]
    assert statements["fix"].startswith("CREATE EXTENSION pg_stat_statements;")
    assert checks["hypopg"]["level"] == "FAIL"
    assert checks["hypopg"]["fix"].startswith("CREATE EXTENSION hypopg;")
    no_index_builds = _manifest(tmp_path, pg_cluster, pg_db.dbname, policy={"ddl": "observe"},
                                thresholds={"missing_index": {"enabled": False},
                                            "slow_statement": {"enabled": False}})
    code, checks, text = check(no_index_builds, pg_cluster.superuser)
    assert checks["hypopg"]["level"] == "WARN" and checks["pg_stat_statements"]["level"] == "WARN"
    assert code == 0, text


def test_pg_stat_statements_not_preloaded_says_to_restart_with_it(
        pg_private_cluster_factory: components.PrivateClusterFactory, tmp_path: Path) -> None:
    cluster = pg_private_cluster_factory({"shared_preload_libraries": ""})
    code, checks, _ = check(_manifest(tmp_path, cluster, "postgres"), cluster.superuser)
    statements = checks["pg_stat_statements"]
    assert code == 1 and statements["level"] == "FAIL"
    assert "shared_preload_libraries" in statements["message"]
    assert "restart PostgreSQL" in statements["fix"]


def test_track_counts_off_fails_and_track_io_timing_off_only_warns(
        pg_cluster: postgres.PostgresCluster, pg_db: postgres.PostgresDatabase,
        tmp_path: Path) -> None:
    _sql(pg_cluster, pg_db.dbname, f'ALTER DATABASE "{pg_db.dbname}" SET track_counts = off')
    _sql(pg_cluster, pg_db.dbname,
           f'ALTER DATABASE "{pg_db.dbname}" SET track_io_timing = off')
    code, checks, _ = check(_manifest(tmp_path, pg_cluster, pg_db.dbname),
                            pg_cluster.superuser)
    assert code == 1
    assert checks["track_counts"]["level"] == "FAIL"
    assert "track_counts = on" in checks["track_counts"]["fix"]
    assert checks["track_io_timing"]["level"] == "WARN"


def test_a_standby_fails_in_auto_mode_and_passes_in_observe_mode(
        pg_private_cluster_factory: components.PrivateClusterFactory, tmp_path: Path) -> None:
    cluster = pg_private_cluster_factory()
    signal = cluster.datadir / "standby.signal"
    signal.write_text("")
    owner = cluster.datadir.stat()
    os.chown(signal, owner.st_uid, owner.st_gid)
    cluster.restart()
    code, checks, _ = check(_manifest(tmp_path, cluster, "postgres"), cluster.superuser)
    assert code == 1
    assert checks["primary"]["level"] == "FAIL" and "standby" in checks["primary"]["message"]
    assert "spec.mode: observe" in checks["primary"]["fix"]
    code, checks, text = check(_manifest(tmp_path, cluster, "postgres", mode="observe"),
                               cluster.superuser)
    assert checks["primary"]["level"] == "OK" and "standby" in checks["primary"]["message"]
    assert code == 0, text


def test_an_external_nats_is_checked_to_answer(
        pg_cluster: postgres.PostgresCluster, pg_db: postgres.PostgresDatabase,
        nats_server: natsserver.NatsServer, tmp_path: Path) -> None:
    up = check(_manifest(tmp_path, pg_cluster, pg_db.dbname, eventBus={"url": nats_server.url}),
               pg_cluster.superuser)
    assert up[1]["event bus"]["level"] == "OK" and up[0] == 0, up[2]
    nowhere = f"nats://127.0.0.1:{postgres.free_port()}"
    down = check(_manifest(tmp_path, pg_cluster, pg_db.dbname, eventBus={"url": nowhere}),
                 pg_cluster.superuser)
    assert down[0] == 1
    assert down[1]["event bus"]["level"] == "FAIL" and nowhere in down[1]["event bus"]["message"]


def test_a_separate_executor_login_is_checked_as_its_own_role(
        pg_cluster: postgres.PostgresCluster, pg_db: postgres.PostgresDatabase,
        role: tuple[str, str], tmp_path: Path) -> None:
    name, password = role
    _sql(pg_cluster, pg_db.dbname, f'GRANT pg_monitor TO "{name}"')
    manifest = _manifest(tmp_path, pg_cluster, pg_db.dbname)
    code, checks, text = check(manifest, name, password, "--executor-user",
                               pg_cluster.superuser)
    assert checks["collector login"]["level"] == "OK"
    assert checks["collector role"]["level"] == "OK"
    assert checks["executor login"]["level"] == "OK"
    assert pg_cluster.superuser in checks["executor signals"]["message"]
    assert code == 0, text


def _secret_dir(folder: Path, user: str, password: str) -> Path:
    """A folder laid out as a mounted Secret (username, password files)."""
    folder.mkdir()
    (folder / "username").write_text(user)
    (folder / "password").write_text(password)
    return folder


def test_in_a_pod_the_rendered_config_and_mounted_secrets_are_checked_and_reported_compactly(
        pg_cluster: postgres.PostgresCluster, pg_db: postgres.PostgresDatabase,
        role: tuple[str, str], nats_auth: components.NatsAuth, tmp_path: Path) -> None:
    """What the check pod runs (``check --config``): the collector's own Secret mounted apart
    from the executor's, the NATS login from its files; a wrong NATS password is refused by the
    real server and said so; the termination message carries every check."""
    name, password = role
    _sql(pg_cluster, pg_db.dbname, f'GRANT pg_monitor TO "{name}"')
    executor_secret = _secret_dir(tmp_path / "executor", pg_cluster.superuser, "unused")
    collector_secret = _secret_dir(tmp_path / "collector", name, password)
    nats_secret = _secret_dir(tmp_path / "nats", nats_auth.user, nats_auth.password)

    def login() -> settings.DatabaseLogin:
        return settings.DatabaseLogin(
            host=pg_cluster.host, port=pg_cluster.port, dbname=pg_db.dbname,
            user_file=executor_secret / "username", password_file=executor_secret / "password")

    bus = settings.NatsSettings(url=nats_auth.url, user_file=nats_secret / "username",
                                password_file=nats_secret / "password")
    spec = monitor.DatabaseMonitorSpec.model_validate(yaml.safe_load(
        _manifest(tmp_path, pg_cluster, pg_db.dbname).read_text())["spec"])
    config = tmp_path / "config.yaml"
    config.write_text(settings.dump(settings.ComponentConfig(
        monitor=settings.MonitorRef(namespace="dev", name="check-test"), spec=spec,
        collector=settings.CollectorSettings(database=login()),
        executor=settings.ExecutorSettings(database=login(), nats=bus))))
    message = tmp_path / "termination-log"

    def run() -> tuple[int, dict[str, dict[str, str]]]:
        done = subprocess.run(
            [str(EXE), "check", "--config", str(config), "--collector-secret-dir",
             str(collector_secret), "--message-file", str(message), "-o", "json"],
            capture_output=True, text=True, timeout=120, check=False)
        assert password not in done.stdout + done.stderr + message.read_text()
        assert nats_auth.password not in done.stdout + done.stderr + message.read_text()
        report = {c["name"]: c for c in json.loads(done.stdout)["checks"]}
        from_message = {c.name: c.level.value for c in check_mod.read_message(message.read_text())}
        assert from_message == {n: c["level"] for n, c in report.items()}
        return done.returncode, report

    code, report = run()
    assert report["collector login"]["level"] == "OK"
    assert f"logged in as {name}@" in report["collector login"]["message"]
    assert report["collector role"]["level"] == "OK"
    assert report["executor login"]["level"] == "OK"
    assert report["event bus"]["level"] == "OK" and nats_auth.user in report["event bus"]["message"]
    assert code == 0, report
    (nats_secret / "password").write_text("not-" + nats_auth.password)
    code, report = run()
    assert code == 1 and report["event bus"]["level"] == "FAIL"
    assert "authorization" in report["event bus"]["message"].lower()


def test_a_membership_that_does_not_inherit_is_not_taken_for_the_privilege(
        pg_cluster: postgres.PostgresCluster, pg_db: postgres.PostgresDatabase,
        role: tuple[str, str], tmp_path: Path) -> None:
    """NOINHERIT: the role is a member of pg_monitor and pg_signal_backend but cannot use
    them (PostgreSQL refuses its pg_cancel_backend and hides other sessions), so both FAIL."""
    name, password = role
    _sql(pg_cluster, pg_db.dbname, f'GRANT pg_monitor, pg_signal_backend TO "{name}"; '
         f'ALTER ROLE "{name}" NOINHERIT')
    code, checks, _ = check(_manifest(tmp_path, pg_cluster, pg_db.dbname), name, password)
    assert code == 1
    assert checks["collector role"]["level"] == "FAIL"
    assert checks["executor signals"]["level"] == "FAIL"


def test_pg_stat_statements_in_a_schema_of_its_own_is_read_there(
        pg_cluster: postgres.PostgresCluster, pg_db: postgres.PostgresDatabase,
        tmp_path: Path) -> None:
    _sql(pg_cluster, pg_db.dbname, "DROP EXTENSION pg_stat_statements; "
         "CREATE SCHEMA extensions; CREATE EXTENSION pg_stat_statements SCHEMA extensions")
    _, checks, text = check(_manifest(tmp_path, pg_cluster, pg_db.dbname), pg_cluster.superuser)
    assert checks["pg_stat_statements"]["level"] == "OK", text


def test_a_catalog_view_it_may_not_read_is_a_fail_not_a_traceback(
        pg_cluster: postgres.PostgresCluster, pg_db: postgres.PostgresDatabase,
        role: tuple[str, str], tmp_path: Path) -> None:
    name, password = role
    revoke = "REVOKE SELECT ON pg_catalog.pg_available_extensions FROM PUBLIC"
    _sql(pg_cluster, pg_db.dbname, revoke)
    try:
        code, checks, text = check(_manifest(tmp_path, pg_cluster, pg_db.dbname), name,
                                   password)
    finally:  # the catalog is the cluster's: give it back to every other test
        _sql(pg_cluster, pg_db.dbname,
             "GRANT SELECT ON pg_catalog.pg_available_extensions TO PUBLIC")
    assert code == 1
    assert checks["database reads"]["level"] == "FAIL", text
    assert "permission denied" in checks["database reads"]["message"]
