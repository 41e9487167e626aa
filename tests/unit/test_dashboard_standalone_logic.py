"""The dashboard against a standalone executor, its pure parts: what the executor API sends
read back as the very object the pages draw (``views.parse_remediation``) whatever the strings
hold (as UTF-8, not escaped), the typed decision (ratio and time), each gRPC status as the HTTP
status and one-line reason a page shows, the fingerprints a live page follows, the polling
follower's decisions (with its read replaced: pure logic), what a list does with page tokens
that come back or never end and with a monitor without metadata (the executor's answers
replaced), the token's characters and the channel's reconnect backoff.
The same against a real executor API: tests/component/test_dashboard_standalone_api.py and
tests/integration/test_dashboard_standalone.py."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from startupmonkey.dashboard import backend, standalone, views
from startupmonkey.executor import api, records
from startupmonkey.models import remediation
from startupmonkey.models.enums import ActionId, DetectorId, RemediationState, RiskClass
from startupmonkey.v1 import executor_pb2
from tests.support import dashboard as shared
from tests.support.eventually import wait_until

#: Odd strings: markup, quotes, control characters, astral code points, JSON look-alikes.
_odd = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["<script>alert(1)</script>", '"}]', "\x00\x1f\x7f", "\ud7ff\U0001f600",
                     '{"a": 1}', "9007199254740993", "  \n\t  ", "é" * 30]))
_name = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?", fullmatch=True)


@st.composite
def record_of(draw: st.DrawFn) -> records.Record:
    """A Remediation record with odd strings wherever a database or a person writes one."""
    table = draw(_odd)
    sql = f'CREATE INDEX CONCURRENTLY ON "{table}" (x)'
    spec = remediation.RemediationSpec(
        monitor=draw(_name), detection_key=draw(_odd), detection_id=draw(_odd),
        detector=DetectorId.MISSING_INDEX, action=ActionId.CREATE_INDEX,
        risk_class=RiskClass.DDL,
        target=remediation.Target(schema="public", table=table or "t",
                                  columns=draw(st.lists(_name, max_size=3))),
        sql=sql, rollback_sql=draw(st.none() | st.just('DROP INDEX "x"')),
        sql_hash=remediation.sql_hash(sql, None),
        evidence=draw(st.dictionaries(_odd, _odd | st.integers(-2**63, 2**63 - 1).map(str),
                                      max_size=4)),
        summary=draw(_odd.map(lambda s: s[:200])),
        approved=draw(st.booleans()))
    record = records.Record(name=draw(_name), namespace=draw(_name), spec=spec,
                            status=remediation.RemediationStatus(),
                            created=records.utcnow(),
                            annotations=draw(st.dictionaries(
                                st.sampled_from([remediation.ANNOTATION_APPROVED_BY,
                                                 records.ANNOTATION_REJECT,
                                                 remediation.ANNOTATION_ROLLBACK]), _odd)),
                            version=draw(st.none() | st.just("17")))
    for state in draw(st.lists(st.sampled_from(list(RemediationState)), max_size=4)):
        record.move(state, draw(_odd))
    record.status.before = draw(st.dictionaries(_odd, st.floats(0, 1e9), max_size=3))
    record.status.after = draw(st.dictionaries(_odd, st.floats(0, 1e9), max_size=3))
    record.status.approved_by = draw(st.none() | _odd)
    if draw(st.booleans()):
        record.status.decision = remediation.Decision(
            keep=draw(st.booleans()), reason=draw(_odd),
            before_mean_ms=draw(st.none() | st.floats(0, 1e6)),
            after_mean_ms=draw(st.none() | st.floats(0, 1e6)),
            before_calls=draw(st.none() | st.integers(0, 10**9)),
            after_calls=draw(st.none() | st.integers(0, 10**9)))
    return record


def _over_the_wire(record: records.Record) -> executor_pb2.Remediation:
    """``to_proto``, serialised and read back as the dashboard receives it."""
    return executor_pb2.Remediation.FromString(api.to_proto(record).SerializeToString())


@settings(max_examples=150, deadline=None)
@given(record_of())
def test_what_the_executor_sends_is_the_object_the_pages_draw(record: records.Record) -> None:
    parsed = views.parse_remediation(standalone.remediation_object(_over_the_wire(record)))
    assert (parsed.namespace, parsed.name) == (record.namespace, record.name)
    assert parsed.model.spec == record.spec  # summary, evidence (exact integers), approved
    assert parsed.status == record.status  # decision, history, before/after, approver
    assert dict(parsed.annotations) == record.annotations  # approval/reject/rollback asks
    assert parsed.created == record.created
    assert parsed.resource_version == (record.version or "")
    shown = views.detail(parsed)  # the page's own reading of it does not fail
    assert shown.approved_by == (record.status.approved_by or "")
    assert shown.reject_requested == record.annotations.get(records.ANNOTATION_REJECT, "")
    decision = record.status.decision
    if decision is not None and decision.before_mean_ms and decision.after_mean_ms:
        assert shown.chart is not None  # the before/after chart, from status.decision


def _decided(before: float, after: float) -> records.Record:
    """A kept index (Verifying, then Succeeded) whose decision has these means."""
    record = shared.kept("dev")
    record.status.decision = remediation.Decision(keep=True, reason="kept",
                                                  before_mean_ms=before, after_mean_ms=after)
    return record


@settings(max_examples=60, deadline=None)
@given(record_of())
@example(_decided(5e-324, 1.0))  # after / before overflows: no ratio
@example(_decided(0.0, 1.0))
def test_the_typed_decision_is_filled_from_the_status(record: records.Record) -> None:
    sent = _over_the_wire(record)
    made = record.status.decision
    assert sent.HasField("decision") == (made is not None)
    if made is not None:
        assert sent.decision.outcome == ("keep" if made.keep else "revert")
        assert sent.decision.reason == made.reason
        before, after = made.before_mean_ms, made.after_mean_ms
        if (before is not None and after is not None and before > 0
                and after / before < float("inf")):
            assert sent.decision.ratio == pytest.approx(after / before)
        else:
            assert not sent.decision.HasField("ratio")
        # When it was decided: the step that left Verifying, else the last step.
        history = record.status.history
        verifying = [i for i, step in enumerate(history)
                     if step.state is RemediationState.VERIFYING]
        if verifying and verifying[-1] < len(history) - 1:
            expected = history[verifying[-1] + 1].time
        else:
            expected = history[-1].time if history else None
        assert sent.decision.HasField("decided_at") == (expected is not None)
        if expected is not None:
            assert sent.decision.decided_at.ToDatetime(expected.tzinfo) == expected


def test_a_decision_is_dated_when_verification_ended_not_at_a_later_request() -> None:
    record = shared.kept("dev")
    succeeded = record.status.history[-1]
    assert succeeded.state is RemediationState.SUCCEEDED
    later = succeeded.time.replace(year=succeeded.time.year + 1)
    record.move(RemediationState.ROLLED_BACK, "rolled back on request", now=later)
    sent = api.to_proto(record)
    assert sent.decision.decided_at.ToDatetime(succeeded.time.tzinfo) == succeeded.time


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(st.characters(exclude_categories=())),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                  max_size=3),
    max_leaves=10)


@given(_json_values)
def test_json_text_is_utf8_and_never_longer_than_escaped(value: Any) -> None:
    """What the escaped form says, in as many bytes or fewer: characters as themselves (lone
    surrogates escaped: nothing else is valid UTF-8)."""
    text = api.json_text(value)
    escaped = json.dumps(value, separators=(",", ":"))
    assert json.loads(text) == json.loads(escaped)  # == value but for a split surrogate pair
    assert len(text.encode()) <= len(escaped.encode())
    executor_pb2.Remediation(object_json=text).SerializeToString()  # valid for a proto string


def test_non_ascii_evidence_travels_as_itself() -> None:
    record = shared.pending("dev", "shop-1", "t")
    record.spec.evidence["statement"] = "SELECT 'ж' || '\U0001f600'"
    record.spec.evidence["odd"] = "\ud800"  # a lone surrogate (a journal line can hold one)
    sent = _over_the_wire(record)
    assert "SELECT 'ж' || '\U0001f600'" in sent.object_json
    assert "SELECT 'ж' || '\U0001f600'" in sent.evidence_json
    assert standalone.remediation_object(sent)["spec"]["evidence"] == record.spec.evidence


def test_an_executor_older_than_object_json_is_said_not_drawn_half() -> None:
    with pytest.raises(backend.Failure) as raised:
        standalone.remediation_object(executor_pb2.Remediation(name="shop-1"))
    assert raised.value.status == 502 and "older than this dashboard" in raised.value.reason
    for text in ("[1]", "not json", '{"metadata": 3}'):
        with pytest.raises(backend.Failure):
            standalone.remediation_object(executor_pb2.Remediation(name="x", object_json=text))


@pytest.mark.parametrize(("code", "status"), [
    (grpc.StatusCode.NOT_FOUND, 404), (grpc.StatusCode.PERMISSION_DENIED, 403),
    (grpc.StatusCode.UNAUTHENTICATED, 401), (grpc.StatusCode.FAILED_PRECONDITION, 409),
    (grpc.StatusCode.INVALID_ARGUMENT, 400), (grpc.StatusCode.ABORTED, 409),
    (grpc.StatusCode.UNAVAILABLE, 502), (grpc.StatusCode.INTERNAL, 502),
    (grpc.StatusCode.DEADLINE_EXCEEDED, 502), (grpc.StatusCode.UNIMPLEMENTED, 502),
    (None, 502)])
def test_each_grpc_status_is_an_http_status(code: grpc.StatusCode | None, status: int) -> None:
    failure = standalone.failure_of(code, "sql_hash does not match the planned SQL")
    assert failure.status == status
    if code not in (grpc.StatusCode.DEADLINE_EXCEEDED,):
        assert "sql_hash does not match" in failure.reason


@given(st.sampled_from(list(grpc.StatusCode)) | st.none(), st.none() | st.text())
def test_every_reason_is_one_short_line(code: grpc.StatusCode | None,
                                        details: str | None) -> None:
    failure = standalone.failure_of(code, details)
    assert failure.reason and "\n" not in failure.reason and "\r" not in failure.reason
    assert len(failure.reason) <= backend.REASON_CHARS
    assert failure.status in (400, 401, 403, 404, 409, 502)


class _Refused(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    """A refused call as grpc raises it (code and details), without a server."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def test_an_older_executor_is_said_so() -> None:
    failure = standalone.failure_of(grpc.StatusCode.UNIMPLEMENTED, "Method not implemented!")
    assert failure.status == 502
    assert failure.reason.startswith("the executor is older than this dashboard; run both "
                                     "from one install")


