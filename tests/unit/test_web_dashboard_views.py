"""The web dashboard's pure parts (issue 25): the before/after SVG chart, the list's filters,
the Host/Origin checks, and the pages rendered from objects through the real templates, with
a property that whatever the database or a person controls is always HTML-escaped."""

from __future__ import annotations

import datetime
import html.parser
import math
import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from startupmonkey.dashboard import server, views

SETTINGS = server.Settings(namespace=None, port=8765, token="form-token")
ENV = server.environment()


def _remediation(name: str = "shop-0123456789", *, state: str = "PendingApproval",
                 action: str = "create_index", table: str = "orders",
                 sql: str = 'CREATE INDEX CONCURRENTLY "orders_id_idx" ON "public"."orders" (id)',
                 evidence: dict[str, str] | None = None, message: str = "waits for a person",
                 summary: str = "orders needs an index on id", history_message: str = "",
                 decision: dict[str, Any] | None = None, approved_by: str | None = None,
                 annotations: dict[str, str] | None = None, monitor: str = "shop",
                 detector: str = "missing_index", before: dict[str, float] | None = None,
                 created: str = "2026-12-06T19:00:00Z") -> dict[str, Any]:
    status: dict[str, Any] = {
        "state": state, "message": message,
        "history": [{"state": "PendingApproval", "time": "2026-12-06T19:00:01Z",
                     "message": history_message}],
        "before": before or {"mean_ms": 11.7}, "after": {}}
    if decision is not None:
        status["decision"] = decision
    if approved_by is not None:
        status["approvedBy"] = approved_by
    return {"apiVersion": "startupmonkey.dev/v1alpha1", "kind": "Remediation",
            "metadata": {"name": name, "namespace": "shop-ns", "creationTimestamp": created,
                         "resourceVersion": "7", "annotations": annotations or {}},
            "spec": {"monitor": monitor, "detectionKey": "k", "detectionId": "d" * 32,
                     "detector": detector, "action": action, "riskClass": "ddl",
                     "target": {"schema": "public", "table": table, "columns": ["id"]},
                     "sql": sql, "sqlHash": "a" * 64, "evidence": evidence or {"calls": "320"},
                     "summary": summary},
            "status": status}


def _monitor(last_error: str = "connection refused", last_action: str = "vacuum public.t",
             version: str = "15.8", pending: int = 2) -> dict[str, Any]:
    return {"apiVersion": "startupmonkey.dev/v1alpha1", "kind": "DatabaseMonitor",
            "metadata": {"name": "shop", "namespace": "shop-ns"},
            "spec": {"database": {"host": "db", "dbname": "shop",
                                  "credentialsSecret": {"name": "shop-db"}},
                     "mode": "approval"},
            "status": {"phase": "Ready",
                       "database": {"reachable": False, "lastError": last_error,
                                    "serverVersion": version},
                       "remediations": {"byState": {"PendingApproval": pending, "Failed": 1},
                                        "pendingApproval": pending,
                                        "lastAction": last_action}}}


def _pages(remediation: dict[str, Any], monitor: dict[str, Any]) -> list[str]:
    """The remediation page, its approve confirmation, the list and the overview."""
    parsed = views.parse_remediation(remediation)
    detail = views.detail(parsed)
    items, _ = views.parse_all([remediation])
    filters = views.Filters()
    return [
        server.page(ENV, "remediation.html", SETTINGS, title=parsed.name, d=detail, error="",
                    done=""),
        server.page(ENV, "confirm.html", SETTINGS, title="Approve", d=detail,
                    action="approve"),
        server.page(ENV, "remediations.html", SETTINGS, title="Remediations", filters=filters,
                    shown=views.list_page(items, filters), choices=views.choices(items),
                    note="", unreadable=[]),
        server.page(ENV, "overview.html", SETTINGS, title="Monitors",
                    cards=[views.monitor_card(monitor)], note="", unreadable=[],
                    latest=views.latest_by_monitor(items), latest_note="",
                    unreadable_remediations=0),
    ]


