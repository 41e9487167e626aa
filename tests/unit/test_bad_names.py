"""Bad names from outside get a one-line error, and names never collide (issue 23.5)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from startupmonkey import manifest
from startupmonkey.analyser import findings
from startupmonkey.models import monitor

MANIFEST = """apiVersion: startupmonkey.dev/v1alpha1
kind: DatabaseMonitor
metadata:
  name: shop
  namespace: {namespace}
spec:
  database:
    host: 127.0.0.1
    dbname: shop
    credentialsSecret:
      name: shop-db
"""
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


@pytest.mark.parametrize("namespace", ["a b", "UPPER", "a.b", "-a", "a-", "x" * 64, "'é'"])
def test_a_namespace_that_is_not_a_dns_label_is_one_readable_problem(
        tmp_path: Path, namespace: str) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(MANIFEST.format(namespace=namespace))

    with pytest.raises(manifest.ManifestError) as info:
        manifest.load(path)

    (problem,) = info.value.problems
    assert problem.startswith("metadata.namespace:") and "RFC 1123" in problem


def test_a_manifest_that_is_not_utf8_is_one_readable_problem(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_bytes(MANIFEST.format(namespace="prod").encode() + b"# \xff\xfe\n")

    with pytest.raises(manifest.ManifestError) as info:
        manifest.load(path)

    assert info.value.problems == [
        f"not UTF-8 text (byte {len(MANIFEST.format(namespace='prod')) + 2}): "
        "a manifest is YAML in UTF-8"]


@settings(max_examples=300, deadline=None)
@given(namespace=st.text(max_size=70))
def test_a_namespace_is_accepted_exactly_when_it_is_a_dns_label(namespace: str) -> None:
    valid = len(namespace) <= 63 and DNS_LABEL.fullmatch(namespace) is not None
    try:
        monitor.check_namespace(namespace)
        accepted = True
    except ValueError:
        accepted = False
    assert accepted == valid


NAMES = st.text(st.characters(exclude_characters="\x00"), min_size=1, max_size=12)


@settings(max_examples=500, deadline=None)
@given(a=st.tuples(NAMES, NAMES), b=st.tuples(NAMES, NAMES))
def test_two_different_tables_never_share_a_key(a: tuple[str, str],
                                                b: tuple[str, str]) -> None:
    if a != b:
        assert findings.table_key(*a) != findings.table_key(*b)


def test_the_keys_of_ordinary_names_are_unchanged_and_dotted_names_are_told_apart() -> None:
    assert findings.table_key("public", "orders") == "public.orders"
    assert findings.table_key("a.b", "c") == '"a.b".c'
    assert findings.table_key("a", "b.c") == 'a."b.c"'


@pytest.mark.parametrize("name", ["shop\n", "prod\n"])
def test_a_trailing_newline_is_not_a_valid_name_or_namespace(name: str) -> None:
    # Found by Hypothesis: re.match with "$" accepted a name ending in a newline.
    with pytest.raises(ValueError):
        monitor.check_name(name)
    with pytest.raises(ValueError):
        monitor.check_namespace(name)
