"""What the components export, and which metrics a PromQL expression names.

:func:`exported` builds every component's real metrics on fresh ``prometheus_client``
registries (the classes the processes build on ``Observability.registry``) and lists the
sample names a scrape shows: a counter ``x`` as ``x_total``, a histogram as ``x_bucket``,
``x_count``, ``x_sum``, ... together with each metric's label names. :func:`selectors` reads
the metric selectors of a PromQL expression (the alert rules, the Grafana dashboard) with a
small lexer: strings, ranges, grouping clauses, function calls and keywords are not metrics.
Whether an expression *parses* is promtool's job (tests/e2e/test_alerts.py).
"""

from __future__ import annotations

import dataclasses
import re

import prometheus_client
from prometheus_client.metrics import MetricWrapperBase

from startupmonkey import observability
from startupmonkey.analyser import metrics as analyser_metrics
from startupmonkey.collector import metrics as collector_metrics
from startupmonkey.executor import metrics as executor_metrics
from startupmonkey.operator import metrics as operator_metrics

#: Labels Prometheus and the chart's PodMonitors put on every scraped series.
TARGET_LABELS = frozenset({"namespace", "pod", "container", "endpoint", "job", "instance",
                           "service", "monitor", "component"})
_SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",), "info": ("_info",),
             "histogram": ("_bucket", "_count", "_sum", "_created"),
             "summary": ("", "_count", "_sum", "_created")}
_KEYWORDS = frozenset({"and", "or", "unless", "offset", "bool", "by", "without", "on",
                       "ignoring", "group_left", "group_right", "inf", "nan", "atan2"})
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_MATCHER = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*")\s*,?')
_TOKEN = re.compile(r"[0-9][0-9.]*[a-zA-Z]*|[A-Za-z_:][A-Za-z0-9_:]*|\{[^}]*\}|\[[^]]*\]|.",
                    re.DOTALL)


def exported() -> dict[str, frozenset[str]]:
    """Every sample name some component exports -> its label names."""
    registry = prometheus_client.CollectorRegistry()
    owners = [operator_metrics.OperatorMetrics(registry), executor_metrics.Metrics(registry),
              collector_metrics.Metrics(registry), analyser_metrics.Metrics(registry),
              observability.Health(registry)]
    labels: dict[str, set[str]] = {}
    for owner in owners:
        for wrapper in vars(owner).values():
            if isinstance(wrapper, MetricWrapperBase):
                for family in wrapper.describe():
                    labels.setdefault(family.name, set()).update(wrapper._labelnames)
    names: dict[str, frozenset[str]] = {}
    for family in registry.collect():
        family_labels = set(labels.get(family.name, ()))
        for sample in family.samples:
            family_labels.update(sample.labels)
        for suffix in _SUFFIXES[family.type]:
            extra = {"le"} if suffix == "_bucket" else set()
            names[family.name + suffix] = frozenset(family_labels - {"le"} | extra)
    return names


@dataclasses.dataclass(frozen=True)
class Selector:
    """One metric selector: ``name{label op "value", ...}``."""

    metric: str
    matchers: tuple[tuple[str, str, str], ...]


def selectors(expr: str) -> list[Selector]:
    """The metric selectors of a PromQL expression, in order."""
    strings: list[str] = []

    def hide(match: re.Match[str]) -> str:
        strings.append(match.group(0))
        return f'"{len(strings) - 1}"'

    text = _GROUPING.sub(" ", _STRING.sub(hide, expr))
    tokens = [t for t in _TOKEN.findall(text) if not t.isspace()]
    found: list[Selector] = []
    for i, token in enumerate(tokens):
        following = tokens[i + 1] if i + 1 < len(tokens) else ""
        if token.startswith("{"):
            previous = tokens[i - 1] if i else ""
            if not _is_name(previous) or previous in _KEYWORDS:
                found.append(Selector("", _matchers(token, strings)))
            continue
        if not _is_name(token) or token.lower() in _KEYWORDS or following == "(":
            continue
        body = following if following.startswith("{") else "{}"
        found.append(Selector(token, _matchers(body, strings)))
    return found


def _is_name(token: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z_:][A-Za-z0-9_:]*", token))


def _matchers(body: str, strings: list[str]) -> tuple[tuple[str, str, str], ...]:
    inner = body[1:-1]
    out = []
    for label, op, quoted in _MATCHER.findall(inner):
        out.append((label, op, strings[int(quoted[1:-1])][1:-1]))
    if _MATCHER.sub("", inner).strip():
        raise ValueError(f"cannot read the matchers {body!r}")
    return tuple(out)
