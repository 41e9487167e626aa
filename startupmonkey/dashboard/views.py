"""What the dashboard's pages show, made from the API objects: pure, no I/O.

Objects are parsed through the models (:mod:`startupmonkey.models.remediation`,
:mod:`startupmonkey.models.monitor`); an object that does not parse is counted and named on the
page, never a traceback. Everything a database or a person controls (table names, SQL text,
evidence, messages) reaches the page only through the templates' autoescaping, or, in the SVG
chart made here, through :func:`markupsafe.escape`.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlencode

from markupsafe import Markup, escape
from pydantic import ValidationError

from startupmonkey import summary
from startupmonkey.models import monitor, remediation
from startupmonkey.models.enums import ActionId, DetectorId, RemediationState

#: The query parameters of the remediations list, in the order its form shows them.
FILTER_KEYS = ("namespace", "monitor", "detector", "state", "since")
#: How many rows one page of the remediations list shows (its ``page`` parameter, from 1).
PAGE_SIZE = 100
#: The ``since`` filter's choices: created within this long before the request.
SINCE = {"1h": datetime.timedelta(hours=1), "24h": datetime.timedelta(hours=24),
         "7d": datetime.timedelta(days=7), "30d": datetime.timedelta(days=30)}


def remediation_url(namespace: str, name: str, action: str = "") -> str:
    """The stable address of one Remediation's page (or of its ``action`` confirmation)."""
    path = f"/ns/{quote(namespace, safe='')}/remediations/{quote(name, safe='')}"
    return f"{path}/{action}" if action else path


def list_url(**filters: str) -> str:
    """The remediations list with ``filters`` (empty ones left out)."""
    query = urlencode([(k, v) for k, v in filters.items() if v])
    return "/remediations" + (f"?{query}" if query else "")


#: What a live page may follow (by plural), and the shape of what names where it starts: a
#: resourceVersion (opaque to clients; etcd's are decimal), a namespace (a DNS label) and a
#: Remediation's name (a DNS subdomain).
LIVE_PLURALS = (monitor.PLURAL, remediation.PLURAL)
_VERSION = re.compile(r"[0-9A-Za-z._~:+=/-]{1,128}")
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_OBJECT_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")


@dataclasses.dataclass(frozen=True)
class Live:
    """What a live page follows: each plural from the resourceVersion its objects were listed
    at (``versions``), in ``namespace`` (None: every one), only the object ``name`` when
    set. Its address is ``/live?<plural>=<version>...&namespace=...&name=...``."""

    versions: tuple[tuple[str, str], ...]
    namespace: str | None = None
    name: str = ""

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> Live:
        """The live page a query string asks for; ValueError with the reason when it is not
        one the pages make."""
        versions = []
        for plural in LIVE_PLURALS:
            since = query.get(plural)
            if since is None:
                continue
            if not _VERSION.fullmatch(since):
                raise ValueError(f"{plural}: not a resourceVersion")
            versions.append((plural, since))
        if not versions:
            raise ValueError(f"nothing to follow: name one of {', '.join(LIVE_PLURALS)}")
        namespace, name = query.get("namespace", ""), query.get("name", "")
        if namespace and not _NAMESPACE.fullmatch(namespace):
            raise ValueError("namespace: not a namespace name")
        if name and not (_OBJECT_NAME.fullmatch(name) and namespace
                         and [p for p, _ in versions] == [remediation.PLURAL]):
            raise ValueError("name: one Remediation's name, with its namespace")
        return cls(tuple(versions), namespace or None, name)

    def url(self) -> str:
        """The event stream's address."""
        where = (("namespace", self.namespace or ""), ("name", self.name))
        return "/live?" + urlencode([*self.versions, *[(k, v) for k, v in where if v]])


def live_url(namespace: str | None, name: str = "", **versions: str) -> str:
    """The event stream of a page drawn from objects at ``versions`` (plural: resourceVersion;
    an unknown one, e.g. a list that failed, is left out); "" when there is nothing to follow
    (the page then is not live)."""
    known = tuple((plural, version) for plural, version in versions.items() if version)
    return Live(known, namespace, name).url() if known else ""


