"""The CLI client's refusals that need no server: a token is never sent over plain TCP, a
kubeconfig whose server is not https:// is refused, a failing exec plugin is one line, and an
approval must name the SQL hash that was reviewed (issue 24.2)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from startupmonkey import cli, client


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_a_token_file_is_never_sent_over_plain_tcp(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret")
    for command in (["status"], ["approve", "x"], ["reject", "x"], ["rollback", "x"]):
        code, out, err = _run(capsys, *command, "--executor", "db.example:50052",
                              "--token-file", str(token))
        assert (code, out) == (1, "")
        assert err == (f"startupmonkey {command[0]}: --token-file over db.example:50052 would "
                       "send the token in clear text: use the executor's unix:///path socket "
                       "(standalone) or --kube (in a cluster)\n")


def _kubeconfig(path: Path, server: str, user: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": server}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
        "users": [{"name": "u", "user": user}]}))
    return path


def test_a_kubeconfig_server_without_tls_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KUBECONFIG", str(_kubeconfig(tmp_path / "kc", "http://127.0.0.1:1",
                                                     {"token": "s3cret"})))
    code, out, err = _run(capsys, "status", "--kube")
    assert (code, out) == (1, "")
    assert err == ("startupmonkey status: the kubeconfig's server http://127.0.0.1:1 is not "
                   "https://: your credentials are never sent in clear text; use the API "
                   "server's TLS address\n")


def test_a_failing_exec_plugin_is_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    plugin = {"exec": {"apiVersion": "client.authentication.k8s.io/v1",
                       "command": sys.executable,
                       "args": ["-c", "import sys; sys.exit('no login')"],
                       "interactiveMode": "Never"}}
    monkeypatch.setenv("KUBECONFIG", str(_kubeconfig(tmp_path / "kc", "https://127.0.0.1:1",
                                                     plugin)))
    code, out, err = _run(capsys, "approve", "x", "--kube", "--sql-hash", "0" * 12)
    assert (code, out) == (1, "")
    assert err.startswith("startupmonkey approve: cannot get a token: kubeconfig ")
    assert "no login" in err and err.count("\n") == 1


def test_an_absent_kubeconfig_is_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    code, out, err = _run(capsys, "status", "--kube")
    assert (code, out) == (1, "")
    assert err.startswith("startupmonkey status: cannot load the kubeconfig: ")
    assert err.count("\n") == 1


@pytest.mark.parametrize(("given", "why"), [
    (None, "say which SQL you reviewed: --sql-hash"),
    ("abc", "the planned SQL's hash is abcdef012345, not 'abc'"),
    ("abcdef00", "the planned SQL's hash is abcdef012345, not 'abcdef00'")])
def test_an_approval_names_the_reviewed_sql_hash(given: str | None, why: str) -> None:
    with pytest.raises(client.Refused, match="^" + why.replace("(", r"\(")):
        client._check_hash(given, "abcdef0123456789", "r")


def test_a_reviewed_hash_prefix_is_accepted() -> None:
    client._check_hash("ABCDEF01", "abcdef0123456789", "r")
    client._check_hash("abcdef0123456789", "abcdef0123456789", "r")
