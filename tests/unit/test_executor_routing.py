"""Which database a detection's action runs in (``executor.admission.route``), for any names.

A detection names its database; its key carries ``db=<name>/`` after the detector for any
database but the executor's home one (``startupmonkey.models.messages.detection_key``). The
executor acts in another database only when it was told to (``executor.databases``) and the key
names exactly that database; in the home one only for the home name with a key naming none;
everything else is refused, never an exception.
"""

from __future__ import annotations

from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from startupmonkey import settings as sm_settings
from startupmonkey.executor import admission
from startupmonkey.models import messages
from startupmonkey.models.enums import DetectorId

#: Characters that make names interesting to quote and to parse: quotes, slashes, "db=", case.
_ALPHABET = st.sampled_from([*'ab_AB"/= .$1é', "db=", "\n", "template"])
NAMES = st.lists(_ALPHABET, min_size=1, max_size=8).map("".join).filter(
    lambda name: sm_settings.database_name_problem(name) is None) | st.sampled_from(
    ["shop", "Shop", "template0", "template1", "db", "db=shop", 'a"b', "a/b", "postgres"])
TARGETS = st.sampled_from(["public.orders", '"db=x".orders', "pid=12@t/e", "db=", "x/y",
                           'db="a"/public.t'])


def _executor(home: str, databases: list[str] | Literal["all"],
              exclude: list[str]) -> sm_settings.ExecutorSettings:
    return sm_settings.ExecutorSettings(
        database=sm_settings.DatabaseLogin(host="h", dbname=home, user="u"),
        databases=databases, exclude_databases=exclude)


def _watched(databases: list[str] | Literal["all"], exclude: list[str], name: str) -> bool:
    if name in ("template0", "template1"):
        return False
    return name not in exclude if databases == "all" else name in databases


@st.composite
def _cases(draw: st.DrawFn) -> tuple[str, str, str, list[str] | Literal["all"], list[str],
                                     str | None]:
    home = draw(NAMES)
    pool = draw(st.lists(NAMES, min_size=1, max_size=5, unique=True))
    every = draw(st.booleans())
    databases: list[str] | Literal["all"] = "all" if every else draw(
        st.lists(st.sampled_from(pool), unique=True))
    exclude = draw(st.lists(st.sampled_from(pool), unique=True)) if every else []
    database = draw(st.sampled_from([home, *pool]))
    key_database = draw(st.sampled_from([None, home, database, *pool]))
    return home, database, draw(TARGETS), databases, exclude, key_database


@settings(max_examples=600, deadline=None)
@given(_cases(), st.sampled_from(list(DetectorId)))
def test_a_detection_runs_only_where_its_database_and_key_agree_and_are_watched(
        case: tuple[str, str, str, list[str] | Literal["all"], list[str], str | None],
        detector: DetectorId) -> None:
    home, database, target, databases, exclude, key_database = case
    key = messages.detection_key("ns", "shop", detector, target, key_database)
    executor = _executor(home, databases, exclude)
    decided = admission.route(database, key, home, executor.covers)
    bare = key_database is None and not target.startswith("db=")
    if database == home:
        expected: str | None = "home" if bare else None
    else:
        names_it = key_database == database or (
            key_database is None and target.startswith(f"db={messages.quote_ident(database)}/"))
        expected = database if _watched(databases, exclude, database) and names_it else None
    if expected == "home":
        assert decided == admission.Route(), (database, key)
    elif expected is None:
        assert decided.refusal, (database, key)
    else:
        assert decided == admission.Route(database=database), (database, key)


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=80), st.text(min_size=3, max_size=200), st.text(max_size=80),
       st.lists(st.text(max_size=20), max_size=4))
