"""Which majors a run of the pg_matrix tier covers (``STARTUPMONKEY_PG_MAJORS``): ``make
test`` rotates one major per commit, so every major is covered within a few landings."""

from __future__ import annotations

import hashlib

import pytest

from startupmonkey.localserv import postgres
from tests.pg_matrix import conftest

pytestmark = pytest.mark.pg_matrix


def test_rotation_covers_every_major_over_a_few_commits() -> None:
    commits = [hashlib.sha1(str(n).encode()).hexdigest() for n in range(40)]
    chosen = [conftest.rotating_major(commit) for commit in commits]
    assert set(chosen) == set(postgres.MATRIX_MAJORS)
    assert conftest.rotating_major(commits[0]) == chosen[0]  # one commit, one major


@pytest.mark.parametrize(("value", "majors"), [
    (None, postgres.MATRIX_MAJORS), ("all", postgres.MATRIX_MAJORS), ("13, 18", (13, 18)),
    ("16", (16,))])
def test_the_variable_names_the_majors(value: str | None, majors: tuple[int, ...]) -> None:
    assert conftest.selected_majors(value) == majors


@pytest.mark.parametrize("value", ["15", "12,13", ",", "latest"])
def test_a_major_outside_the_matrix_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="choose among"):
        conftest.selected_majors(value)


def test_rotate_picks_one_major_of_the_matrix() -> None:
    (major,) = conftest.selected_majors("rotate")
    assert major in postgres.MATRIX_MAJORS