@dataclasses.dataclass(frozen=True)
class Filters:
    """The remediations list's filters; empty means any. Built from the query string by
    :meth:`parse`, which ignores what is not a known detector or state (the page then says
    so) rather than failing. ``page`` is the page of the matching rows shown, from 1."""

    namespace: str = ""
    monitor: str = ""
    detector: str = ""
    state: str = ""
    since: str = ""
    ignored: tuple[str, ...] = ()
    cutoff: datetime.datetime | None = None
    page: int = 1

    @classmethod
    def parse(cls, query: Mapping[str, str], now: datetime.datetime | None = None) -> Filters:
        """The filters of a query string (``since`` counted back from ``now``, default the
        current time); an unknown detector, state or ``since`` is dropped and named, and so is
        a ``page`` that is not a whole number from 1 (page 1 is shown)."""
        values = {k: " ".join(str(query.get(k, "")).split())[:253] for k in FILTER_KEYS}
        ignored: list[str] = []
        if values["detector"] and values["detector"] not in {d.value for d in DetectorId}:
            ignored.append(f"detector {values['detector']!r} is not a detector")
            values["detector"] = ""
        if values["state"]:
            try:
                values["state"] = RemediationState.from_token(values["state"]).value
            except ValueError:
                ignored.append(f"state {values['state']!r} is not a state")
                values["state"] = ""
        cutoff = None
        if values["since"] in SINCE:
            cutoff = (now or datetime.datetime.now(datetime.UTC)) - SINCE[values["since"]]
        elif values["since"]:
            ignored.append(f"since {values['since']!r} is not one of {', '.join(SINCE)}")
            values["since"] = ""
        page_text = " ".join(str(query.get("page", "")).split())[:20]
        page, digits = 1, page_text.lstrip("0")
        if re.fullmatch(r"[0-9]+", page_text) and digits:
            # past any last page when longer: clamped to it, and named, by list_page
            page = int(digits) if len(digits) <= 9 else 10 ** 9
        elif page_text:
            ignored.append(f"page {page_text!r} is not a page number (1, 2, ...)")
        return cls(**values, ignored=tuple(ignored), cutoff=cutoff, page=page)

    def matches(self, item: Parsed) -> bool:
        """Whether ``item`` passes every filter that is set."""
        spec = item.model.spec
        return ((not self.namespace or item.namespace == self.namespace)
                and (not self.monitor or spec.monitor == self.monitor)
                and (not self.detector or spec.detector.value == self.detector)
                and (not self.state or item.status.state.value == self.state)
                and (self.cutoff is None
                     or (item.created is not None and item.created >= self.cutoff)))

    def url(self, page: int = 1) -> str:
        """The list's address with these filters, at ``page`` (page 1: no ``page``, the
        stable address)."""
        return list_url(namespace=self.namespace, monitor=self.monitor,
                        detector=self.detector, state=self.state, since=self.since,
                        page=str(page) if page > 1 else "")


@dataclasses.dataclass(frozen=True)
class RemediationRow:
    """One line of the remediations list."""

    namespace: str
    name: str
    monitor: str
    detector: str
    action: str
    state: str
    target: str
    created: str
    summary: str
    url: str
    created_at: datetime.datetime | None = None


@dataclasses.dataclass(frozen=True)
class Parsed:
    """A Remediation object read through the model, with the metadata the pages need."""

    namespace: str
    name: str
    created: datetime.datetime | None
    annotations: Mapping[str, str]
    resource_version: str
    model: remediation.RemediationObject
    raw: Mapping[str, Any]

    @property
    def status(self) -> remediation.RemediationStatus:
        """The status, or the default (Proposed) of an object no executor has written yet."""
        return self.model.status or remediation.RemediationStatus()


def _created(metadata: Mapping[str, Any]) -> datetime.datetime | None:
    stamp = metadata.get("creationTimestamp")
    if not isinstance(stamp, str):
        return None
    try:
        created = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    # Kubernetes writes UTC; a stamp without an offset is read as UTC, so it sorts (and is
    # compared with the since filter's cutoff) with the others instead of raising TypeError.
    return created if created.tzinfo is not None else created.replace(tzinfo=datetime.UTC)


