"""deploy/operator-rbac.yaml is exactly rbac.OPERATOR_RULES, bound to the operator's account,
with no wildcards anywhere (the e2e tests prove it is also enough)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from startupmonkey import rbac

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "deploy" / "operator-rbac.yaml"


def documents() -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in yaml.safe_load_all(MANIFEST.read_text()) if d}


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


def test_no_wildcards_and_the_executor_rules_are_held_by_the_operator() -> None:
    for rules in (rbac.OPERATOR_RULES, rbac.EXECUTOR_RULES):
        for rule in rules:
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[key], rule
    held = {(g, r, v) for rule in rbac.OPERATOR_RULES for g in rule["apiGroups"]
            for r in rule["resources"] for v in rule["verbs"]}
    granted = {(g, r, v) for rule in rbac.EXECUTOR_RULES for g in rule["apiGroups"]
               for r in rule["resources"] for v in rule["verbs"]}
    assert granted <= held, "RBAC lets the operator grant only what it holds"