def test_guarded_turns_a_refused_call_into_a_failure_and_lets_others_through() -> None:
    def refuse() -> None:
        raise _Refused(grpc.StatusCode.NOT_FOUND, "no Remediation 'x'")

    with pytest.raises(backend.Failure) as raised:
        standalone.guarded(refuse)
    assert (raised.value.status, raised.value.reason) == (404, "executor: no Remediation 'x'")
    assert standalone.guarded(lambda: 5) == 5


@given(st.lists(st.binary(max_size=50), max_size=5), st.lists(st.binary(max_size=50),
                                                              max_size=5))
def test_a_fingerprint_is_a_live_version_and_tells_what_was_read_apart(
        first: list[bytes], second: list[bytes]) -> None:
    one, other = standalone.fingerprint(first), standalone.fingerprint(second)
    assert one == standalone.fingerprint(list(first))
    assert (one == other) == (first == second)
    assert views.Live.parse({"remediations": one}).versions == (("remediations", one),)


@given(st.text(max_size=30), st.text(max_size=30))
def test_a_monitor_checked_again_is_not_a_change(first: str, second: str) -> None:
    def described(checked: str, reachable: bool = True) -> dict[str, object]:
        return {"metadata": {"name": "m"}, "status": {
            "database": {"reachable": reachable, "checkedAt": checked},
            "remediations": {"active": 1}}}

    assert standalone.monitor_version(described(first)) == \
        standalone.monitor_version(described(second))
    assert standalone.monitor_version(described(first)) != \
        standalone.monitor_version(described(first, reachable=False))


