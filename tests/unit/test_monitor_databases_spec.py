"""``spec.database.databases`` / ``allDatabases`` / ``excludeDatabases`` of a DatabaseMonitor:
what the model accepts (the pydantic mirror of the CRD's CEL rules, in the same words), and
what the operator's ConfigMap and ``startupmonkey run`` render of it into the collector,
analyser and executor blocks (one function, ``settings.watched_databases``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from startupmonkey import cli, crdgen, runner
from startupmonkey import settings as sm_settings
from startupmonkey.models import dbnames
from startupmonkey.models import monitor as models
from startupmonkey.operator import monitor as op_monitor
from startupmonkey.operator import render

HOME = "shop"


def _database(**extra: Any) -> dict[str, Any]:
    return {"host": "db.shop", "dbname": HOME, "credentialsSecret": {"name": "shop-db"},
            **extra}


def _manifest(**extra: Any) -> dict[str, Any]:
    return {"apiVersion": "startupmonkey.dev/v1alpha1", "kind": "DatabaseMonitor",
            "metadata": {"name": "shop", "namespace": "prod", "uid": "u-1", "generation": 1},
            "spec": {"database": _database(**extra)}}


def _problem(**extra: Any) -> str:
    with pytest.raises(pydantic.ValidationError) as caught:
        models.DatabaseSpec.model_validate(_database(**extra))
    return str(caught.value)


def _blocks(config: sm_settings.ComponentConfig) -> list[Any]:
    assert config.collector and config.analyser and config.executor
    return [config.collector, config.analyser, config.executor]


def _rendered_by_run(manifest: dict[str, Any], tmp_path: Path) -> sm_settings.ComponentConfig:
    """What ``startupmonkey run`` writes (``LocalPlane.render``; no child is started)."""
    plane = runner.LocalPlane(models.DatabaseMonitor.model_validate(manifest), "app", None,
                              tmp_path / "audit.jsonl")
    try:
        path = tmp_path / "config.yaml"
        path.write_text(sm_settings.dump(plane.render()))
        return sm_settings.load(path)
    finally:
        plane.stop()


def _rendered_by_operator(manifest: dict[str, Any], tmp_path: Path
                          ) -> sm_settings.ComponentConfig:
    """What the operator puts in the monitor's ConfigMap, read back as a component would."""
    path = tmp_path / "configmap.yaml"
    path.write_text(render.config_text(op_monitor.parse(manifest)))
    return sm_settings.load(path)


# -- the model ----------------------------------------------------------------------------------


def test_a_list_and_all_with_exclusions_are_accepted_and_the_default_is_unchanged() -> None:
    listed = models.DatabaseSpec.model_validate(_database(databases=["billing", "Shop B"]))
    assert listed.databases == ["billing", "Shop B"] and not listed.all_databases
    every = models.DatabaseSpec.model_validate(
        _database(allDatabases=True, excludeDatabases=["scratch"]))
    assert every.all_databases and every.exclude_databases == ["scratch"]
    # a monitor of one database dumps exactly as before the fields existed
    plain = models.DatabaseSpec.model_validate(_database())
    assert set(plain.dump()) == {"host", "port", "dbname", "sslMode", "credentialsSecret"}
    assert plain.databases == [] and plain.exclude_databases == []


@pytest.mark.parametrize(("extra", "words"), [
    ({"databases": ["template0"]}, models.TEMPLATES_MESSAGE),
    ({"databases": ["a", "template1"]}, models.TEMPLATES_MESSAGE),
    ({"databases": ["a", "a"]}, "'a' is listed twice"),
    ({"databases": ["x" * 64]}, "is 64 bytes long; a database name has at most 63"),
    ({"databases": ["é" * 32]}, "is 64 bytes long"),
    ({"databases": ["a\0b"]}, "contains a NUL character"),
    ({"databases": [""]}, "a database name cannot be empty"),
    ({"databases": [f"d{i}" for i in range(32)]}, "32 names; at most 31"),
    ({"databases": [HOME]}, models.HOME_MESSAGE),
    ({"databases": "all"}, "for every database of the server set allDatabases: true"),
    ({"databases": "billing"}, "Input should be a valid list"),
    ({"databases": ["a"], "excludeDatabases": ["b"]}, models.EXCLUDE_MESSAGE),
    ({"excludeDatabases": ["b"]}, models.EXCLUDE_MESSAGE),
    ({"allDatabases": True, "databases": ["a"]}, models.BOTH_MESSAGE),
    ({"allDatabases": True, "excludeDatabases": [HOME]}, "names the home database"),
    ({"allDatabases": True, "excludeDatabases": ["b", "b"]}, "'b' is listed twice"),
    ({"allDatabases": True, "excludeDatabases": [f"d{i}" for i in range(65)]},
     "65 names; at most 64"),
])
def test_refused_lists_say_why(extra: dict[str, Any], words: str) -> None:
    assert words in _problem(**extra)


