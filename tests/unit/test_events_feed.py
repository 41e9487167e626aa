"""``startupmonkey events`` without servers: the lines of the feed (any bytes said as malformed
and counted, never a crash), and where the watcher login comes from (run's private work
folder; files; never plain text beyond loopback)."""

from __future__ import annotations

import argparse
import datetime
import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from startupmonkey import cli, events
from startupmonkey.models import messages
from startupmonkey.models.enums import ActionId, DetectorId, RemediationState, RiskClass
from startupmonkey.models.remediation import Target

NS, MON = "prod", "shop"
ROOT = f"startupmonkey.v1.{NS}.{MON}"
AT = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)


def detection(summary: str = "public.orders: 50,000 dead rows") -> messages.Detection:
    key = messages.detection_key(NS, MON, DetectorId.DEAD_TUPLES, "public.orders")
    return messages.Detection(
        id=messages.new_occurrence_id(key, AT), key=key, namespace=NS, monitor=MON,
        database="shop", detector=DetectorId.DEAD_TUPLES, proposed_action=ActionId.VACUUM,
        risk_class=RiskClass.MAINTENANCE, target=Target(schema="public", table="orders"),
        summary=summary, first_seen=AT, last_seen=AT, published_at=AT)


def event(message: str = "vacuum of public.orders is waiting for approval"
          ) -> messages.RemediationEvent:
    d = detection()
    return messages.RemediationEvent(
        namespace=NS, monitor=MON, remediation="shop-0123456789", key=d.key, detection_id=d.id,
        detector=d.detector, action=d.proposed_action,
        state=RemediationState.PENDING_APPROVAL, time=AT, message=message)


def clock(at: datetime.datetime) -> str:
    return at.astimezone().strftime("%H:%M:%S")


def test_lines_use_the_run_views_words_and_say_a_detection_once() -> None:
    feed = events.Feed(NS, MON, json_lines=False)
    d, e = detection(), event()
    assert feed.take(d.subject, d.encode()) == \
        f"{clock(AT)} detected dead_tuples: public.orders: 50,000 dead rows"
    assert feed.take(d.subject, d.encode()) is None, "a re-publication is no news"
    assert feed.take(e.subject, e.encode()) == (
        f"{clock(AT)} shop-0123456789 vacuum -> PendingApproval: vacuum of public.orders is "
        "waiting for approval")
    assert feed.totals() == "2 detection messages, 1 state changes, 0 malformed"


def test_json_lines_carry_every_message_as_published_and_its_subject() -> None:
    feed = events.Feed(NS, MON, json_lines=True)
    d = detection()
    lines = [feed.take(d.subject, d.encode()) for _ in range(2)]
    assert [json.loads(line or "") for line in lines] == [
        {"subject": d.subject, "message": json.loads(d.encode())}] * 2


def test_a_message_cannot_drive_the_terminal() -> None:
    feed = events.Feed(NS, MON, json_lines=False)
    e = event("done\x1b[2J\x1b]0;owned\x07\nfake line")
    line = feed.take(e.subject, e.encode()) or ""
    assert "\x1b" not in line and "\n" not in line and "\x07" not in line
    assert line.endswith("done\\x1b[2J\\x1b]0;owned\\x07\\nfake line")


@pytest.mark.parametrize(("subject", "data", "reason"), [
    (f"{ROOT}.detections.dead_tuples", b"not json", "detection: "),
    (f"{ROOT}.detections.missing_index", detection().encode(),
     f"belongs on {ROOT}.detections.dead_tuples"),
    (f"{ROOT}.remediations.succeeded", event().encode(),
     f"belongs on {ROOT}.remediations.pendingapproval"),
    (f"{ROOT}.other", b"{}", "not a detection or remediation subject of prod/shop"),
    (f"startupmonkey.v1.{NS}.other.detections.dead_tuples", detection().encode(),
     "not a detection or remediation subject of prod/shop"),
    (f"{ROOT}.detections.dead_tuples", b"x" * (messages.MAX_MESSAGE_BYTES + 1), "exceeds")])
def test_what_is_not_a_message_of_this_monitor_on_its_subject_is_malformed(
        subject: str, data: bytes, reason: str) -> None:
    feed = events.Feed(NS, MON, json_lines=False, clock=lambda: AT)
    line = feed.take(subject, data) or ""
    assert line.startswith(f"{clock(AT)} ignored a malformed message on {subject}: ")
    assert reason in line and line.endswith("(1 so far)")
    assert feed.counts["malformed"] == 1


@settings(max_examples=300, deadline=None)
@given(subject=st.one_of(st.sampled_from([f"{ROOT}.detections.dead_tuples",
                                          f"{ROOT}.remediations.succeeded", f"{ROOT}.x"]),
                         st.text(max_size=80)),
       data=st.one_of(st.binary(max_size=2048),
                      st.builds(lambda d, cut: d[:cut],
                                st.sampled_from([detection().encode(), event().encode()]),
                                st.integers(0, 600))),
       json_lines=st.booleans())
