"""The operator's Secret rights (issue 24.7): one rule, the least the operator's Secret code
needs, which a cluster-wide install can move into Roles of chosen namespaces
(``secretNamespaces``) without touching any other right."""

from __future__ import annotations

from startupmonkey import rbac


def test_secret_rights_are_one_rule_without_list_watch_or_delete() -> None:
    assert rbac.SECRET_RULES == [{"apiGroups": [""], "resources": ["secrets"],
                                  "verbs": ["get", "create", "patch"]}]


def test_without_secrets_is_everything_else_in_the_same_order() -> None:
    rest = rbac.operator_rules(secrets=False)
    assert not any("secrets" in r["resources"] for r in rest)
    assert [r for r in rbac.OPERATOR_RULES if r not in rbac.SECRET_RULES] == rest
    assert rbac.operator_rules() == rbac.OPERATOR_RULES


def test_the_executor_gets_no_secret_rights() -> None:
    assert not any("secrets" in r["resources"] for r in rbac.EXECUTOR_RULES)