def parse_remediation(obj: Mapping[str, Any]) -> Parsed:
    """``obj`` through :class:`RemediationObject`; raises ``ValueError`` when it does not fit."""
    model = remediation.RemediationObject.model_validate(obj)
    metadata = model.metadata
    name, namespace = metadata.get("name"), metadata.get("namespace")
    if not isinstance(name, str) or not isinstance(namespace, str):
        raise ValueError("metadata.name or metadata.namespace is missing")
    annotations = metadata.get("annotations") or {}
    return Parsed(namespace=namespace, name=name, created=_created(metadata),
                  annotations={str(k): str(v) for k, v in dict(annotations).items()},
                  resource_version=str(metadata.get("resourceVersion") or ""),
                  model=model, raw=obj)


def parse_all(objects: Iterable[Mapping[str, Any]]) -> tuple[list[Parsed], list[str]]:
    """The objects that parse, newest first, and one line per object that does not."""
    parsed: list[Parsed] = []
    unreadable: list[str] = []
    for obj in objects:
        try:
            parsed.append(parse_remediation(obj))
        except (ValidationError, ValueError) as exc:
            meta = obj.get("metadata") if isinstance(obj, Mapping) else None
            name = meta.get("name", "?") if isinstance(meta, Mapping) else "?"
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            unreadable.append(f"{name}: {first}"[:300])
    parsed.sort(key=_newest_first, reverse=True)
    return parsed, unreadable


_EPOCH = datetime.datetime.min.replace(tzinfo=datetime.UTC)


def _newest_first(item: Parsed) -> tuple[datetime.datetime, str]:
    """The sort key (reversed) of newest first: creation time, then name; no time is oldest."""
    return (item.created or _EPOCH, item.name)


def target_text(target: remediation.Target) -> str:
    """``schema.table``, ``schema.table (index)``, ``pid 123`` or ""."""
    if target.table:
        shown = f"{target.schema_ or 'public'}.{target.table}"
        return f"{shown} ({target.index})" if target.index else shown
    if target.index:
        return f"{target.schema_ or 'public'}.{target.index}"
    return f"pid {target.pid}" if target.pid else ""


def when(stamp: datetime.datetime | None) -> str:
    """A time as ``2026-12-06 19:54:28 UTC``, or "-"."""
    if stamp is None:
        return "-"
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=datetime.UTC)
    return stamp.astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def row(item: Parsed) -> RemediationRow:
    """The list's line of ``item``."""
    spec = item.model.spec
    return RemediationRow(
        namespace=item.namespace, name=item.name, monitor=spec.monitor,
        detector=spec.detector.value, action=spec.action.value, state=item.status.state.value,
        target=target_text(spec.target) + remediation.where(spec.database),
        created=when(item.created),
        summary=summary.of_object(item.raw).text or spec.summary,
        url=remediation_url(item.namespace, item.name), created_at=item.created)


def rows(items: Iterable[Parsed], filters: Filters) -> list[RemediationRow]:
    """Every line that passes ``filters`` (every page), in the order given."""
    return [row(i) for i in items if filters.matches(i)]


@dataclasses.dataclass(frozen=True)
class ListPage:
    """One page of the remediations list: its rows, and where it sits among the matches."""

    rows: list[RemediationRow]
    #: The filters asked for, the page clamped to the pages there are (and named if it was).
    filters: Filters
    number: int
    pages: int
    #: How many Remediations pass the filters, and how many were listed.
    matched: int
    total: int
    #: The 1-based positions of the first and last row shown among the matches (0: none).
    first: int
    last: int

    @property
    def shown(self) -> str:
        """What the page shows, in one line."""
        if self.pages == 1:
            return f"{self.matched:,} of {self.total:,} shown."
        line = f"Rows {self.first:,}-{self.last:,} of {self.matched:,} shown"
        if self.matched != self.total:
            line += f" ({self.total:,} before the filters)"
        return f"{line}."

    @property
    def previous_url(self) -> str:
        """The page before, with the same filters; "" on the first."""
        return self.filters.url(self.number - 1) if self.number > 1 else ""

    @property
    def next_url(self) -> str:
        """The page after, with the same filters; "" on the last."""
        return self.filters.url(self.number + 1) if self.number < self.pages else ""


