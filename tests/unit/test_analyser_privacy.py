"""spec.privacy.queryText (issue 24, item 7): normalised statement text never carries a literal,
whether it parses or was cut anywhere (by the collector or track_activity_query_size)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from startupmonkey.analyser import findings, privacy
from startupmonkey.models import monitor, remediation
from startupmonkey.models.enums import ActionId, DetectorId
from startupmonkey.models.monitor import QueryText

# The statements around the literals hold no Q, Z or digit: whatever of those is left after
# normalising (placeholders aside) came out of a literal.
SECRET_CHARS = "QZ'\"\\$;-/* \n\tqz"
TEMPLATES = [
    "SELECT * FROM accounts WHERE secret = {} AND owner = 'x'",
    "UPDATE accounts SET note = {} WHERE id = $1",
    "INSERT INTO accounts (a, b) VALUES ({}, $2) /* app */",
    "COPY accounts FROM {}",
    "SELECT f({}, \"quoted id\") -- trailing\nFROM t",
    "COMMENT ON TABLE accounts IS {}",
    "SELECT a$b$c, {} FROM t",
]


def _standard(body: str) -> str:
    return "'" + body.replace("'", "''") + "'"


def _escaped(body: str) -> str:
    return "E'" + body.replace("\\", "\\\\").replace("'", "\\'") + "'"


@st.composite
def literal(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["standard", "escape", "dollar", "number", "bits"]))
    body = "Q" + draw(st.text(alphabet=SECRET_CHARS, max_size=30)) + "Z"
    if kind == "standard":
        return _standard(body)
    if kind == "escape":
        return _escaped(body)
    if kind == "dollar":
        tag = draw(st.sampled_from(["", "q", "tag_"]))
        assume_body = body.replace(f"${tag}$", "")
        return f"${tag}${assume_body}${tag}$"
    if kind == "bits":
        return "X'" + draw(st.text(alphabet="0123456789abcdef", min_size=1, max_size=12)) + "'"
    number = draw(st.one_of(st.integers(min_value=0), st.floats(min_value=0, allow_nan=False,
                                                                 allow_infinity=False)))
    return str(number)


def leaked(text: str) -> list[str]:
    rest = re.sub(r"\$\d+", "", text)
    return re.findall(r"[QZ0-9]+", rest)


@settings(max_examples=500, deadline=None)
@given(template=st.sampled_from(TEMPLATES), value=literal(), cut=st.floats(0, 1))
def test_normalized_text_never_holds_a_literal(template: str, value: str, cut: float) -> None:
    statement = template.format(value)
    for text in (statement, statement[:int(len(statement) * cut)]):
        out = privacy.normalize(text)
        assert not leaked(out), (text, out)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_normalize_never_raises(text: str) -> None:
    privacy.normalize(text)


@pytest.mark.parametrize(("text", "expected"), [
    ("SELECT * FROM t WHERE secret = 'hunter2' AND n = 42",
     "SELECT * FROM t WHERE secret = $1 AND n = $2"),
    ("SELECT $1, 'a'", "SELECT $1, $2"),
    ("COPY t FROM '/etc/secret'", "COPY t FROM $1"),  # pglast keeps this one: the lexer pass
    ("SELECT * FROM t WHERE a = 'cut mid-lit", "SELECT * FROM t WHERE a = $1"),
    ("SELECT $q$ cut inside a dollar quote", "SELECT $1"),
    # With standard_conforming_strings off the whole tail is one literal: both are masked.
    ("SELECT 'a\\' , 'secret'", "SELECT $1"),
    ("SELECT x /* nested /* comment */ still */ FROM t", "SELECT x   FROM t"),
    ('SELECT "we""ird", a$b$c FROM t1', 'SELECT "we""ird", a$b$c FROM t1'),
])
def test_normalize_examples(text: str, expected: str) -> None:
    assert privacy.normalize(text) == expected


def _finding(query: str) -> findings.Finding:
    return findings.Finding(
        detector=DetectorId.IDLE_IN_TRANSACTION, target_key="pid", target=remediation.Target(),
        action=ActionId.TERMINATE_SESSION, severity="warning", summary="s",
        evidence={"pid": 1, "query": query})


def test_modes() -> None:
    text = "SELECT * FROM t WHERE secret = 'hunter2' " + "x" * 300
    [normal] = privacy.redact_findings([_finding(text)], QueryText.NORMALIZED)
    [full] = privacy.redact_findings([_finding(text)], QueryText.FULL)
    [none] = privacy.redact_findings([_finding(text)], QueryText.NONE)
    assert "hunter2" not in str(normal.evidence["query"])
    assert full.evidence["query"] == text[:privacy.QUERY_EVIDENCE_CHARS]
    assert len(str(normal.evidence["query"])) <= privacy.QUERY_EVIDENCE_CHARS
    assert none.evidence["query"] is None
    assert none.evidence["pid"] == 1


def test_the_default_is_normalized() -> None:
    spec = monitor.DatabaseMonitorSpec.model_validate({"database": {
        "host": "h", "dbname": "d", "credentialsSecret": {"name": "s"}}})
    assert spec.privacy.query_text is QueryText.NORMALIZED
