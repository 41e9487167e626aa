"""kopf wiring: settings (storage, finalizer, peering, watches) and the JSON log filter."""

from __future__ import annotations

import logging

import kopf

from startupmonkey.operator import config, handlers, kube, main, monitor


def test_kopf_keeps_its_state_in_our_annotations_and_uses_our_finalizer() -> None:
    ks = handlers.kopf_settings(config.from_env({
        "STARTUPMONKEY_WATCHING_INACTIVITY_TIMEOUT": "45s",
        "STARTUPMONKEY_WATCHING_SERVER_TIMEOUT": "5m"}))
    assert ks.persistence.finalizer == "startupmonkey.dev/drain"
    assert isinstance(ks.persistence.progress_storage, kopf.AnnotationsProgressStorage)
    assert ks.persistence.progress_storage.prefix == "startupmonkey.dev"
    assert isinstance(ks.persistence.diffbase_storage, kopf.AnnotationsDiffBaseStorage)
    assert ks.peering.standalone is True
    assert ks.scanning.disabled is True
    assert ks.watching.inactivity_timeout == 45
    assert ks.watching.server_timeout == 300 and isinstance(ks.watching.server_timeout, int)
    assert len(ks.watching.label_selectors) == len(handlers.CHILDREN)
    assert set(ks.watching.label_selectors.values()) == {
        "app.kubernetes.io/managed-by=startupmonkey-operator"}


def test_every_trigger_is_registered_on_our_own_registry() -> None:
    reg = handlers.registry(config.from_env({}))
    assert kopf.get_default_registry() is not reg, "no import-time side effects"

    def ids(part: str) -> set[str]:  # kopf has no public listing: read its registries
        return {str(h.id) for h in getattr(reg, part).get_all_handlers()}

    assert ids("_changing") == {"reconcile", "drain"}
    assert ids("_spawning") == set(), "no timer per monitor (issue 19, item 5)"
    assert ids("_watching") == {"status-events", "notify",
                                *(f"child-{c[2]}" for c in handlers.CHILDREN)}
    assert {"startup", "cleanup", "login_via_client"} <= ids("_activities")


def test_kopf_records_lose_their_settings_and_routine_successes() -> None:
    quiet = main.KopfExtras()
    routine = logging.makeLogRecord({"msg": "Handler 'child-deployments' succeeded.",
                                     "levelno": logging.INFO, "name": "kopf.objects"})
    assert quiet.filter(routine) is False
    noted = logging.makeLogRecord({
        "msg": "Handler 'reconcile' succeeded.", "levelno": logging.INFO,
        "settings": object(), "k8s_skip": False,
        "k8s_ref": {"kind": "DatabaseMonitor", "namespace": "prod", "name": "shop"}})
    assert quiet.filter(noted) is True
    assert not hasattr(noted, "settings") and not hasattr(noted, "k8s_ref")
    assert noted.__dict__["object"] == "DatabaseMonitor prod/shop"


def test_paths_and_owners() -> None:
    assert kube.DEPLOYMENT.path("prod", "shop-executor") == \
        "/apis/apps/v1/namespaces/prod/deployments/shop-executor"
    assert kube.CONFIGMAP.path("prod") == "/api/v1/namespaces/prod/configmaps"
    assert kube.MONITOR.path("prod", "shop", "status") == \
        "/apis/startupmonkey.dev/v1alpha1/namespaces/prod/databasemonitors/shop/status"
    assert kube.REMEDIATION.path(None) == "/apis/startupmonkey.dev/v1alpha1/remediations"
    view = monitor.parse({"metadata": {"name": "shop", "namespace": "prod", "uid": "u"},
                          "spec": {"database": {"host": "h", "dbname": "d",
                                                "credentialsSecret": {"name": "s"}}}})
    child = {"metadata": {"namespace": "prod", "ownerReferences": [view.owner_reference()]}}
    assert monitor.owner_of(child) == ("prod", "shop")
    assert monitor.owner_of({"metadata": {"namespace": "prod"}}) is None