def test_every_problem_of_a_list_is_said_at_once() -> None:
    said = _problem(databases=["template0", "a", "a", "x" * 70])
    assert all(words in said for words in
               (models.TEMPLATES_MESSAGE, "listed twice", "70 bytes long"))


def test_templates_in_the_exclusions_are_harmless_and_accepted() -> None:
    spec = models.DatabaseSpec.model_validate(
        _database(allDatabases=True, excludeDatabases=["template0"]))
    assert spec.exclude_databases == ["template0"]


def test_the_crd_carries_the_rules_the_model_mirrors() -> None:
    spec = crdgen.database_monitor_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    database = spec["properties"]["spec"]["properties"]["database"]
    messages = {rule["message"] for rule in database["x-kubernetes-validations"]}
    assert {models.BOTH_MESSAGE, models.EXCLUDE_MESSAGE,
            f"database.databases {models.HOME_MESSAGE}"} <= messages
    listed = database["properties"]["databases"]
    assert listed["maxItems"] == dbnames.MAX_DATABASES - 1
    assert listed["items"] == {"maxLength": 63, "minLength": 1, "type": "string"}
    assert {rule["message"] for rule in listed["x-kubernetes-validations"]} == {
        f"database.databases: {models.BYTES_MESSAGE}",
        f"database.databases: {models.TWICE_MESSAGE}",
        f"database.databases: {models.TEMPLATES_MESSAGE}"}
    assert database["properties"]["allDatabases"]["default"] is False
    assert database["properties"]["excludeDatabases"]["maxItems"] == 64


# -- any name ------------------------------------------------------------------------------------

#: Names PostgreSQL accepts (quoted), the home one and the templates aside.
VALID_NAMES = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\0"),
                      min_size=1, max_size=63).filter(
    lambda name: dbnames.database_name_problem(name) is None
    and name not in dbnames.TEMPLATE_DATABASES and name != HOME)
BAD_NAMES = st.one_of(
    st.sampled_from(sorted(dbnames.TEMPLATE_DATABASES)),
    st.tuples(st.text(max_size=30), st.text(max_size=30)).map(lambda p: f"{p[0]}\0{p[1]}"),
    st.text(st.characters(exclude_categories=["Cs"]), min_size=16, max_size=80).filter(
        lambda name: len(name.encode()) > 63),
    st.just(""))


@settings(max_examples=60, deadline=None)
@given(st.lists(VALID_NAMES, max_size=31, unique=True))
def test_any_accepted_list_renders_to_settings_that_accept_it(tmp_path_factory: Any,
                                                              names: list[str]) -> None:
    tmp_path = tmp_path_factory.mktemp("render")
    manifest = _manifest(databases=names)
    models.DatabaseMonitor.model_validate(manifest)
    for config in (_rendered_by_operator(manifest, tmp_path),
                   _rendered_by_run(manifest, tmp_path)):
        for block in _blocks(config):
            assert block.databases == names and block.exclude_databases == []
        assert config.collector is not None and config.executor is not None
        assert config.collector.other_databases() == names
        assert all(config.executor.covers(name) for name in names)
        assert config.spec.database.databases == names


@settings(max_examples=40, deadline=None)
@given(st.lists(VALID_NAMES, max_size=64, unique=True))
def test_any_accepted_exclusion_renders_with_all(tmp_path_factory: Any,
                                                 names: list[str]) -> None:
    tmp_path = tmp_path_factory.mktemp("render")
    manifest = _manifest(allDatabases=True, excludeDatabases=names)
    config = _rendered_by_operator(manifest, tmp_path)
    for block in _blocks(config):
        assert block.databases == "all" and block.exclude_databases == names
    assert config.executor is not None
    assert not any(config.executor.covers(name) for name in names)