def test_the_wait_between_reads_grows_after_failures_only() -> None:
    pause = 0.0
    grown = []
    for _ in range(6):
        pause = standalone.next_pause(pause, failed=True)
        grown.append(pause)
    assert grown == sorted(grown) and grown[-1] == standalone.MAX_POLL_SECONDS
    assert standalone.next_pause(grown[-1], failed=False) == standalone.POLL_SECONDS


class _Told:
    """What a follower delivered, from its thread."""

    def __init__(self) -> None:
        self.changes: list[backend.Change] = []
        self.lock = threading.Lock()

    def __call__(self, change: backend.Change) -> None:
        with self.lock:
            self.changes.append(change)

    def kinds(self) -> list[str]:
        with self.lock:
            return [c.kind for c in self.changes]


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(standalone, "POLL_SECONDS", 0.01)
    monkeypatch.setattr(standalone, "MAX_POLL_SECONDS", 0.02)


def _poll(read: Callable[[], str], since: str, told: _Told) -> standalone.Poll:
    follower = standalone.Poll(read, "shop-1", since, told)
    follower.start()
    return follower


@pytest.mark.usefixtures("quick")
def test_a_follower_says_changed_once_per_move_and_nothing_when_stopped() -> None:
    versions = iter(["a", "a", "b", "b", "b", "c"])
    last = ["c"]

    def read() -> str:
        last[0] = next(versions, last[0])
        return last[0]

    told = _Told()
    follower = _poll(read, "a", told)
    wait_until(lambda: told.kinds() == ["changed", "changed"], timeout=10)
    assert [(c.version, c.name) for c in told.changes] == [("b", "shop-1"), ("c", "shop-1")]
    follower.stop()
    follower.thread.join(5)
    assert not follower.thread.is_alive()
    assert told.kinds() == ["changed", "changed"]  # stopped: no last word


