"""``spec.privacy.queryText``: what of a statement's text leaves the analyser.

Statement text reaches evidence (NATS detections, Remediations, Events, audit logs) from
``pg_stat_activity.query`` (session detectors: raw text with every literal the application
sent, cut by the collector and by ``track_activity_query_size``) and from
``pg_stat_statements.query`` (already normalised for plannable statements, but utility
statements such as ``ALTER ROLE ... PASSWORD '...'`` keep their literals). The engine passes
every finding's ``query`` evidence through :func:`redact_findings`:

* ``normalized`` (default): constants become ``$n`` placeholders, comments are dropped;
* ``full``: the text as read (its first :data:`QUERY_EVIDENCE_CHARS` characters);
* ``none``: no text at all.

Normalising is two passes, and the second alone never lets a literal through:

1. ``pglast.parser.normalize`` (libpg_query's version of what pg_stat_statements does) when the
   text parses and holds no backslash, so the result reads like pg_stat_statements' own text;
2. :func:`mask_literals`, a lexer for what pglast leaves (it keeps the constants of COPY,
   COMMENT, ALTER SYSTEM, column defaults, ...) and for text that does not parse (truncated
   mid-statement or mid-literal). Each quoted string, dollar-quoted string, bit/hex string
   and number becomes a placeholder, each comment is dropped, and an unterminated one runs to
   the end of the text. A backslash makes the text ambiguous (``standard_conforming_strings``
   is the server's setting, not the text's): the text is lexed both ways and whatever either
   way calls a literal is masked.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable

from pglast import parser as pg_parser

from startupmonkey.analyser import findings
from startupmonkey.models.monitor import QueryText

QUERY_EVIDENCE_CHARS = 200
"""Characters of statement text kept in evidence, after normalising."""
QUERY_KEY = "query"

_IDENT = re.compile(r"[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_$\x80-\U0010ffff]*")
_NUMBER = re.compile(r"(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)(?:[eE][+-]?\d+)?[A-Za-z0-9_]*")
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_\x80-\U0010ffff]*)?\$")
_PARAM = re.compile(r"\$(\d+)")
_STRING_PREFIX = re.compile(r"(?:[EeBbXxNn]|[Uu]&)'")


@dataclasses.dataclass(frozen=True)
class _Span:
    start: int
    end: int
    comment: bool


def _quoted(text: str, i: int, backslash: bool) -> int:
    """End (exclusive) of the single-quoted string opening at ``text[i] == "'"``; the end
    of the text when it is not closed. ``''`` is a quote inside the string; a backslash
    escapes the next character when ``backslash``."""
    n = len(text)
    j = i + 1
    while j < n:
        c = text[j]
        if backslash and c == "\\":
            j += 2
            continue
        if c == "'":
            if j + 1 < n and text[j + 1] == "'":
                j += 2
                continue
            return j + 1
        j += 1
    return n


def _comment(text: str, i: int) -> int:
    """End of the (nesting) block comment opening at ``i``; the end of the text if open."""
    depth, j, n = 0, i, len(text)
    while j < n:
        if text.startswith("/*", j):
            depth, j = depth + 1, j + 2
        elif text.startswith("*/", j):
            depth, j = depth - 1, j + 2
            if depth == 0:
                return j
        else:
            j += 1
    return n


def _spans(text: str, standard_strings: bool) -> list[_Span]:
    """Literal and comment spans of ``text`` as PostgreSQL's lexer sees them, with
    ``standard_conforming_strings`` on or off."""
    spans: list[_Span] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':  # a quoted identifier: a name, not a literal
            j = text.find('"', i + 1)
            while j != -1 and text.startswith('""', j):
                j = text.find('"', j + 2)
            i = n if j == -1 else j + 1
        elif text.startswith("--", i):
            j = text.find("\n", i)
            spans.append(_Span(i, n if j == -1 else j, True))
            i = n if j == -1 else j
        elif text.startswith("/*", i):
            j = _comment(text, i)
            spans.append(_Span(i, j, True))
            i = j
        elif (m := _STRING_PREFIX.match(text, i)) is not None or c == "'":
            quote = m.end() - 1 if m else i
            escapes = not standard_strings or (m is not None and text[i] in "Ee")
            j = _quoted(text, quote, escapes)
            spans.append(_Span(i, j, False))
            i = j
        elif c == "$" and (m := _DOLLAR_TAG.match(text, i)) is not None:
            close = text.find(m.group(), m.end())
            j = n if close == -1 else close + len(m.group())
            spans.append(_Span(i, j, False))
            i = j
        elif (m := (_PARAM if c == "$" else _IDENT).match(text, i)) is not None:
            i = m.end()  # a parameter or a name
        elif (m := _NUMBER.match(text, i)) is not None:
            spans.append(_Span(i, m.end(), False))
            i = m.end()
        else:
            i += 1
    return spans


def _merge(spans: Iterable[_Span]) -> list[_Span]:
    merged: list[_Span] = []
    for span in sorted(spans, key=lambda s: (s.start, s.end)):
        if merged and span.start < merged[-1].end:
            last = merged[-1]
            merged[-1] = _Span(last.start, max(last.end, span.end), last.comment and span.comment)
        else:
            merged.append(span)
    return merged


def mask_literals(text: str) -> str:
    """``text`` with every constant replaced by ``$n`` (numbered after the highest parameter
    already in it) and every comment by a space; never raises."""
    spans = _spans(text, standard_strings=True)
    if "\\" in text:
        spans += _spans(text, standard_strings=False)
    params = [int(m.group(1)) for m in _PARAM.finditer(text) if len(m.group(1)) < 9]
    number = max(params, default=0)
    out: list[str] = []
    at = 0
    for span in _merge(spans):
        out.append(text[at:span.start])
        if span.comment:
            out.append(" ")
        else:
            number += 1
            out.append(f"${number}")
        at = span.end
    out.append(text[at:])
    return "".join(out)


def normalize(text: str) -> str:
    """The statement text without its constants or comments (module docstring)."""
    parsed = text
    if "\\" not in text:  # pglast lexes as standard_conforming_strings = on only
        try:
            parsed = pg_parser.normalize(text)
        except Exception:  # any failure: the lexer pass alone
            parsed = text
    return mask_literals(parsed).strip()


def query_text(text: str, mode: QueryText) -> str | None:
    """What evidence carries of ``text`` under ``spec.privacy.queryText``."""
    if mode is QueryText.NONE:
        return None
    if mode is QueryText.FULL:
        return text[:QUERY_EVIDENCE_CHARS]
    return normalize(text)[:QUERY_EVIDENCE_CHARS]


def redact_findings(found: list[findings.Finding], mode: QueryText) -> list[findings.Finding]:
    """``found`` with each ``query`` evidence value passed through :func:`query_text`."""
    out = []
    for finding in found:
        value = finding.evidence.get(QUERY_KEY)
        if isinstance(value, str):
            evidence = {**finding.evidence, QUERY_KEY: query_text(value, mode)}
            finding = dataclasses.replace(finding, evidence=evidence)
        out.append(finding)
    return out
