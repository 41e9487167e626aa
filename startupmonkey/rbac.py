"""The Kubernetes permissions of each component: exactly the lists in docs/design.md#rbac.

The operator creates the executor's Role from :data:`EXECUTOR_RULES`; the Helm chart's
ClusterRole (or per-namespace Roles) for the operator is checked against
:data:`OPERATOR_RULES` by a test. Only with the approver webhook on does the operator also get
:func:`webhook_rules`: a small ClusterRole (the configuration is cluster-scoped, so a Role
could not grant it) limited by ``resourceNames`` to the one MutatingWebhookConfiguration it
server-side applies. Secrets cannot be limited to the ones monitors name (RBAC has no name
prefix or label selector for ``get``): a namespace-scoped install (``watchNamespaces``) or, in
a cluster-wide one, ``secretNamespaces`` is what confines them (docs/decisions.md). Collector
and analyser get no API access at all (no rules, automountServiceAccountToken off). No
wildcards.
"""

from __future__ import annotations

from typing import Any

GROUP = "startupmonkey.dev"
Rule = dict[str, Any]


def rule(group: str, resources: list[str], verbs: list[str]) -> Rule:
    """One PolicyRule."""
    return {"apiGroups": [group], "resources": resources, "verbs": verbs}


#: The executor's Role in its monitor's namespace.
EXECUTOR_RULES: list[Rule] = [
    rule(GROUP, ["databasemonitors"], ["get", "list", "watch"]),
    rule(GROUP, ["databasemonitors/status"], ["patch"]),
    rule(GROUP, ["remediations", "remediations/status"],
         ["get", "list", "watch", "create", "patch"]),
    rule("", ["events"], ["create"]),
]

_CHILD_VERBS = ["get", "list", "watch", "create", "patch", "delete"]

#: The operator's ClusterRole (or Roles in the watched namespaces).
OPERATOR_RULES: list[Rule] = [
    rule(GROUP, ["databasemonitors"], ["get", "list", "watch", "patch"]),
    # Status: merge patches only (the operator's keys; kopf writes nothing there).
    rule(GROUP, ["databasemonitors/status"], ["patch"]),
    # Children carry blockOwnerDeletion: true, which the OwnerReferencesPermissionEnforcement
    # admission plugin allows only to who may update the owner's finalizers.
    rule(GROUP, ["databasemonitors/finalizers"], ["update"]),
    rule(GROUP, ["remediations"], ["list", "watch", "delete"]),  # retention
    rule("", ["configmaps", "services", "serviceaccounts"], _CHILD_VERBS),
    rule("apps", ["deployments"], _CHILD_VERBS),
    rule("networking.k8s.io", ["networkpolicies"], _CHILD_VERBS),
    rule("rbac.authorization.k8s.io", ["roles", "rolebindings"], _CHILD_VERBS),
    # get: does a Secret a monitor names exist, with the keys it names (a get returns the
    # values too: RBAC cannot split them off); create and patch: its own generated Secrets.
    rule("", ["secrets"], ["get", "create", "patch"]),
    rule("", ["events"], ["create"]),
    # Everything it grants the executor (RBAC lets it grant only what it holds). The operator
    # uses two of these itself: get and patch on remediations, to record a notification's
    # delivery in the annotation startupmonkey.dev/notified (operator/notify.py; the Secrets
    # holding webhook URLs are read with the get on secrets above).
    *EXECUTOR_RULES,
]

#: The operator's rights on Secrets, alone. A cluster-wide install with ``secretNamespaces``
#: grants them only in those namespaces (a Role each), the rest by the ClusterRole.
SECRET_RULES: list[Rule] = [r for r in OPERATOR_RULES if "secrets" in r["resources"]]


def operator_rules(secrets: bool = True) -> list[Rule]:
    """:data:`OPERATOR_RULES`, or without :data:`SECRET_RULES` (the ClusterRole of a
    cluster-wide install that confines Secret access with ``secretNamespaces``)."""
    return [r for r in OPERATOR_RULES if secrets or r not in SECRET_RULES]

#: The MutatingWebhookConfiguration of the approver webhook (the operator's default name,
#: ``STARTUPMONKEY_WEBHOOK_CONFIGURATION_NAME``).
WEBHOOK_CONFIGURATION = "startupmonkey-approved-by"


def webhook_rules(configuration: str = WEBHOOK_CONFIGURATION) -> list[Rule]:
    """The operator's extra ClusterRole when the approver webhook is on: its one configuration,
    by name. Server-side apply is a PATCH; when the object is missing the API server creates it
    and checks ``create`` too, for that same name (so an unnamed POST is still refused). The
    operator never reads, lists, watches, updates or deletes configurations."""
    return [{"apiGroups": ["admissionregistration.k8s.io"],
             "resources": ["mutatingwebhookconfigurations"],
             "resourceNames": [configuration], "verbs": ["create", "patch"]}]


def role(name: str, namespace: str, rules: list[Rule]) -> dict[str, Any]:
    """A namespaced Role object."""
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": name, "namespace": namespace}, "rules": rules}


def role_binding(name: str, namespace: str, serviceaccount: str) -> dict[str, Any]:
    """Bind the Role ``name`` to a ServiceAccount of the same namespace."""
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": name, "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": serviceaccount,
                          "namespace": namespace}]}