@pytest.mark.usefixtures("quick")
def test_an_executor_that_is_gone_ends_the_follower_with_its_reason() -> None:
    reads = []

    def read() -> str:
        reads.append(1)
        raise standalone.failure_of(grpc.StatusCode.UNAVAILABLE, "connect: no such file")

    told = _Told()
    follower = _poll(read, "a", told)
    wait_until(lambda: told.kinds() == ["failed"], timeout=10)
    follower.thread.join(5)
    assert len(reads) == standalone.MAX_POLL_FAILURES
    assert told.changes[0].status == 502
    assert "still running" in told.changes[0].reason


@pytest.mark.usefixtures("quick")
@pytest.mark.parametrize("status", [401, 403])
def test_a_refusal_ends_the_follower_at_once(status: int) -> None:
    def read() -> str:
        raise backend.Failure(status, "executor: a valid token is required")

    told = _Told()
    _poll(read, "a", told).thread.join(10)
    assert [(c.kind, c.status) for c in told.changes] == [("failed", status)]


@pytest.mark.usefixtures("quick")
def test_a_failure_between_answers_is_retried_and_a_bug_is_said() -> None:
    answers: list[Callable[[], str]] = [
        lambda: (_ for _ in ()).throw(backend.Failure(502, "blip")), lambda: "b",
        lambda: (_ for _ in ()).throw(KeyError("bug"))]

    def read() -> str:
        return answers.pop(0)()

    told = _Told()
    _poll(read, "a", told).thread.join(10)
    assert told.kinds() == ["changed", "failed"]
    assert "KeyError" in told.changes[1].reason


def test_a_follower_stopped_before_its_first_read_reads_nothing() -> None:
    reads: list[int] = []
    told = _Told()
    follower = standalone.Poll(lambda: reads.append(1) or "x", "", "a", told)
    follower.stop()
    follower.start()
    follower.thread.join(5)
    assert reads == [] and told.changes == []