@settings(max_examples=300, deadline=None)
@given(st.lists(VALID_NAMES, max_size=10, unique=True), BAD_NAMES, st.integers(0, 10),
       st.sampled_from(["databases", "excludeDatabases"]))
def test_any_bad_name_is_refused(names: list[str], bad: str, where: int, field: str) -> None:
    names.insert(min(where, len(names)), bad)
    extra: dict[str, Any] = {field: names}
    if field == "excludeDatabases":
        if bad in dbnames.TEMPLATE_DATABASES:
            return  # excluding a template is harmless (never watched anyway)
        extra["allDatabases"] = True
    with pytest.raises(pydantic.ValidationError):
        models.DatabaseSpec.model_validate(_database(**extra))


# -- rendering ------------------------------------------------------------------------------------


@pytest.mark.parametrize("render_with", [_rendered_by_operator, _rendered_by_run])
def test_both_renderers_give_every_component_the_same_lists(render_with: Any,
                                                            tmp_path: Path) -> None:
    listed = render_with(_manifest(databases=["billing", "Shop B"]), tmp_path)
    assert [b.databases for b in _blocks(listed)] == [["billing", "Shop B"]] * 3
    every = render_with(_manifest(allDatabases=True, excludeDatabases=["scratch"]), tmp_path)
    assert [(b.databases, b.exclude_databases) for b in _blocks(every)] == \
        [("all", ["scratch"])] * 3
    alone = render_with(_manifest(), tmp_path)
    assert [(b.databases, b.exclude_databases) for b in _blocks(alone)] == [([], [])] * 3


def test_a_monitor_of_one_database_renders_no_database_keys() -> None:
    rendered = yaml.safe_load(render.config_text(op_monitor.parse(_manifest())))
    keys = {"databases", "allDatabases", "excludeDatabases"}
    for part in (rendered["spec"]["database"], rendered["collector"], rendered["analyser"],
                 rendered["executor"]):
        assert not keys & set(part), "the ConfigMap of an existing monitor changed"


def test_changing_the_list_changes_the_configmap_and_rolls_no_pod() -> None:
    """The components hot-reload the lists (the collector opens and closes sources, the
    analyser and the executor re-read what they cover): the ConfigMap changes, no restart
    hash does."""
    def hashes(manifest: dict[str, Any]) -> dict[op_monitor.Component, str]:
        view = op_monitor.parse(manifest)
        return {c: render.restart_hash(render.restart_inputs(view, c, "img:1", "7"))
                for c in op_monitor.Component}

    views = [_manifest(), _manifest(databases=["billing"]),
             _manifest(databases=["billing", "crm"]), _manifest(allDatabases=True),
             _manifest(allDatabases=True, excludeDatabases=["crm"])]
    texts = [render.config_text(op_monitor.parse(m)) for m in views]
    assert len(set(texts)) == len(texts)
    assert len({tuple(sorted(hashes(m).items())) for m in views}) == 1


def test_validate_names_the_field_and_the_problem(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """``startupmonkey validate -f`` (what ``run`` checks first) says where and why."""
    path = tmp_path / "monitor.yaml"
    path.write_text(yaml.safe_dump(_manifest(databases=["billing", "template1"])))
    assert cli.main(["validate", "-f", str(path)]) == 1
    said = capsys.readouterr().err
    assert "spec.database.databases: Value error, database.databases: template0 and " \
        "template1 are never watched (remove template1)" in said, said


@pytest.mark.parametrize("value", ["true", "yes", 1, 0])
def test_all_databases_takes_a_boolean_only_as_the_api_server_does(value: Any) -> None:
    # The CRD types it boolean: the API server refuses "true" and 1, so the model must too.
    assert "allDatabases\n  Input should be a valid boolean" in _problem(allDatabases=value)


def test_a_null_list_or_switch_is_absent_as_the_api_server_prunes_it() -> None:
    spec = models.DatabaseSpec.model_validate(
        _database(databases=None, allDatabases=None, excludeDatabases=None))
    assert (spec.databases, spec.all_databases, spec.exclude_databases) == ([], False, [])
    assert "databases" not in spec.dump() and "allDatabases" not in spec.dump()