def list_page(items: Sequence[Parsed], filters: Filters, size: int = PAGE_SIZE) -> ListPage:
    """The page ``filters.page`` of the items that pass ``filters``, newest first: filtered on
    the parsed items, sorted, sliced, and rows built for that page only. A page past the last
    shows the last, and says so among the ignored filters."""
    matched = sorted((i for i in items if filters.matches(i)), key=_newest_first, reverse=True)
    pages = max(1, math.ceil(len(matched) / size))
    number = min(filters.page, pages)
    if number != filters.page:
        asked = "past any" if filters.page >= 10 ** 9 else str(filters.page)
        filters = dataclasses.replace(filters, page=number, ignored=(
            *filters.ignored, f"page {asked} is past the last page, {pages}: page {pages} "
                              "is shown"))
    start = (number - 1) * size
    shown = matched[start:start + size]
    return ListPage(rows=[row(i) for i in shown], filters=filters, number=number, pages=pages,
                    matched=len(matched), total=len(items), first=start + 1 if shown else 0,
                    last=start + len(shown))


#: How many of a monitor's newest Remediations its card on the overview lists.
LATEST_PER_MONITOR = 5


def latest_by_monitor(items: Iterable[Parsed], per_monitor: int = LATEST_PER_MONITOR
                      ) -> dict[tuple[str, str], list[RemediationRow]]:
    """Each monitor's newest ``per_monitor`` Remediations, newest first, keyed by (namespace,
    monitor name) as the Remediations name them (a monitor with none has no key; one that is
    not listed may have one). Rows are built only for what is kept."""
    kept: dict[tuple[str, str], list[Parsed]] = {}
    for item in sorted(items, key=_newest_first, reverse=True):
        latest = kept.setdefault((item.namespace, item.model.spec.monitor), [])
        if len(latest) < per_monitor:
            latest.append(item)
    return {key: [row(i) for i in latest] for key, latest in kept.items() if latest}


def choices(items: Sequence[Parsed]) -> dict[str, list[str]]:
    """What each filter may be set to: the namespaces and monitors seen, every detector and
    every state."""
    return {"namespace": sorted({i.namespace for i in items}),
            "monitor": sorted({i.model.spec.monitor for i in items}),
            "detector": [d.value for d in DetectorId],
            "state": [s.value for s in RemediationState],
            "since": list(SINCE)}


# --- the before/after chart ----------------------------------------------------------------

CHART_WIDTH = 480
_BAR_LEFT = 70
_BAR_MAX = 300
_BAR_HEIGHT = 26


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) and value >= 0 else None