def test_the_token_goes_on_a_unix_socket_only(tmp_path: object) -> None:
    assert standalone.metadata_for("unix:///run/x.sock", None) == ()
    with pytest.raises(backend.Failure) as raised:
        standalone.metadata_for("127.0.0.1:50052", __import__("pathlib").Path("/nope"))
    assert "clear text" in raised.value.reason
    with pytest.raises(backend.Failure) as unreadable:
        standalone.metadata_for("unix:///run/x.sock", __import__("pathlib").Path("/nope/t"))
    assert "cannot read the token file" in unreadable.value.reason


@given(st.text(min_size=1, max_size=30).filter(lambda t: t.strip() != ""))
def test_a_token_a_header_cannot_carry_is_refused_before_any_call(token: str) -> None:
    path = Path("/tmp") / f"sm-token-{threading.get_ident()}"  # no tmp_path in a @given
    try:
        path.write_text(token, encoding="utf-8", errors="surrogatepass")
        sent = path.read_text(encoding="utf-8", errors="surrogatepass").strip()
        if all(" " <= c <= "~" for c in sent):
            assert standalone.metadata_for("unix:///x.sock", path) == (
                ("authorization", f"Bearer {sent}"),)
        else:
            with pytest.raises(backend.Failure) as refused:
                standalone.metadata_for("unix:///x.sock", path)
            assert refused.value.status == 400 and "cannot carry" in refused.value.reason
            assert sent not in refused.value.reason
    except UnicodeError:
        pass  # not a text a file holds
    finally:
        path.unlink(missing_ok=True)


def test_the_channel_reconnects_within_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    """gRPC's default backoff grows to 120 s: an executor started again at the same address
    would be found again only minutes later."""
    made: list[dict[str, Any]] = []
    real = grpc.insecure_channel

    def channel(address: str, options: Any = None, **kwargs: Any) -> grpc.Channel:
        made.append(dict(options or ()))
        return real(address, options=options, **kwargs)

    monkeypatch.setattr(standalone.grpc, "insecure_channel", channel)
    with pytest.raises(backend.Failure):  # nothing listens there
        standalone.connect(argparse.Namespace(executor="127.0.0.1:1", token_file=None))
    [options] = made
    assert options["grpc.max_reconnect_backoff_ms"] <= 5000
    assert options["grpc.initial_reconnect_backoff_ms"] <= 1000
    assert options["grpc.min_reconnect_backoff_ms"] <= 1000
    assert options["grpc.max_receive_message_length"] == 4 * 1024 * 1024


class _Stub:
    """The executor's answers, chosen: ``pages`` maps a page token to (items, next token)."""

    def __init__(self, pages: dict[str, tuple[int, str]] | None = None,
                 monitor: str = "{}") -> None:
        self.pages, self.monitor, self.read = pages or {}, monitor, []
        self.item = api.to_proto(shared.pending("dev", "shop-1", "t"))

    def ListRemediations(self, request: executor_pb2.ListRemediationsRequest,
                         **_: Any) -> executor_pb2.ListRemediationsResponse:
        self.read.append(request.page_token)
        count, following = self.pages[request.page_token]
        return executor_pb2.ListRemediationsResponse(
            remediations=[self.item] * count, next_page_token=following)

    def DescribeMonitor(self, request: executor_pb2.DescribeMonitorRequest,
                        **_: Any) -> executor_pb2.DescribeMonitorResponse:
        return executor_pb2.DescribeMonitorResponse(namespace="dev", name="shop",
                                                    object_json=self.monitor)


def _source(stub: _Stub) -> standalone.StandaloneBackend:
    source = standalone.StandaloneBackend("unix:///x.sock", grpc.insecure_channel(
        "unix:///nonexistent.sock"), (), "dev", "shop")
    source.stub = stub  # type: ignore[assignment]
    return source


@given(st.integers(2, 30), st.data())
def test_a_page_token_that_comes_back_is_said_at_once(length: int, data: st.DataObject) -> None:
    """Pages "" -> t1 -> ... -> t(length-1) -> back to one of t1... (A -> B -> A): each page
    is read once, then the list is refused."""
    tokens = [""] + [f"t{i}" for i in range(1, length)]
    back = data.draw(st.sampled_from(tokens[1:]))
    following = [*tokens[1:], back]
    stub = _Stub({token: (2, after) for token, after in zip(tokens, following, strict=True)})
    source = _source(stub)
    try:
        with pytest.raises(backend.Failure) as refused:
            source.remediation_pages()
        assert refused.value.status == 502 and "does not end" in refused.value.reason
        assert stub.read == tokens
    finally:
        source.close()