#: Every element and attribute the templates (and the chart) write.
TAGS = {"html", "head", "meta", "title", "link", "body", "header", "nav", "a", "p", "main",
        "h1", "h2", "small", "section", "dl", "dt", "dd", "span", "form", "label", "select",
        "option", "button", "table", "thead", "tbody", "tr", "th", "td", "pre", "code",
        "strong", "ol", "li", "time", "figure", "figcaption", "svg", "text", "rect", "input",
        "br"}
ATTRIBUTES = {"lang", "charset", "name", "content", "rel", "href", "class", "aria-label",
              "aria-labelledby", "id", "method", "action", "for", "value", "selected", "type",
              "scope", "role", "xmlns", "width", "height", "viewbox", "x", "y", "fill",
              "font-size", "maxlength", "hidden", "data-live"}


class _Elements(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: set[str] = set()
        self.attributes: set[str] = set()
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script" and attrs == [("src", "/static/live.js"), ("defer", None)]:
            return  # the one script the templates load; any other is a tag not in TAGS
        self.tags.add(tag)
        self.attributes.update(name for name, _ in attrs)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _elements(page: str) -> _Elements:
    parser = _Elements()
    parser.feed(page)
    parser.close()
    return parser


# --- the chart ------------------------------------------------------------------------------

def _bar_widths(svg: str) -> list[float]:
    return [float(w) for w in re.findall(r'<rect [^>]*width="([0-9.]+)"', svg)]


def test_the_chart_draws_before_and_after_to_scale() -> None:
    svg = views.mean_time_chart(11.7, 0.07, 320, 404)
    assert svg is not None
    before, after = _bar_widths(svg)
    assert before == views._BAR_MAX
    assert after == round(0.07 / 11.7 * views._BAR_MAX, 1)
    tiny = views.mean_time_chart(1000.0, 0.001)
    assert tiny is not None and _bar_widths(tiny)[1] == 1.0  # still visible
    assert "11.7 ms (320 calls)" in svg and "0.07 ms (404 calls)" in svg
    assert 'aria-label="Mean time per call: 11.7 ms before, 0.07 ms after"' in svg
    slower = views.mean_time_chart(2.0, 4.0)
    assert slower is not None
    assert _bar_widths(slower) == [views._BAR_MAX / 2, views._BAR_MAX]


def test_no_chart_without_two_usable_numbers() -> None:
    for before, after in ((None, 1.0), (1.0, None), (math.nan, 1.0), (1.0, math.inf),
                          (-1.0, 2.0), (0.0, 0.0)):
        assert views.mean_time_chart(before, after) is None, (before, after)


@given(st.floats(min_value=0, max_value=1e12), st.floats(min_value=0, max_value=1e12))
def test_the_chart_is_always_within_its_width(before: float, after: float) -> None:
    svg = views.mean_time_chart(before, after)
    if max(before, after) <= 0:
        assert svg is None
        return
    assert svg is not None
    assert all(0 <= w <= views._BAR_MAX for w in _bar_widths(svg))
    assert _elements(svg).tags <= {"svg", "title", "text", "rect"}


# --- filters --------------------------------------------------------------------------------

def test_filters_keep_only_matching_rows_and_name_what_they_ignore() -> None:
    items, unreadable = views.parse_all([
        _remediation("shop-a", state="PendingApproval"),
        _remediation("shop-b", state="Succeeded", created="2026-12-06T20:00:00Z"),
        _remediation("other-c", monitor="other", detector="dead_tuples", action="vacuum",
                     state="Observed")])
    assert unreadable == []
    assert [i.name for i in items] == ["shop-b", "shop-a", "other-c"]  # newest first
    by = views.Filters.parse
    assert [r.name for r in views.rows(items, by({"state": "pendingapproval"}))] == ["shop-a"]
    assert [r.name for r in views.rows(items, by({"monitor": "shop"}))] == ["shop-b", "shop-a"]
    assert [r.name for r in views.rows(items, by({"detector": "dead_tuples"}))] == ["other-c"]
    assert views.rows(items, by({"monitor": "shop", "detector": "dead_tuples"})) == []
    odd = by({"detector": "drop_table", "state": "Done", "monitor": "shop"})
    assert (odd.detector, odd.state, odd.monitor) == ("", "", "shop")
    assert odd.ignored == ("detector 'drop_table' is not a detector", "state 'Done' is not a state")
    assert odd.url() == "/remediations?monitor=shop"


def test_the_since_filter_keeps_what_was_created_within_it() -> None:

    items, _ = views.parse_all([
        _remediation("shop-new", created="2026-12-06T19:30:00Z"),
        _remediation("shop-day", created="2026-12-05T21:00:00Z"),
        _remediation("shop-old", created="2026-11-01T00:00:00Z")])
    now = datetime.datetime(2026, 12, 6, 20, 0, tzinfo=datetime.UTC)

    def within(since: str) -> list[str]:
        return [r.name for r in views.rows(items, views.Filters.parse({"since": since}, now))]

    assert within("1h") == ["shop-new"]
    assert within("24h") == ["shop-new", "shop-day"]
    assert within("30d") == ["shop-new", "shop-day"]  # shop-old is 35 days old
    assert within("") == ["shop-new", "shop-day", "shop-old"]
    odd = views.Filters.parse({"since": "forever", "state": "Failed"}, now)
    assert (odd.since, odd.cutoff) == ("", None)
    assert odd.ignored == ("since 'forever' is not one of 1h, 24h, 7d, 30d",)
    assert views.Filters.parse({"since": "7d", "monitor": "shop"}, now).url() == \
        "/remediations?monitor=shop&since=7d"


# --- paging ---------------------------------------------------------------------------------

def _many(count: int, **kwargs: Any) -> list[dict[str, Any]]:
    """``count`` Remediations, ``shop-0000`` the oldest, one second apart."""
    return [_remediation(f"shop-{n:04d}", created=f"2026-12-06T{n // 3600:02d}:"
                                                  f"{n // 60 % 60:02d}:{n % 60:02d}Z", **kwargs)
            for n in range(count)]


def test_stamps_with_an_offset_without_one_or_none_sort_together() -> None:
    # Kubernetes writes UTC with a Z; an object written otherwise must not break the page.
    objects = [_remediation("shop-z", created="2026-12-06T10:00:00Z"),
               _remediation("shop-naive", created="2026-12-06T11:00:00"),
               _remediation("shop-offset", created="2026-12-06T13:30:00+02:00"),
               _remediation("shop-none", created="not a time")]
    items, unreadable = views.parse_all(objects)
    assert unreadable == []
    assert [i.name for i in items] == ["shop-offset", "shop-naive", "shop-z", "shop-none"]
    now = datetime.datetime(2026, 12, 6, 12, 0, tzinfo=datetime.UTC)
    recent = views.list_page(items, views.Filters.parse({"since": "1h"}, now))
    assert [r.name for r in recent.rows] == ["shop-offset", "shop-naive"]
    assert views.latest_by_monitor(items)[("shop-ns", "shop")][0].name == "shop-offset"


def test_a_page_shows_its_slice_of_the_matches_newest_first() -> None:
    items, _ = views.parse_all(_many(250))
    first = views.list_page(items, views.Filters.parse({}))
    assert [r.name for r in first.rows[:2]] == ["shop-0249", "shop-0248"]
    assert (len(first.rows), first.number, first.pages, first.first, first.last) == \
        (100, 1, 3, 1, 100)
    second = views.list_page(items, views.Filters.parse({"page": "2"}))
    assert [r.name for r in second.rows] == [f"shop-{n:04d}" for n in range(149, 49, -1)]
    assert second.shown == "Rows 101-200 of 250 shown."
    third = views.list_page(items, views.Filters.parse({"page": "3"}))
    assert (len(third.rows), third.first, third.last, third.rows[-1].name) == \
        (50, 201, 250, "shop-0000")
    assert third.filters.ignored == () and third.next_url == ""
    # the order the items come in does not matter: filter, sort, slice
    shuffled = views.list_page(list(reversed(items)), views.Filters.parse({"page": "2"}))
    assert shuffled.rows == second.rows
    few = views.list_page(items[:3], views.Filters.parse({}))
    assert (few.pages, few.shown, few.previous_url, few.next_url) == (1, "3 of 3 shown.", "", "")
    none = views.list_page([], views.Filters.parse({"page": "2"}))
    assert (none.rows, none.number, none.first, none.last, none.shown) == \
        ([], 1, 0, 0, "0 of 0 shown.")


def test_a_page_out_of_range_or_not_a_number_is_clamped_and_named() -> None:
    items, _ = views.parse_all(_many(250))
    for asked, number, note in (
            ("", 1, None), ("1", 1, None), (" 2 ", 2, None), ("03", 3, None),
            ("4", 3, "page 4 is past the last page, 3: page 3 is shown"),
            ("99999999999999999999", 3, "page past any is past the last page, 3: page 3 is "
                                        "shown"),
            ("0000000000002", 2, ""),  # leading zeros are no part of how far it is
            ("0", 1, "page '0' is not a page number (1, 2, ...)"),
            ("-1", 1, "page '-1' is not a page number (1, 2, ...)"),
            ("2.5", 1, "page '2.5' is not a page number (1, 2, ...)"),
            ("<b>two</b>", 1, "page '<b>two</b>' is not a page number (1, 2, ...)"),
            ("\u0662", 1, "page '\u0662' is not a page number (1, 2, ...)")):
        shown = views.list_page(items, views.Filters.parse({"page": asked, "state": "x"}))
        assert shown.number == shown.filters.page == number, asked
        assert shown.filters.ignored == ("state 'x' is not a state",
                                         *([note] if note else [])), asked
        assert len(shown.rows) == (50 if number == 3 else 100)


def test_the_paging_links_keep_the_filters() -> None:

    now = datetime.datetime(2026, 12, 7, tzinfo=datetime.UTC)
    items, _ = views.parse_all(_many(250) + _many(30, monitor="other"))
    query = {"monitor": "shop", "state": "PendingApproval", "since": "7d", "page": "2"}
    shown = views.list_page(items, views.Filters.parse(query, now))
    assert (shown.matched, shown.total, shown.pages) == (250, 280, 3)
    assert shown.shown == "Rows 101-200 of 250 shown (280 before the filters)."
    assert shown.previous_url == "/remediations?monitor=shop&state=PendingApproval&since=7d"
    assert shown.next_url == \
        "/remediations?monitor=shop&state=PendingApproval&since=7d&page=3"
    assert views.Filters.parse(query, now).url() == shown.previous_url  # page 1: no page
    page = server.page(ENV, "remediations.html", SETTINGS, title="Remediations",
                       filters=shown.filters, shown=shown, choices=views.choices(items),
                       note="", unreadable=[])
    assert ('<a rel="prev" href="/remediations?monitor=shop&amp;state=PendingApproval&amp;'
            'since=7d">Previous</a>') in page
    assert ('<a rel="next" href="/remediations?monitor=shop&amp;state=PendingApproval&amp;'
            'since=7d&amp;page=3">Next</a>') in page
    assert "Rows 101-200 of 250 shown (280 before the filters)." in page
    assert page.count('<tr><td><a href="/ns/shop-ns/remediations/') == 100
    found, structure = _elements(page), _Structure()
    assert found.tags <= TAGS and found.attributes <= ATTRIBUTES
    structure.feed(page)
    structure.close()
    assert structure.problems == [] and structure.stack == []
    assert structure.headings == [1]
    # one page only: no paging links
    single = views.list_page(items, views.Filters.parse({"monitor": "other"}))
    page = server.page(ENV, "remediations.html", SETTINGS, title="Remediations",
                       filters=single.filters, shown=single, choices=views.choices(items),
                       note="", unreadable=[])
    assert 'aria-label="Pages"' not in page and "30 of 280 shown." in page


def test_rows_are_built_for_the_page_only(monkeypatch: Any) -> None:
    from startupmonkey import summary

    items, _ = views.parse_all(_many(250))
    built: list[str] = []
    row, described = views.row, summary.of_object

    def counted_row(item: views.Parsed) -> views.RemediationRow:
        built.append(item.name)
        return row(item)

    summaries: list[object] = []

    def counted_summary(obj: Any) -> summary.Summary:
        summaries.append(obj)
        return described(obj)

    monkeypatch.setattr(views, "row", counted_row)
    monkeypatch.setattr(summary, "of_object", counted_summary)
    shown = views.list_page(items, views.Filters.parse({"page": "3"}))
    assert built == [r.name for r in shown.rows] and len(built) == 50
    assert len(summaries) == 50
    built.clear()
    views.list_page(items, views.Filters.parse({"state": "Failed"}))
    assert built == []  # none match: no row is built


def test_an_object_that_does_not_read_is_named_not_raised() -> None:
    broken = _remediation("shop-broken")
    broken["spec"]["action"] = "drop_database"
    items, unreadable = views.parse_all([broken, _remediation("shop-fine")])
    assert [i.name for i in items] == ["shop-fine"]
    (line,) = unreadable
    assert line.startswith("shop-broken: ")


def test_remediation_urls_are_stable_and_quoted() -> None:
    assert views.remediation_url("shop-ns", "shop-0123456789") == \
        "/ns/shop-ns/remediations/shop-0123456789"
    assert views.remediation_url("a/b", "c?d", "approve") == "/ns/a%2Fb/remediations/c%3Fd/approve"


# --- the overview's latest remediations ----------------------------------------------------

def _at(minute: int) -> str:
    return f"2026-12-06T19:{minute:02d}:00Z"


def test_each_monitor_gets_its_newest_five_newest_first() -> None:
    objs = [_remediation(f"shop-{m:02d}", created=_at(m)) for m in range(8)]
    objs += [_remediation("other-1", monitor="other", created=_at(30), state="Failed"),
             _remediation("gone-1", monitor="deleted-monitor", created=_at(40))]
    items, _ = views.parse_all(reversed(objs))  # the order given does not matter
    latest = views.latest_by_monitor(items)
    assert [r.name for r in latest[("shop-ns", "shop")]] == \
        ["shop-07", "shop-06", "shop-05", "shop-04", "shop-03"]
    (other,) = latest[("shop-ns", "other")]
    assert (other.name, other.state, other.detector, other.target) == \
        ("other-1", "Failed", "missing_index", "public.orders")
    assert other.created == "2026-12-06 19:30:00 UTC"
    assert other.url == "/ns/shop-ns/remediations/other-1"
    # A Remediation whose monitor is not listed is kept under its own key, shown nowhere.
    assert [r.name for r in latest[("shop-ns", "deleted-monitor")]] == ["gone-1"]
    assert ("shop-ns", "billing") not in latest  # a monitor with none has no key
    assert {k[1]: len(v) for k, v in views.latest_by_monitor(items, per_monitor=2).items()} \
        == {"shop": 2, "other": 1, "deleted-monitor": 1}
    assert views.latest_by_monitor([]) == {}
    # Two namespaces' monitors of one name are two monitors.
    moved = _remediation("shop-x", created=_at(50))
    moved["metadata"]["namespace"] = "other-ns"
    items, _ = views.parse_all([*objs, moved])
    latest = views.latest_by_monitor(items)
    assert [r.name for r in latest[("other-ns", "shop")]] == ["shop-x"]
    assert latest[("shop-ns", "shop")][0].name == "shop-07"


def _words(page: str) -> str:
    """The page's text as a person reads it: a space between blocks, none around inline
    elements (a link, a state)."""
    blocks = re.sub(r"</?(?:dt|dd|li|p|h1|h2|ol|section|header|nav|main)\b[^>]*>", " ", page)
    return " ".join("".join(_elements(blocks).text).split())


def _overview_page(remediations: list[dict[str, Any]], latest_note: str = "") -> str:
    items, skipped = views.parse_all(remediations)
    billing = _monitor(pending=0)
    billing["metadata"]["name"] = "billing"
    return server.page(ENV, "overview.html", SETTINGS, title="Monitors",
                       cards=[views.monitor_card(billing), views.monitor_card(_monitor())],
                       note="", unreadable=[], latest=views.latest_by_monitor(items),
                       latest_note=latest_note, unreadable_remediations=len(skipped))


def test_the_overview_lists_each_cards_latest_remediations_linked() -> None:
    broken = _remediation("shop-broken")
    broken["spec"] = {"monitor": "shop"}
    vacuum = _remediation("shop-vacuum", detector="dead_tuples", action="vacuum",
                          state="Succeeded", created=_at(30))
    page = _overview_page([_remediation(), vacuum, broken])
    text = _words(page)
    shop = text[text.index("shop namespace shop-ns"):]
    billing = text[text.index("billing namespace"):text.index("shop namespace shop-ns")]
    assert "Latest remediations none yet" in billing
    assert ("Latest remediations dead_tuples on public.orders: Succeeded, created "
            "2026-12-06 19:30:00 UTC missing_index on public.orders: PendingApproval, "
            "created 2026-12-06 19:00:00 UTC") in shop
    assert '<a href="/ns/shop-ns/remediations/shop-vacuum">dead_tuples on public.orders</a>' \
        in page
    assert "Cannot read 1 remediation: the remediations list names it." in text
    assert "could not be read" not in text


def test_the_overview_says_when_the_latest_remediations_could_not_be_read() -> None:
    reason = ('Kubernetes API: 403 Forbidden: User "viewer" cannot list resource '
              '"remediations"')
    page = _overview_page([], latest_note=f"The latest remediations could not be read: "
                                          f"{reason}")
    text = _words(page)
    assert "The latest remediations could not be read: Kubernetes API: 403 Forbidden" in text
    assert "Latest remediations" not in text  # no card claims "none yet"
    assert text.count("Mode approval") == 2  # the cards are all there


async def test_the_overview_handler_shows_the_cards_when_remediations_are_refused(
        monkeypatch: Any) -> None:
    from aiohttp import test_utils

    from startupmonkey.dashboard import kube
    from startupmonkey.models import remediation

    refusal = {"answer": kube.Failure(403, 'Kubernetes API: 403 Forbidden: User "viewer" '
                                           'cannot list resource "remediations"')}

    def list_objects(plural: str, namespace: str | None) -> kube.Listing:
        if plural == remediation.PLURAL:
            answer = refusal["answer"]
            if isinstance(answer, kube.Failure):
                raise answer
            return kube.Listing(answer)
        return kube.Listing([_monitor()])

    monkeypatch.setattr(kube, "list_objects", list_objects)
    settings = server.Settings()
    client = test_utils.TestClient(test_utils.TestServer(server.make_app(settings),
                                                         host="127.0.0.1"))
    await client.start_server()
    settings.port = client.port or 0
    try:
        async with client.get(f"/login?key={settings.key}", allow_redirects=False):
            pass
        async with client.get("/") as answer:
            status, page = answer.status, await answer.text()
        assert status == 200, page
        text = _words(page)
        assert "Needs a person: 2 remediations wait" in text
        assert ('The latest remediations could not be read: Kubernetes API: 403 Forbidden: '
                'User "viewer" cannot list resource "remediations"') in text
        refusal["answer"] = [_remediation()]  # type: ignore[assignment]
        async with client.get("/") as answer:
            status, page = answer.status, await answer.text()
        assert status == 200, page
        assert 'href="/ns/shop-ns/remediations/shop-0123456789"' in page
        assert "could not be read" not in page
    finally:
        await client.close()


# --- Host and Origin ------------------------------------------------------------------------

def test_only_the_dashboards_own_host_and_origin_are_allowed() -> None:
    assert server.host_allowed("127.0.0.1:8765", 8765)
    assert server.host_allowed("localhost:8765", 8765)
    for host in (None, "127.0.0.1", "127.0.0.1:8766", "evil.example:8765",
                 "localhost.evil.example:8765"):
        assert not server.host_allowed(host, 8765), host
    assert server.origin_allowed(None, 8765)
    assert server.origin_allowed("http://127.0.0.1:8765", 8765)
    assert server.origin_allowed("http://localhost:8765/ns/x/remediations/y/approve", 8765)
    for origin in ("null", "https://evil.example", "http://127.0.0.1:9999",
                   "https://127.0.0.1:8765", "http://evil.example:8765"):
        assert not server.origin_allowed(origin, 8765), origin


# --- the pages ------------------------------------------------------------------------------

def _kept_index() -> dict[str, Any]:
    """A built index, kept: the before/after chart, the numbers, a rollback offered."""
    obj = _remediation(
        state="Succeeded", approved_by="system:serviceaccount:shop-ns:approver",
        evidence={"calls": "320", "mean_ms": "11.7"},
        decision={"keep": True, "reason": "kept: faster", "beforeMeanMs": 11.7,
                  "afterMeanMs": 0.07, "beforeCalls": 320, "afterCalls": 404,
                  "improvement": 0.994})
    obj["spec"]["rollbackSql"] = 'DROP INDEX CONCURRENTLY "public"."orders_id_idx"'
    return obj


def test_the_remediation_page_shows_its_story() -> None:
    obj = _kept_index()
    page, *_ = _pages(obj, _monitor())
    found = _elements(page)
    text = " ".join(" ".join(found.text).split())
    assert 'CREATE INDEX CONCURRENTLY "orders_id_idx" ON "public"."orders" (id)' in text
    assert "Approved by system:serviceaccount:shop-ns:approver" in text
    assert "calls 320" in text and "mean_ms 11.7" in text
    assert "PendingApproval" in text  # the timeline
    assert "svg" in found.tags and "11.7 ms (320 calls)" in text
    assert "Roll back" in text and "Approve" not in text.replace("Approved", "")


def test_pending_approval_offers_approve_and_reject_and_the_form_carries_the_token() -> None:
    page, confirm, listing, overview = _pages(_remediation(), _monitor())
    assert 'href="/ns/shop-ns/remediations/shop-0123456789/approve"' in page
    assert 'href="/ns/shop-ns/remediations/shop-0123456789/reject"' in page
    assert "form-token" not in page  # only forms carry it
    assert '<input type="hidden" name="csrf" value="form-token">' in confirm
    assert f'<input type="hidden" name="sql_hash" value="{"a" * 64}">' in confirm
    assert 'method="post" action="/ns/shop-ns/remediations/shop-0123456789/approve"' in confirm
    assert 'href="/ns/shop-ns/remediations/shop-0123456789"' in listing
    assert "Needs a person:" in overview and "2 remediations wait for a person" in overview
    assert "state=PendingApproval" in overview


#: What a database, a person or a manifest controls, as Hypothesis makes it (plus markup).
_markup = st.sampled_from(["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>',
                           "' onmouseover='alert(1)", "</textarea><b>", "&amp;<!--", ""])
_controlled = st.builds(lambda a, b: a + b, st.text(max_size=30), _markup)


@settings(max_examples=60, deadline=None)
@given(table=_controlled, sql=_controlled, evidence_key=_controlled, evidence=_controlled,
       message=_controlled, summary=_controlled, history=_controlled, last_error=_controlled,
       last_action=_controlled, approver=_controlled, key=_controlled)
def test_whatever_the_database_controls_is_escaped_in_every_page(
        table: str, sql: str, evidence_key: str, evidence: str, message: str, summary: str,
        history: str, last_error: str, last_action: str, approver: str, key: str) -> None:
    obj = _remediation(table=table[:63], sql=sql, evidence={evidence_key: evidence},
                       message=message, summary=summary, history_message=history,
                       approved_by=approver[:512], before={key: 1.0},
                       annotations={"startupmonkey.dev/approved-by": approver})
    pages = _pages(obj, _monitor(last_error=last_error, last_action=last_action,
                                 version=key[:30]))
    for page in pages:
        found = _elements(page)
        assert found.tags <= TAGS, found.tags - TAGS
        assert found.attributes <= ATTRIBUTES, found.attributes - ATTRIBUTES
        shown = "".join(found.text)
        for value in (table[:63], sql, evidence):
            if value.strip() and page is pages[0]:
                # each is shown, as text, on the remediation page (a code point HTML forbids
                # as U+FFFD: server.printable)
                assert " ".join(server.printable(value).split()) in " ".join(shown.split())


# --- refusals -------------------------------------------------------------------------------

def _raise(exc: Exception) -> Any:
    raise exc


def test_every_refusal_becomes_a_status_and_one_line_never_a_traceback() -> None:
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import MaxRetryError

    from startupmonkey import client
    from startupmonkey.dashboard import kube

    forbidden = ApiException(status=403, reason="Forbidden")
    forbidden.body = ('{"kind": "Status", "message": "remediations.startupmonkey.dev \\"x\\" is '
                      'forbidden: User \\"viewer\\" cannot patch resource \\"remediations\\""}')
    for exc, status, words in (
            (client.Refused("x is Succeeded, not PendingApproval"), 409,
             "x is Succeeded, not PendingApproval"),
            (forbidden, 403, 'Kubernetes API: 403 Forbidden: remediations.startupmonkey.dev "x" '
                             'is forbidden: User "viewer" cannot patch resource "remediations"'),
            (MaxRetryError(None, "/apis", "connection refused"), 502,
             "the Kubernetes API server did not answer: connection refused")):
        try:
            kube.guarded(lambda exc=exc: _raise(exc))
        except kube.Failure as failure:
            assert (failure.status, failure.reason) == (status, words)
        else:
            raise AssertionError(f"{exc!r} was not refused")
    assert kube.guarded(lambda: 7) == 7


# --- structure and accessibility ------------------------------------------------------------

VOID = {"meta", "link", "input", "br", "rect"}


class _Structure(html.parser.HTMLParser):
    """Open/close balance, headings, labels and table headers of one page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.headings: list[int] = []
        self.labelled: set[str] = set()
        self.controls: list[str] = []
        self.lang = ""
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag not in VOID:
            self.stack.append(tag)
        if tag == "html":
            self.lang = a.get("lang") or ""
        if tag == "title":
            self._in_title = True
        if re.fullmatch(r"h[1-6]", tag):
            self.headings.append(int(tag[1]))
        if tag == "label" and a.get("for"):
            self.labelled.add(str(a["for"]))
        if (tag == "select" or (tag == "input" and a.get("type") != "hidden")):
            self.controls.append(str(a.get("id")))
        if tag == "th" and "thead" in self.stack and a.get("scope") != "col":
            self.problems.append("a column header without scope=col")
        if tag == "th" and "tbody" in self.stack and a.get("scope") != "row":
            self.problems.append("a row header without scope=row")
        if tag == "svg" and (a.get("role") != "img" or not a.get("aria-label")):
            self.problems.append("an svg without role=img and aria-label")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data


def test_every_page_is_balanced_titled_and_labelled() -> None:
    obj = _remediation(decision={"keep": True, "reason": "kept", "beforeMeanMs": 2.0,
                                 "afterMeanMs": 1.0})
    reject = server.page(ENV, "confirm.html", SETTINGS, title="Reject",
                         d=views.detail(views.parse_remediation(obj)), action="reject")
    refused = server.page(ENV, "error.html", SETTINGS, reason="403 Forbidden: no")
    # The in-cluster mode's own pages: its token login (a password field) and a page of a
    # session (the header's user and log-out form).
    token_login = server.page(ENV, "token_login.html", SETTINGS, reason="", again="")
    in_session = server.page(ENV, "confirm.html", SETTINGS, title="Approve",
                             d=views.detail(views.parse_remediation(obj)), action="approve",
                             mode="in-cluster", user="system:serviceaccount:shop:viewer",
                             csrf="session-token", scope="shop")
    for page in [*_pages(obj, _monitor()), reject, refused, token_login, in_session]:
        found = _Structure()
        found.feed(page)
        found.close()
        assert found.problems == [], found.problems
        assert found.stack == [], f"left open: {found.stack}"
        assert found.lang == "en" and found.title.strip()
        assert found.headings.count(1) == 1, "one h1 per page"
        assert all(b - a <= 1 for a, b in zip(found.headings, found.headings[1:],
                                                strict=False)), found.headings
        assert set(found.controls) <= found.labelled, "every form control has a label"


def _luminance(colour: str) -> float:
    channels = [int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def _contrast(a: str, b: str) -> float:
    light, dark = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def test_every_text_colour_of_the_stylesheet_has_a_contrast_of_at_least_4_5() -> None:
    css = (server.HERE / "static" / "dashboard.css").read_text()
    assert not re.search(r"#[0-9a-fA-F]{3}\b", css), "six-digit colours only: each is checked"
    rules = re.findall(r"([^{}]+)\{([^}]*)\}", re.sub(r"/\*.*?\*/", "", css, flags=re.S))
    declared = {selector.strip(): dict(re.findall(r"(color|background):\s*(#[0-9a-f]{6})",
                                                  body)) for selector, body in rules}
    text, page = declared["body"]["color"], declared["body"]["background"]
    header = declared["header"]["background"]
    checked = 0
    for selector, colours in declared.items():
        inside_header = selector.startswith("header")
        background = colours.get("background") or (header if inside_header else page)
        colour = colours.get("color") or (declared["header"]["color"] if inside_header
                                          else text)
        assert _contrast(colour, background) >= 4.5, (selector, colour, background)
        checked += 1
    assert checked >= 10
