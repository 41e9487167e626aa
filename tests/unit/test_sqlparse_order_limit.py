"""Candidates for ``ORDER BY ... LIMIT`` (issue 17.2): ``WHERE a = $1 ORDER BY b DESC LIMIT
20`` wants ``(a, b)``, which reads 20 rows; with a range on another column both keys are
named and the executor's HypoPG costs choose. Example cases, then Hypothesis properties over
generated statements of that shape and over arbitrary text (never an exception)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from startupmonkey.analyser import sqlparse
from tests.unit.test_sqlparse import NAMES

COLUMNS = ("id", "customer_id", "status", "created_at", "total")


def candidates(text: str) -> list[sqlparse.Candidate]:
    parsed = sqlparse.parse(text)
    assert isinstance(parsed, sqlparse.Parsed), parsed
    return [c for use in sqlparse.uses(parsed, NAMES) for c in sqlparse.candidates(use)]


@pytest.mark.parametrize(("text", "key", "predicate", "limited", "alternatives"), [
    ("SELECT * FROM orders WHERE customer_id = $1 ORDER BY created_at DESC LIMIT $2",
     ("customer_id", "created_at"), "equality+order", True, ()),
    ("SELECT * FROM orders ORDER BY created_at LIMIT 20", ("created_at",), "order", True, ()),
    ("SELECT * FROM orders o WHERE o.status = $1 ORDER BY o.total DESC NULLS LAST LIMIT $2",
     ("status", "total"), "equality+order", True, ()),
    # a range on another column wins the key; the order key is the alternative
    ("SELECT * FROM orders WHERE status = $1 AND total > $2 ORDER BY created_at LIMIT $3",
     ("status", "total"), "equality+range", False, (("status", "created_at"),)),
    # the same column for range and order: one key, limited
    ("SELECT * FROM orders WHERE status = $1 AND created_at < $2 ORDER BY created_at DESC "
     "LIMIT $3", ("status", "created_at"), "equality+range", True, ()),
    # ordering by an equality column adds nothing
    ("SELECT * FROM orders WHERE status = $1 ORDER BY status LIMIT 5", ("status",),
     "equality", False, ()),
])
def test_order_by_limit_keys(text: str, key: tuple[str, ...], predicate: str, limited: bool,
                             alternatives: tuple[tuple[str, ...], ...]) -> None:
    [candidate] = candidates(text)
    assert candidate.columns() == key
    assert candidate.predicate == predicate
    assert candidate.limited is limited
    assert candidate.alternatives() == alternatives


@pytest.mark.parametrize("text", [
    "SELECT * FROM orders ORDER BY created_at",                       # no LIMIT
    "SELECT * FROM orders ORDER BY created_at LIMIT ALL",
    "SELECT status, count(*) FROM orders GROUP BY status ORDER BY 2 LIMIT 5",
    "SELECT DISTINCT status FROM orders ORDER BY status LIMIT 5",
    "SELECT * FROM orders ORDER BY lower(status::text) LIMIT 5",     # an expression
    "SELECT * FROM orders o JOIN customers c ON c.id = o.customer_id "
    "ORDER BY o.created_at LIMIT 5",                                  # two FROM items
    "SELECT id FROM orders UNION SELECT id FROM customers ORDER BY id LIMIT 5",
])
def test_no_order_candidate(text: str) -> None:
    assert all(c.order is None for c in candidates(text))


@st.composite
def top_n(draw: st.DrawFn) -> tuple[str, tuple[str, ...], str | None, str | None]:
    equal = draw(st.lists(st.sampled_from(COLUMNS), unique=True, max_size=2))
    rest = [c for c in COLUMNS if c not in equal]
    rng = draw(st.none() | st.sampled_from(rest))
    order = draw(st.sampled_from(COLUMNS))
    parts = [f"{c} = ${n}" for n, c in enumerate(equal, start=1)]
    if rng:
        parts.append(f"{rng} {draw(st.sampled_from(['<', '<=', '>', '>=']))} $9")
    where = f" WHERE {' AND '.join(parts)}" if parts else ""
    direction = draw(st.sampled_from(["", " ASC", " DESC", " DESC NULLS LAST"]))
    limit = draw(st.sampled_from(["$8", "20", "ALL"]))
    text = f"SELECT * FROM orders{where} ORDER BY {order}{direction} LIMIT {limit}"
    return text, tuple(equal), rng, (order if order not in equal else None)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(top_n())
def test_generated_top_n_statements(case: tuple[str, tuple[str, ...], str | None,
                                                str | None]) -> None:
    text, equal, rng, order = case
    found = candidates(text)
    if "LIMIT ALL" in text:  # no limit: every matching row is read, nothing to order by
        order = None
    if not equal and not rng and order is None:
        assert found == []
        return
    [candidate] = found
    assert candidate.equal == equal and candidate.range == rng and candidate.order == order
    key = candidate.columns()
    assert key == (*equal, *([rng or order] if (rng or order) else []))[:sqlparse.MAX_WIDTH]
    assert set(key) <= set(COLUMNS) and len(key) <= sqlparse.MAX_WIDTH
    assert candidate.limited == (order is not None and rng in (None, order)
                                 and key[-1] == order)
    for other in candidate.alternatives():
        assert other != key and other[-1] == order and rng is not None


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("SELCTFROMWHRDBYLIMTASC orders$1=<>(),*0"
                                             "customer_id created_at")), max_size=80))
def test_arbitrary_text_never_raises(text: str) -> None:
    parsed = sqlparse.parse(text)
    if isinstance(parsed, sqlparse.Parsed):
        for use in sqlparse.uses(parsed, NAMES):
            for candidate in sqlparse.candidates(use):
                assert len(candidate.columns()) <= sqlparse.MAX_WIDTH
                candidate.alternatives()
                assert isinstance(candidate.limited, bool)