def mean_time_chart(before_ms: float | None, after_ms: float | None,
                    before_calls: int | None = None,
                    after_calls: int | None = None) -> Markup | None:
    """Two horizontal bars, the mean time per call before and after (an index build's
    verification), as inline SVG; None unless both are finite, not negative and one is above
    zero. The longer bar fills the width; every label is escaped."""
    before, after = _finite(before_ms), _finite(after_ms)
    if before is None or after is None or max(before, after) <= 0:
        return None
    largest = max(before, after)
    height = 2 * (_BAR_HEIGHT + 12) + 10
    title = (f"Mean time per call: {summary.duration_ms(before)} before, "
             f"{summary.duration_ms(after)} after")
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{CHART_WIDTH}" '
             f'height="{height}" viewBox="0 0 {CHART_WIDTH} {height}" role="img" '
             f'aria-label="{escape(title)}"><title>{escape(title)}</title>']
    for index, (label, value, calls, colour) in enumerate((
            ("before", before, before_calls, "#8a4b00"), ("after", after, after_calls,
                                                         "#1f5f99"))):
        y = 8 + index * (_BAR_HEIGHT + 12)
        width = max(1.0, value / largest * _BAR_MAX) if value > 0 else 0.0
        text = summary.duration_ms(value)
        if calls is not None and calls >= 0:
            text += f" ({summary.count(calls)} calls)"
        parts.append(
            f'<text x="0" y="{y + _BAR_HEIGHT * 0.7:.1f}" fill="#1a1a1a" '
            f'font-size="14">{escape(label)}</text>'
            f'<rect x="{_BAR_LEFT}" y="{y}" width="{width:.1f}" height="{_BAR_HEIGHT}" '
            f'fill="{colour}"/>'
            f'<text x="{_BAR_LEFT + width + 6:.1f}" y="{y + _BAR_HEIGHT * 0.7:.1f}" '
            f'fill="#1a1a1a" font-size="14">{escape(text)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every value in it is a number or escaped


# --- one remediation ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Detail:
    """Everything the remediation page shows."""

    item: Parsed
    row: RemediationRow
    words: summary.Summary
    evidence: list[tuple[str, str]]
    measurements: list[tuple[str, str, str]]
    chart: Markup | None
    approved_by: str
    approval_requested_by: str
    reject_requested: str
    rollback_requested: str
    can_approve: bool
    can_reject: bool
    can_rollback: bool


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return summary.number(value) if math.isfinite(value) else str(value)


def detail(item: Parsed) -> Detail:
    """The remediation page of ``item``."""
    spec, status = item.model.spec, item.status
    keys = sorted(set(status.before) | set(status.after))
    measurements = [(k, _number(status.before.get(k)), _number(status.after.get(k)))
                    for k in keys]
    chart = None
    decision = status.decision
    if spec.action is ActionId.CREATE_INDEX and decision is not None:
        chart = mean_time_chart(decision.before_mean_ms, decision.after_mean_ms,
                                decision.before_calls, decision.after_calls)
    pending = status.state is RemediationState.PENDING_APPROVAL
    annotations = item.annotations
    return Detail(
        item=item, row=row(item), words=summary.of_object(item.raw),
        evidence=sorted(spec.evidence.items()), measurements=measurements, chart=chart,
        approved_by=status.approved_by or "",
        approval_requested_by=annotations.get(remediation.ANNOTATION_APPROVED_BY, ""),
        reject_requested=annotations.get(remediation.LABEL_PREFIX + "reject-requested", ""),
        rollback_requested=annotations.get(remediation.ANNOTATION_ROLLBACK, ""),
        can_approve=pending and not spec.approved, can_reject=pending,
        can_rollback=status.state is RemediationState.SUCCEEDED and bool(spec.rollback_sql))


# --- monitors -------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class MonitorCard:
    """One monitor on the overview."""

    namespace: str
    name: str
    mode: str
    database: str
    database_state: str
    reachable: bool | None
    phase: str
    counts: list[tuple[str, int]]
    warnings: list[tuple[str, str]]
    last_action: str
    error: str = ""


def monitor_card(obj: Mapping[str, Any]) -> MonitorCard:
    """The overview's card of a DatabaseMonitor object: its spec through the model and its
    status key by key (:meth:`DatabaseMonitorStatus.parse`), so one bad key hides nothing
    else. ``warnings`` are (text, link) pairs of what needs a person."""
    meta = monitor.ObjectMeta.model_validate(obj.get("metadata") or {})
    status = monitor.DatabaseMonitorStatus.parse(obj.get("status"))
    try:
        spec = monitor.DatabaseMonitorSpec.model_validate(obj.get("spec") or {})
    except ValidationError as exc:
        return MonitorCard(meta.namespace, meta.name, "?", "?", "", None, status.phase or "",
                           [], [], "", error=str(exc).splitlines()[0][:300])
    database = f"{spec.database.host}:{spec.database.port}/{spec.database.dbname}"
    db = status.database
    counts_model = status.remediations
    counts = sorted(((state.value, n) for state, n in counts_model.by_state.items() if n),
                    key=lambda pair: pair[0]) if counts_model else []
    warnings: list[tuple[str, str]] = []
    if counts_model and counts_model.pending_approval:
        n = counts_model.pending_approval
        warnings.append((f"{n} remediation{'s' if n != 1 else ''} wait{'s' if n == 1 else ''} "
                         "for a person's approval",
                         list_url(namespace=meta.namespace, monitor=meta.name,
                                  state=RemediationState.PENDING_APPROVAL.value)))
    failed = counts_model.by_state.get(RemediationState.FAILED, 0) if counts_model else 0
    if failed:
        warnings.append((f"{failed} remediation{'s' if failed != 1 else ''} failed",
                         list_url(namespace=meta.namespace, monitor=meta.name,
                                  state=RemediationState.FAILED.value)))
    if db is not None and not db.reachable:
        warnings.append((f"the database is {db.state_line()}", ""))
    last = ""
    if counts_model and counts_model.last_action:
        last = f"{counts_model.last_action} at {when(counts_model.last_action_time)}"
    return MonitorCard(
        namespace=meta.namespace, name=meta.name, mode=spec.mode.value, database=database,
        database_state=db.state_line() if db else "not reported yet",
        reachable=db.reachable if db else None, phase=status.phase or "",
        counts=counts, warnings=warnings, last_action=last)