def test_routing_never_raises_whatever_the_strings(database: str, key: str, home: str,
                                                   watched: list[str]) -> None:
    decided = admission.route(database, key, home, lambda name: name in watched)
    if decided.refusal is not None:
        assert len(decided.refusal) < 400, "a hostile name is cut in the reason"
        assert "\n" not in decided.refusal
    elif decided.database is None:
        assert database == home and not messages.key_names_database(key)
    else:
        assert decided.database == database and database in watched and database != home
        assert messages.key_target(key).startswith(f"db={messages.quote_ident(database)}/")


@pytest.mark.parametrize(("database", "key", "expected"), [
    ("shop", "ns/m/stale_statistics/public.orders", admission.Route()),
    ("b", "ns/m/stale_statistics/db=b/public.orders", admission.Route(database="b")),
    ("Shop B", 'ns/m/stale_statistics/db="Shop B"/public.orders',
     admission.Route(database="Shop B")),
    ("Shop B", "ns/m/stale_statistics/db=Shop B/public.orders", None),  # not quoted
    ("b", "ns/m/stale_statistics/db=bb/public.orders", None),
    ("b", "ns/m/stale_statistics/public.orders", None),
    ("shop", "ns/m/stale_statistics/db=shop/public.orders", None),
    ("c", "ns/m/stale_statistics/db=c/public.orders", None),  # not watched
    ("template1", "ns/m/stale_statistics/db=template1/public.orders", None),
])
def test_examples(database: str, key: str, expected: admission.Route | None) -> None:
    executor = _executor("shop", ["b", "Shop B", "template1"], [])
    decided = admission.route(database, key, "shop", executor.covers)
    if expected is None:
        assert decided.refusal
    else:
        assert decided == expected


def test_the_analyser_and_the_executor_build_and_read_keys_alike() -> None:
    key = messages.detection_key("ns", "m", DetectorId.DEAD_TUPLES, "public.t", 'we"ird/db')
    assert key == 'ns/m/dead_tuples/db="we""ird/db"/public.t'
    assert messages.key_in_database(key, 'we"ird/db')
    assert not messages.key_in_database(key, "we")
    assert messages.detection_key("ns", "m", DetectorId.DEAD_TUPLES, "public.t") == \
        "ns/m/dead_tuples/public.t"


def test_executor_databases_are_validated_like_the_analysers() -> None:
    assert "databases" not in _executor("shop", [], []).dump()
    with pytest.raises(ValueError, match="excludeDatabases applies only with databases: all"):
        _executor("shop", ["b"], ["c"])
    with pytest.raises(ValueError, match="listed twice"):
        _executor("shop", ["b", "b"], [])
    with pytest.raises(ValueError, match="at most"):
        _executor("shop", [f"d{i}" for i in range(sm_settings.MAX_DATABASES)], [])
    every = _executor("shop", "all", ["c"])
    assert every.covers("b") and not every.covers("c") and not every.covers("template0")


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=70) | st.sampled_from(
    ["shop\0", "\0", "shop\0x", "b" * 64, "é" * 32, "\ud800"]))
def test_a_name_no_database_can_have_is_refused_even_under_all(database: str) -> None:
    """libpq cuts a name at a NUL and the server cuts it at 63 bytes, each to another
    database's name: such a name is refused before anything connects, whatever the list."""
    key = messages.detection_key("ns", "m", DetectorId.DEAD_TUPLES, "public.t", database)
    decided = admission.route(database, key, "shop", lambda name: True)
    if sm_settings.database_name_problem(database) is not None:
        assert decided.refusal and decided.outcome == "bad_database", database
    else:
        assert decided.refusal is None or decided.outcome == "other_database"


@pytest.mark.parametrize("database", ["shop\0x", "b\0", "x" * 64, "é" * 32])
def test_examples_of_names_cut_by_libpq_or_the_server(database: str) -> None:
    every = _executor("shop", "all", [])
    key = messages.detection_key("ns", "m", DetectorId.DEAD_TUPLES, "public.t", database)
    decided = admission.route(database, key, "shop", every.covers)
    assert decided.outcome == "bad_database" and decided.refusal
    assert "\0" not in decided.refusal
