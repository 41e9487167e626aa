"""The dashboard's live pages (docs/dashboard.md, "Live updates"), their pure parts: what a
watch line from the API server means, lines out of any split of the stream, the event stream's
address made by a page and read back, the events sent to the browser, and how a watch ends
when its kubeconfig fails or it is stopped while opening (the API requests replaced by fakes).
The stream against a real API server, and a real browser drawn again by it, are in
tests/e2e/test_dashboard_live_kube.py.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
from typing import Any

import pytest
from aiohttp import test_utils, web
from hypothesis import given, settings
from hypothesis import strategies as st

from startupmonkey import client
from startupmonkey.dashboard import kube, server, views


def _line(kind: str, obj: Any) -> bytes:
    return json.dumps({"type": kind, "object": obj}).encode()


def _obj(name: str, version: str) -> dict[str, Any]:
    return {"apiVersion": "startupmonkey.dev/v1alpha1", "kind": "Remediation",
            "metadata": {"name": name, "namespace": "shop", "resourceVersion": version}}


# --- watch lines ----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["ADDED", "MODIFIED", "DELETED"])
def test_an_added_modified_or_deleted_object_is_a_change_with_its_version(kind: str) -> None:
    assert kube.read_change(_line(kind, _obj("shop-1", "812"))) == \
        kube.Change("changed", "812", "shop-1")


def test_a_bookmark_moves_the_version_and_changes_nothing() -> None:
    assert kube.read_change(_line("BOOKMARK", {"metadata": {"resourceVersion": "900"}})) == \
        kube.Change("bookmark", "900")


def test_a_version_too_old_is_expired_and_any_other_error_fails_with_its_message() -> None:
    gone = {"kind": "Status", "code": 410, "message": "too old resource version: 1 (812)"}
    assert kube.read_change(_line("ERROR", gone)).kind == "expired"
    refused = {"kind": "Status", "code": 403, "message": 'remediations is forbidden:\nUser "x"'}
    change = kube.read_change(_line("ERROR", refused))
    assert change == kube.Change(
        "failed", reason='the watch ended: remediations is forbidden: User "x"')


@pytest.mark.parametrize("line", [b"", b"not json", b"[1, 2]", b'{"type": "ADDED"}',
                                  b'{"type": "ADDED", "object": 3}', b"\xff\xfe",
                                  b'{"type": "PATCHED", "object": {}}', b"[" * 100_000])
def test_a_line_that_is_not_a_watch_event_fails_with_a_reason(line: bytes) -> None:
    change = kube.read_change(line)
    assert change.kind == "failed" and change.reason


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=4), max_leaves=20)
_event = st.fixed_dictionaries(
    {"type": st.sampled_from(["ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"]) | st.text(),
     "object": st.fixed_dictionaries({}, optional={"metadata": _json, "code": _json,
                                                   "message": _json}) | _json})


def _told(change: kube.Change) -> None:
    assert change.kind in kube.KINDS
    assert isinstance(change.version, str) and isinstance(change.name, str)
    assert "\n" not in change.reason and len(change.reason) <= kube.REASON_CHARS
    assert (change.kind == "failed") == bool(change.reason)


@settings(max_examples=300)
@given(st.binary(max_size=300) | _event.map(lambda e: json.dumps(e).encode()))
def test_any_watch_line_is_told_as_a_change_and_never_raises(line: bytes) -> None:
    _told(kube.read_change(line))


# --- lines out of chunks ----------------------------------------------------------------------

@settings(max_examples=200)
@given(st.lists(st.binary(min_size=1, max_size=40).filter(lambda b: b"\n" not in b),
                max_size=8),
       st.lists(st.integers(min_value=0, max_value=400), max_size=10), st.booleans())
def test_lines_are_the_same_however_the_stream_is_split(
        lines: list[bytes], cuts: list[int], blank_lines: bool) -> None:
    stream = b"".join(line + (b"\n\n" if blank_lines else b"\n") for line in lines)
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    reader, seen = kube.Lines(), []
    for start, end in itertools.pairwise(points):
        seen.extend(reader.feed(stream[start:end]))
    assert seen == lines
    assert reader.buffer == b""


def test_a_line_longer_than_the_limit_is_refused() -> None:
    reader = kube.Lines(limit=10)
    assert list(reader.feed(b"0123456789\n")) == [b"0123456789"]
    with pytest.raises(ValueError, match="longer than 10 bytes"):
        list(reader.feed(b"0123456789a"))


# --- the event stream's address -------------------------------------------------------------

def test_each_page_names_the_stream_of_what_it_shows_and_it_reads_back() -> None:
    overview = views.live_url(None, databasemonitors="10", remediations="12")
    assert overview == "/live?databasemonitors=10&remediations=12"
    assert views.Live.parse(_query(overview)) == views.Live(
        (("databasemonitors", "10"), ("remediations", "12")))
    one = views.live_url("shop", "shop-orders-1", remediations="812")
    assert one == "/live?remediations=812&namespace=shop&name=shop-orders-1"
    assert views.Live.parse(_query(one)) == views.Live((("remediations", "812"),), "shop",
                                                       "shop-orders-1")
    assert views.live_url("shop", remediations="") == "", "nothing to follow: not live"
    assert views.live_url(None, databasemonitors="3", remediations="") == \
        "/live?databasemonitors=3"


def _query(url: str) -> dict[str, str]:
    from urllib.parse import parse_qsl, urlsplit

    return dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))


@pytest.mark.parametrize(("query", "reason"), [
    ({}, "nothing to follow"),
    ({"pods": "1"}, "nothing to follow"),
    ({"remediations": ""}, "not a resourceVersion"),
    ({"remediations": "1 2"}, "not a resourceVersion"),
    ({"remediations": "1", "namespace": "Shop"}, "not a namespace"),
    ({"remediations": "1", "namespace": "a" * 64}, "not a namespace"),
    ({"remediations": "1", "name": "x"}, "with its namespace"),
    ({"remediations": "1", "databasemonitors": "1", "namespace": "s", "name": "x"},
     "with its namespace"),
    ({"remediations": "1", "namespace": "s", "name": "../x"}, "with its namespace"),
])
def test_a_stream_address_no_page_makes_is_refused_with_the_reason(
        query: dict[str, str], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        views.Live.parse(query)


@settings(max_examples=300)
@given(st.dictionaries(st.sampled_from(["remediations", "databasemonitors", "namespace",
                                        "name", "other"]) | st.text(max_size=5),
                       st.text(max_size=70) | st.from_regex(r"[0-9]{1,6}", fullmatch=True),
                       max_size=5))
def test_any_query_is_a_stream_that_reads_back_the_same_or_a_reason(
        query: dict[str, str]) -> None:
    try:
        asked = views.Live.parse(query)
    except ValueError as exc:
        assert str(exc)
        return
    assert asked.versions and views.Live.parse(_query(asked.url())) == asked


# --- the events sent to the browser ---------------------------------------------------------

@given(st.text(), st.dictionaries(st.text(max_size=5), st.text(max_size=30), max_size=3))
def test_an_event_is_one_event_whose_data_is_json_on_one_line(
        reason: str, extra: dict[str, str]) -> None:
    sent = server.event("ended", {**extra, "reason": reason}).decode()
    assert sent.endswith("\n\n") and sent.count("\n\n") == 1
    name, data = sent[:-2].split("\n")
    assert name == "event: ended"
    assert json.loads(data.removeprefix("data: "))["reason"] == reason


def test_changes_waiting_together_are_told_once_and_an_end_behind_them_is_kept() -> None:
    queue: asyncio.Queue[kube.Change] = asyncio.Queue()
    for change in (kube.Change("changed", "2", "b"), kube.Change("changed", "3", "a"),
                   kube.Change("expired"), kube.Change("changed", "4", "c")):
        queue.put_nowait(change)
    changes, ended = server._changed(kube.Change("changed", "1", "a"), queue)
    assert [c.name for c in changes] == ["a", "b", "a"]
    assert ended == kube.Change("expired")
    assert queue.qsize() == 1, "what came after the end is not read"
    alone, none = server._changed(kube.Change("changed", "5", "d"), asyncio.Queue())
    assert [c.name for c in alone] == ["d"] and none is None


def test_an_ended_stream_tells_the_page_to_redraw_stop_or_retry() -> None:
    assert server.ending(kube.Change("expired"))["then"] == "redraw"
    for status in (401, 403):
        told = server.ending(kube.Change("failed", reason="forbidden", status=status))
        assert told == {"reason": "forbidden", "then": "stop"}
    for status in (0, 500, 502, 504):
        assert server.ending(kube.Change("failed", reason="x", status=status))["then"] == \
            "retry"



# --- how a watch ends -----------------------------------------------------------------------

def test_a_watch_that_ends_at_once_empty_is_opened_again_after_a_pause_that_grows() -> None:
    assert kube.reopen_pause(0.0, lines_read=12, seconds=60.0) == 0.0
    # a quiet watch that ran its course (no bookmarks from this API server) is opened at once
    assert kube.reopen_pause(8.0, lines_read=0, seconds=kube.WATCH_SECONDS) == 0.0
    pauses = [0.0]
    for _ in range(8):
        pauses.append(kube.reopen_pause(pauses[-1], lines_read=0, seconds=0.01))
    assert pauses[1] == kube.MIN_REOPEN_SECONDS
    assert pauses[1:] == sorted(pauses[1:]) and pauses[-1] == kube.MAX_REOPEN_SECONDS
    assert kube.reopen_pause(kube.MAX_REOPEN_SECONDS, lines_read=1, seconds=0.01) == 0.0


def _watch(told: list[kube.Change]) -> kube.Watch:
    return kube.Watch("remediations", "shop", "", "12", told.append)


def test_a_kubeconfig_that_no_longer_loads_ends_the_watch_with_its_reason(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(args: Any) -> Any:
        raise client.Refused("cannot get a token: kubeconfig exec plugin failed")

    monkeypatch.setattr(client, "_kube_client", refused)
    told: list[kube.Change] = []
    watch = _watch(told)
    watch.start()
    watch.thread.join(10)
    assert not watch.thread.is_alive()
    assert told == [kube.Change("failed", reason="cannot get a token: kubeconfig exec plugin "
                                "failed", status=409)]
    assert server.ending(told[0])["then"] == "retry"


def test_any_error_in_a_watch_is_told_never_a_silent_thread_death(
        monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken:
        def close(self) -> None:
            pass

    monkeypatch.setattr(client, "_kube_client", lambda args: (Broken(), "shop"))

    def bug(self: kube.Watch, api: Any) -> Any:
        raise KeyError("a bug")

    monkeypatch.setattr(kube.Watch, "_open", bug)
    told: list[kube.Change] = []
    watch = _watch(told)
    watch.start()
    watch.thread.join(10)
    assert [c.kind for c in told] == ["failed"]
    assert told[0].reason == "the watch ended on an error: KeyError: 'a bug'"


def test_a_watch_stopped_while_its_kubeconfig_loads_sends_no_request(
        monkeypatch: pytest.MonkeyPatch) -> None:
    loading, go_on = threading.Event(), threading.Event()
    opened: list[str] = []

    class Api:
        def close(self) -> None:
            pass

    def slow_kubeconfig(args: Any) -> Any:  # an exec plugin taking its time
        loading.set()
        assert go_on.wait(10)
        return Api(), "shop"

    monkeypatch.setattr(client, "_kube_client", slow_kubeconfig)
    monkeypatch.setattr(kube.Watch, "_open", lambda self, api: opened.append("watch"))
    told: list[kube.Change] = []
    watch = _watch(told)
    watch.start()
    assert loading.wait(10)
    watch.stop()
    go_on.set()
    watch.thread.join(10)
    assert not watch.thread.is_alive()
    assert opened == [] and told == []


# --- the stream's own refusals, on the real application (no Kubernetes request is made) ----

async def _logged_in(settings: server.Settings) -> tuple[test_utils.TestClient, web.Application]:
    app = server.make_app(settings)
    http = test_utils.TestClient(test_utils.TestServer(app, host="127.0.0.1"))
    await http.start_server()
    settings.port = http.port
    async with http.get(f"/login?key={settings.key}", allow_redirects=False) as answer:
        assert answer.status == 303
    return http, app


async def test_a_dashboard_of_one_namespace_follows_no_other() -> None:
    http, _ = await _logged_in(server.Settings(namespace="shop"))
    try:
        for query in ("remediations=1", "remediations=1&namespace=other",
                      "databasemonitors=1&remediations=2"):
            async with http.get(f"/live?{query}") as answer:
                assert answer.status == 400, query
                assert "this dashboard shows namespace shop only" in await answer.text()
    finally:
        await http.close()


async def test_no_stream_starts_once_the_dashboard_is_stopping() -> None:
    http, app = await _logged_in(server.Settings())
    try:
        await server._stop_live(app)
        async with http.get("/live?remediations=1") as answer:
            assert answer.status == 503
            assert "The dashboard is stopping." in await answer.text()
        assert app[server.LIVE].watches == []
    finally:
        await http.close()