def test_a_list_that_ends_is_read_whole() -> None:
    stub = _Stub({"": (2, "a"), "a": (3, "")})
    source = _source(stub)
    messages, revision = source.remediation_pages()
    assert (len(messages), revision, stub.read) == (5, "", ["", "a"])
    source.close()


def test_a_list_of_too_many_remediations_is_said_not_read_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(standalone, "MAX_ITEMS", 10)
    stub = _Stub({"": (4, "a"), "a": (4, "b"), "b": (4, "c"), "c": (4, "")})
    source = _source(stub)
    with pytest.raises(backend.Failure) as refused:
        source.remediation_pages()
    assert refused.value.status == 502 and "passed 10 Remediations" in refused.value.reason
    assert stub.read == ["", "a", "b"]
    source.close()


@given(st.sampled_from(['{"metadata": "x"}', '{"metadata": 5}', '{"metadata": null}', "{}",
                        '{"metadata": []}']) | st.dictionaries(
    st.just("metadata"), st.text() | st.integers() | st.lists(st.integers()), min_size=1
).map(json.dumps))
def test_a_monitor_without_metadata_is_a_502_not_a_traceback(text: str) -> None:
    source = _source(_Stub(monitor=text))
    try:
        with pytest.raises(backend.Failure) as refused:
            source.list_objects("databasemonitors", None)
        assert refused.value.status == 502 and "without metadata" in refused.value.reason
    finally:
        source.close()


def test_this_mode_never_loads_the_kubernetes_client(tmp_path: object) -> None:
    """Issue 19: the modules of this mode, and the whole `startupmonkey dashboard --executor`
    command (here refused at once: no socket), leave the Kubernetes client unloaded."""
    code = (
        "import sys\n"
        "import startupmonkey.dashboard.standalone, startupmonkey.dashboard.server\n"
        "from startupmonkey import cli\n"
        "loaded = 'kubernetes' in sys.modules\n"
        "code = cli.main(['dashboard', '--executor', 'unix:///nonexistent/executor.sock',"
        " '--port', '0'])\n"
        "print(loaded, 'kubernetes' in sys.modules, code)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.stdout.split() == ["False", "False", "1"], done.stdout + done.stderr
    assert re.fullmatch(r"startupmonkey dashboard: no executor at unix:///nonexistent/"
                        r"executor\.sock \(no such file\): .*\n", done.stderr), done.stderr


def test_the_monitor_object_counts_as_the_cluster_does() -> None:
    from startupmonkey.models import monitor as monitor_models

    spec = monitor_models.DatabaseMonitorSpec.model_validate({
        "database": {"host": "db", "port": 5433, "dbname": "shop",
                     "credentialsSecret": {"name": "unused"}}, "mode": "approval"})
    record = records.Record(
        name="shop-1", namespace="dev", created=records.utcnow(),
        spec=remediation.RemediationSpec(
            monitor="shop", detection_key="k", detection_id="i",
            detector=DetectorId.IDLE_IN_TRANSACTION, action=ActionId.TERMINATE_SESSION,
            risk_class=RiskClass.SESSION, target=remediation.Target(pid=42),
            sql="SELECT 1", sql_hash=remediation.sql_hash("SELECT 1", None)),
        status=remediation.RemediationStatus())
    record.move(RemediationState.PENDING_APPROVAL, "waits")
    obj = api.monitor_object("dev", "shop", spec, {"reachable": True, "serverVersion": "16.4"},
                             records.remediation_counts([record]))
    json.dumps(obj)
    card = views.monitor_card(obj)
    assert (card.namespace, card.name, card.mode, card.database) == (
        "dev", "shop", "approval", "db:5433/shop")
    assert card.reachable is True and ("PendingApproval", 1) in card.counts
    assert card.warnings and "approval" in card.warnings[0][0]