def test_any_bytes_on_any_subject_are_said_and_counted_never_a_crash(
        subject: str, data: bytes, json_lines: bool) -> None:
    feed = events.Feed(NS, MON, json_lines=json_lines)
    line = feed.take(subject, data)
    assert line is not None and "\n" not in line
    counted = feed.counts["malformed"] + feed.counts["detections"] + feed.counts["remediations"]
    assert counted == 1
    if json_lines:
        document = json.loads(line)
        assert document["subject"] == subject
        assert ("malformed" in document) is (feed.counts["malformed"] == 1)


# --- where the login comes from ------------------------------------------------------------

def run_folder(tmp_path: Path, **given: Any) -> tuple[Path, events.Connection]:
    """A work folder laid out as `startupmonkey run` leaves it: 0700, the socket's folder,
    the watcher's connection file written by :func:`events.write_connection`."""
    folder = tmp_path / "startupmonkey-abc"
    folder.mkdir(mode=0o700)
    connection = events.Connection(**{"url": "nats://127.0.0.1:4333", "namespace": NS,
                                       "monitor": MON, "user": "watcher",
                                       "password": "s3cret-pw", **given})
    events.write_connection(folder, connection)
    return folder, connection


def args(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(["events", *argv])


def test_executor_mode_reads_the_watcher_login_next_to_the_socket(tmp_path: Path) -> None:
    folder, connection = run_folder(tmp_path)
    path = folder / events.CONNECTION_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    assert "s3cret-pw" not in repr(connection)
    assert events.resolve(args("--executor", f"unix://{folder}/executor.sock")) == connection


def test_an_external_bus_without_login_is_read_too(tmp_path: Path) -> None:
    folder, connection = run_folder(tmp_path, user=None, password=None,
                                    url="nats://bus.example:4222")
    assert events.read_connection(f"unix://{folder}/executor.sock") == connection


@pytest.mark.parametrize(("what", "mode"), [("file", 0o640), ("file", 0o604),
                                            ("folder", 0o770), ("folder", 0o703)])
def test_a_connection_file_others_could_read_or_replace_is_refused(
        tmp_path: Path, what: str, mode: int) -> None:
    folder, _ = run_folder(tmp_path)
    os.chmod(folder / events.CONNECTION_FILE if what == "file" else folder, mode)
    with pytest.raises(events.Refused, match=f"mode {mode:04o}"):
        events.read_connection(f"unix://{folder}/executor.sock")


def test_executor_mode_says_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(events.Refused, match="not found: is `startupmonkey run` running"):
        events.read_connection(f"unix://{tmp_path}/executor.sock")
    with pytest.raises(events.Refused, match="give the unix:// address"):
        events.read_connection("127.0.0.1:50051")
    with pytest.raises(events.Refused, match="give it alone"):
        events.resolve(args("--executor", f"unix://{tmp_path}/executor.sock", MON))


def test_a_login_from_files_never_from_argv(tmp_path: Path) -> None:
    (tmp_path / "user").write_text("watcher\n")
    (tmp_path / "password").write_text("pw\n")
    got = events.resolve(args("-n", NS, MON, "--nats", "nats://127.0.0.1:4999",
                              "--nats-user-file", str(tmp_path / "user"),
                              "--nats-password-file", str(tmp_path / "password")))
    assert got == events.Connection("nats://127.0.0.1:4999", NS, MON, "watcher", "pw")
    with pytest.raises(events.Refused, match="give both"):
        events.resolve(args(MON, "--nats-user-file", str(tmp_path / "user")))
    with pytest.raises(events.Refused, match="cannot read"):
        events.resolve(args(MON, "--nats-user-file", str(tmp_path / "nope"),
                            "--nats-password-file", str(tmp_path / "password")))
    with pytest.raises(events.Refused, match="say which monitor"):
        events.resolve(args())


@pytest.mark.parametrize(("url", "password", "refused"), [
    ("nats://127.0.0.1:4222", "pw", False), ("nats://localhost:4222", "pw", False),
    ("nats://[::1]:4222", "pw", False), ("127.0.0.1:4222", "pw", False),
    ("tls://nats.example:4222", "pw", False), ("nats://nats.example:4222", None, False),
    ("nats://nats.example:4222", "pw", True), ("nats://10.0.0.7:4222", "pw", True),
    ("nats.example:4222", "pw", True)])
def test_a_password_never_crosses_the_network_in_clear_text(url: str, password: str | None,
                                                            refused: bool) -> None:
    connection = events.Connection(url, NS, MON, "watcher", password)
    if refused:
        with pytest.raises(events.Refused, match="clear text"):
            events.check_transport(connection)
    else:
        events.check_transport(connection)


@pytest.mark.parametrize(("status", "words"), [
    (403, "you may not read Secret prod/shop-nats (get secrets): ask for a Role allowing "
          "get on Secret shop-nats-watcher"),
    (404, "Secret prod/shop-nats not found"), (500, "status 500")])
def test_secret_refusals_say_what_to_do(status: int, words: str) -> None:
    assert words in events._secret_refusal(status, NS, "shop-nats", "shop-nats-watcher")
