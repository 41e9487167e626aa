"""deploy/operator-rbac.yaml is exactly rbac.OPERATOR_RULES, bound to the operator's account,
deploy/operator-webhook-rbac.yaml exactly rbac.webhook_rules() bound to the same account, with
no wildcards anywhere (the e2e tests prove they are also enough)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from startupmonkey import rbac

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "deploy" / "operator-rbac.yaml"
WEBHOOK_MANIFEST = ROOT / "deploy" / "operator-webhook-rbac.yaml"


def documents(path: Path = MANIFEST) -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in yaml.safe_load_all(path.read_text()) if d}


def test_cluster_role_is_exactly_the_designed_list() -> None:
    docs = documents()
    assert set(docs) == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding"}
    assert docs["ClusterRole"]["rules"] == rbac.OPERATOR_RULES


def test_binding_ties_the_role_to_the_service_account() -> None:
    docs = documents()
    sa, binding = docs["ServiceAccount"], docs["ClusterRoleBinding"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io",
                                  "kind": "ClusterRole",
                                  "name": docs["ClusterRole"]["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": sa["metadata"]["namespace"]}]


def test_the_webhook_permission_is_its_own_named_configuration_only() -> None:
    docs = documents(WEBHOOK_MANIFEST)
    assert set(docs) == {"ClusterRole", "ClusterRoleBinding"}
    assert docs["ClusterRole"]["rules"] == rbac.webhook_rules()
    (only,) = rbac.webhook_rules()
    assert only["verbs"] == ["create", "patch"], "server-side apply: patch, create at first"
    assert only["resourceNames"] == [rbac.WEBHOOK_CONFIGURATION]
    assert docs["ClusterRoleBinding"]["roleRef"]["name"] == docs["ClusterRole"]["metadata"]["name"]
    assert docs["ClusterRoleBinding"]["subjects"] == documents()["ClusterRoleBinding"]["subjects"]
    assert rbac.webhook_rules("x")[0]["resourceNames"] == ["x"]


def test_the_operator_rules_hold_nothing_cluster_scoped() -> None:
    """They also go into Roles of the watched namespaces, where a cluster-scoped rule would
    grant nothing: the webhook's configuration is the only cluster-scoped object, apart."""
    resources = {r for rule in rbac.OPERATOR_RULES for r in rule["resources"]}
    assert "mutatingwebhookconfigurations" not in resources
    assert not any("resourceNames" in rule for rule in rbac.OPERATOR_RULES)


def test_the_default_configuration_name_is_the_operators() -> None:
    from startupmonkey.operator import config

    assert config.from_env({}).webhook.configuration_name == rbac.WEBHOOK_CONFIGURATION


def test_no_wildcards_and_the_executor_rules_are_held_by_the_operator() -> None:
    for rules in (rbac.OPERATOR_RULES, rbac.EXECUTOR_RULES, rbac.webhook_rules()):
        for rule in rules:
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[key], rule
    held = {(g, r, v) for rule in rbac.OPERATOR_RULES for g in rule["apiGroups"]
            for r in rule["resources"] for v in rule["verbs"]}
    granted = {(g, r, v) for rule in rbac.EXECUTOR_RULES for g in rule["apiGroups"]
               for r in rule["resources"] for v in rule["verbs"]}
    assert granted <= held, "RBAC lets the operator grant only what it holds"


def test_the_rbac_tables_in_the_docs_are_generated_from_rbac_py() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "hack" / "gen_rbac_docs.py"),
                             "--check"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_the_generated_tables_show_every_rule() -> None:
    sys.path.insert(0, str(ROOT / "hack"))
    try:
        import gen_rbac_docs
    finally:
        sys.path.remove(str(ROOT / "hack"))
    block = gen_rbac_docs.render()
    rows = [line for line in block.splitlines() if line.startswith("| `")]
    assert len(rows) == (len(rbac.OPERATOR_RULES) + len(rbac.webhook_rules())
                         + len(rbac.EXECUTOR_RULES))
    assert "`mutatingwebhookconfigurations` | `create`, `patch` | " \
           f"`{rbac.WEBHOOK_CONFIGURATION}`" in block
