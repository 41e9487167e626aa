"""Notifications: which states of which Remediation go to which webhook, the bodies, the
signature, and delivery (docs/notifications.md).

Pure parts (no I/O): :func:`wanted` and :func:`due` (the state filter, and what is still to
send given what was delivered), :func:`build` (the message of one state, as a generic JSON,
Slack or Teams body), :func:`signature_headers`. Delivery (:class:`Worker`): one asyncio task
and queue per target, each attempt bounded by a timeout, retried with exponential backoff up
to a bound, so a slow or dead target never delays another one, nor the caller (who only
enqueues). Recording a delivery is the caller's: the operator writes it on the Remediation
(``startupmonkey.dev/notified``), ``startupmonkey run`` beside its audit log; both send again
only what was not recorded (at least once).

A webhook URL and its signing key are credentials: they are passed to :class:`Worker` by a
resolver at send time, never logged (errors name the target, not the URL), never put in a
message, a condition or a metric.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import re
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import aiohttp

from startupmonkey import kubetime
from startupmonkey import summary as summary_mod
from startupmonkey.models import monitor as models
from startupmonkey.models import remediation
from startupmonkey.models.enums import RemediationState, RiskClass

log = logging.getLogger(__name__)

#: Where a Remediation records the deliveries made: ``state@target`` pairs, comma-separated.
ANNOTATION_NOTIFIED = remediation.LABEL_PREFIX + "notified"
#: On a DatabaseMonitor, written by the operator: when it first saw each notification target
#: (a JSON object, target name -> RFC 3339 UTC). A transition before it is old news, never sent
#: (:func:`due`); ``startupmonkey run`` keeps the same times in its record file.
ANNOTATION_NOTIFY_FROM = remediation.LABEL_PREFIX + "notify-from"
#: The signature header: ``sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">``.
SIGNATURE_HEADER = "X-StartupMonkey-Signature"
#: Unix seconds when the request was signed (part of what is signed: replays can be refused).
TIMESTAMP_HEADER = "X-StartupMonkey-Timestamp"
#: ``<namespace>/<remediation>/<state>``: the same on every retry, so a receiver can drop a
#: repeat (delivery is at least once).
DELIVERY_HEADER = "X-StartupMonkey-Delivery"
#: Bodies stay below this many bytes whatever a Remediation holds (the encoded body is
#: measured after it is built, and its SQL and evidence shrunk until it fits).
MAX_BODY = 40_000
#: Teams refuses a card above about 28 KB.
TEAMS_MAX_BODY = 28_000
#: Slack refuses a section text longer than 3000 characters.
SLACK_SECTION_MAX = 3000
SCHEMA_VERSION = 1
USER_AGENT = "startupmonkey-notify/1"


# ------------------------------------------------------------------------ which states where


def wanted(target: models.NotificationTarget, state: RemediationState, risk: RiskClass) -> bool:
    """Whether ``target`` wants a Remediation of ``risk`` that reached ``state``: advice only
    with ``advice: true``; Succeeded for the classes in ``succeededFor`` (or every class when
    ``states`` lists it); any other state when ``states`` lists it."""
    if risk is RiskClass.ADVICE:
        return target.advice and (state is RemediationState.RECOMMENDED or state in target.states)
    if state is RemediationState.SUCCEEDED and risk in target.succeeded_for:
        return True
    return state in target.states


def parse_notified(value: str | None) -> set[str]:
    """The ``state@target`` pairs of an annotation value (anything else is ignored)."""
    return {p.strip() for p in (value or "").split(",") if "@" in p}


def format_notified(pairs: Iterable[str]) -> str:
    """The annotation value of a set of pairs (sorted: the same set, the same text)."""
    return ",".join(sorted(set(pairs)))


def pair(state: RemediationState, target: str) -> str:
    """One delivery's record."""
    return f"{state.value}@{target}"


def states_reached(status: Mapping[str, Any]) -> list[RemediationState]:
    """Every state the Remediation has been in, in order (its history, then its current
    state), each once; unknown names are skipped."""
    seen: list[RemediationState] = []
    names = [h.get("state") for h in status.get("history") or [] if isinstance(h, Mapping)]
    names.append(status.get("state"))
    for name in names:
        try:
            state = RemediationState(str(name))
        except ValueError:
            continue
        if state not in seen:
            seen.append(state)
    return seen


def transition_time(obj: Mapping[str, Any], state: RemediationState
                    ) -> datetime.datetime | None:
    """When ``obj`` (a Remediation as stored) last entered ``state``: the latest step of its
    ``status.history`` in that state, else its ``metadata.creationTimestamp``; None when
    neither is known."""
    status = _mapping(obj.get("status"))
    found: datetime.datetime | None = None
    for step in status.get("history") or []:
        if isinstance(step, Mapping) and step.get("state") == state.value:
            at = kubetime.parse_or_none(step.get("time"))
            if at is not None and (found is None or at > found):
                found = at
    if found is None:
        found = kubetime.parse_or_none(_mapping(obj.get("metadata")).get("creationTimestamp"))
    return found


def due(targets: Iterable[models.NotificationTarget], obj: Mapping[str, Any],
        delivered: set[str], since: Mapping[str, datetime.datetime] | None = None
        ) -> list[tuple[models.NotificationTarget, RemediationState]]:
    """What is still to send about ``obj`` (a Remediation as stored, camelCase): each wanted
    state it has reached and not yet ``delivered`` (``state@target`` pairs). A PendingApproval
    it has already left is not sent any more (its call to approve is moot: the later state,
    when wanted, says what happened). With ``since`` (target name -> when the sender first saw
    that target: :func:`notify_from`), a state entered before it is old news and not sent (a
    state whose time is unknown is sent), except a PendingApproval it is still in: that one
    waits for a person now."""
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    if not isinstance(spec, Mapping) or not isinstance(status, Mapping):
        return []
    try:
        risk = RiskClass(str(spec.get("riskClass")))
    except ValueError:
        return []
    reached = states_reached(status)
    current = reached[-1] if reached else None
    out: list[tuple[models.NotificationTarget, RemediationState]] = []
    for target in targets:
        start = (since or {}).get(target.name)
        for state in reached:
            if state is RemediationState.PENDING_APPROVAL and current is not state:
                continue
            if not wanted(target, state, risk) or pair(state, target.name) in delivered:
                continue
            at = transition_time(obj, state) if start is not None else None
            if start is not None and at is not None and at < start and \
                    state is not RemediationState.PENDING_APPROVAL:
                continue  # before the target existed: old news
            out.append((target, state))
    return out


def parse_since(value: str | None) -> dict[str, datetime.datetime]:
    """The target -> time entries of an :data:`ANNOTATION_NOTIFY_FROM` value (an entry that
    is not a name and an RFC 3339 time is left out: :func:`notify_from` records it anew)."""
    try:
        loaded = json.loads(value or "{}")
    except ValueError:
        return {}
    if not isinstance(loaded, dict):
        return {}
    out: dict[str, datetime.datetime] = {}
    for name, stamp in loaded.items():
        at = kubetime.parse_or_none(stamp)
        if isinstance(name, str) and at is not None:
            out[name] = at
    return out


def format_since(since: Mapping[str, datetime.datetime]) -> str:
    """The annotation value of ``since`` (sorted: the same times, the same text)."""
    return json.dumps({k: kubetime.format(v) for k, v in sorted(since.items())},
                      separators=(",", ":"))


def notify_from(targets: Iterable[models.NotificationTarget],
                recorded: Mapping[str, datetime.datetime],
                now: datetime.datetime) -> dict[str, datetime.datetime]:
    """Each target's notify-from time: as ``recorded`` for a target seen before, else ``now``
    (a new or renamed target hears only news); a removed target's entry is dropped (added
    again later, it starts anew)."""
    return {t.name: recorded.get(t.name, now) for t in targets}


# ------------------------------------------------------------------------------- the message


@dataclasses.dataclass(frozen=True)
class Place:
    """Where the Remediation lives, for the approval commands: in a cluster (``kubectl`` and
    ``startupmonkey approve --kube``) or under ``startupmonkey run`` (its executor socket)."""

    executor_address: str | None = None  # None: a cluster

    def approve_commands(self, namespace: str, name: str, sql_hash: str) -> list[str]:
        """The exact commands that approve (docs/executor.md)."""
        short = sql_hash[:12]
        if self.executor_address is not None:
            return [f"startupmonkey approve {name} --executor {self.executor_address} "
                    f"--sql-hash {short}"]
        return [f"kubectl patch rem {name} -n {namespace} --type merge "
                "-p '{\"spec\":{\"approved\":true}}'",
                f"startupmonkey approve {name} --kube -n {namespace} --sql-hash {short}"]


#: C0 and C1 control characters but tab and newline (a name or query text the database
#: controls could carry them into a chat client).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _cut(text: object, limit: int) -> str:
    value = _CONTROL.sub("", str(text if text is not None else ""))
    return value if len(value) <= limit else value[:max(limit - 3, 0)] + "..."


def _number(value: object) -> float | str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return _cut(value, 64) if value is not None else None
    return float(value) if math.isfinite(value) else str(value)


def _figures(values: object, limit: int = 24) -> dict[str, float | str | None]:
    if not isinstance(values, Mapping):
        return {}
    return {_cut(k, 80): _number(v) for k, v in list(values.items())[:limit]}


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _where(target: Mapping[str, Any]) -> str:
    if target.get("index"):
        return f"index {_cut(target.get('schema') or '', 63)}.{_cut(target['index'], 63)}"
    if target.get("table"):
        return f"{_cut(target.get('schema') or '', 63)}.{_cut(target['table'], 63)}"
    if target.get("pid"):
        return f"pid {_cut(target['pid'], 20)}"
    return ""


@dataclasses.dataclass(frozen=True)
class Message:
    """One notification, before it is put in a format."""

    state: str
    namespace: str
    name: str
    monitor: str
    title: str
    facts: list[tuple[str, str]]
    sql: str
    executed_sql: list[str]
    approve: list[str]
    expires_at: str
    document: dict[str, Any]

    @property
    def delivery_id(self) -> str:
        """The same for every attempt of this state of this Remediation."""
        return f"{self.namespace}/{self.name}/{self.state}"


def message(obj: Mapping[str, Any], state: RemediationState, place: Place) -> Message:
    """The message of ``state`` of ``obj`` (a Remediation as stored): what, where, why (the
    detector's summary and evidence), what was run, the before/after figures in words
    (``startupmonkey/summary.py``) and, for PendingApproval, the commands and the expiry. Every
    text is cut so that any content gives a body below :data:`MAX_BODY`."""
    meta, spec, status = (_mapping(obj.get(k)) for k in ("metadata", "spec", "status"))
    namespace, name = _cut(meta.get("namespace", ""), 63), _cut(meta.get("name", ""), 253)
    monitor = _cut(spec.get("monitor", ""), 40)
    action, risk = _cut(spec.get("action", ""), 40), _cut(spec.get("riskClass", ""), 40)
    where = _where(_mapping(spec.get("target")))
    said = summary_mod.of_object(obj)
    what = f"{action} {where}".strip()
    title = f"{state.value}: {what} ({risk}) on {namespace}/{monitor}"
    why = _cut(spec.get("summary", ""), 1024)
    evidence = {_cut(k, 80): _cut(v, 200)
                for k, v in list(_mapping(spec.get("evidence")).items())[:16]}
    sql = _cut(spec.get("sql", ""), 4000)
    executed = [_cut(s, 2000) for s in list(status.get("executedSql") or [])[:4]]
    sql_hash = _cut(spec.get("sqlHash", ""), 64)
    approve: list[str] = []
    expires = ""
    if state is RemediationState.PENDING_APPROVAL:
        approve = place.approve_commands(namespace, name, sql_hash)
        expires = _cut(spec.get("approvalExpiresAt") or "", 40)
    facts = [("Remediation", f"{namespace}/{name}"), ("Monitor", monitor),
             ("Action", f"{what} ({risk})"),
             ("Detector", _cut(spec.get("detector", ""), 40)), ("Why", why),
             ("Evidence", ", ".join(f"{k}={v}" for k, v in evidence.items())),
             ("State message", _cut(status.get("message", ""), 1024)),
             ("Before/after", _cut(said.text, 600)), ("Benefit", _cut(said.benefit, 256))]
    if approve:
        facts += [("Approve", " or ".join(approve)), ("Expires", expires or "never")]
    facts = [(k, v) for k, v in facts if v]
    document: dict[str, Any] = {
        "version": SCHEMA_VERSION, "kind": "RemediationNotification", "state": state.value,
        "title": title,
        "remediation": {"namespace": namespace, "name": name, "monitor": monitor},
        "action": action, "riskClass": risk, "detector": _cut(spec.get("detector", ""), 40),
        "target": where, "why": why, "evidence": evidence, "sql": sql,
        "rollbackSql": _cut(spec.get("rollbackSql") or "", 2000), "sqlHash": sql_hash,
        "executedSql": executed, "message": _cut(status.get("message", ""), 1024),
        "before": _figures(status.get("before")), "after": _figures(status.get("after")),
        "summary": _cut(said.text, 600), "benefit": _cut(said.benefit, 256),
    }
    if state is RemediationState.PENDING_APPROVAL:
        document["approval"] = {"commands": approve, "expiresAt": expires or None}
    return Message(state.value, namespace, name, monitor, title, facts, sql, executed,
                   approve, expires, document)


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _code(text: str) -> str:
    return text.replace("```", "'''")


def _fenced(label: str, sql: str) -> str:
    """``label`` and ``sql`` in a code block that fits one section, its fence closed even
    when the SQL is cut (never cut inside an escape such as ``&amp;``)."""
    room = SLACK_SECTION_MAX - len(label) - len("\n``````")
    code = _slack_escape(_code(sql))
    if len(code) > room:
        code = code[:room - 3]
        amp = code.rfind("&")
        if amp >= 0 and ";" not in code[amp:]:
            code = code[:amp]
        code += "..."
    return f"{label}\n```{code}```"


def slack_body(msg: Message) -> dict[str, Any]:
    """A Slack incoming-webhook body: ``text`` (the notification's fallback) and sections of
    mrkdwn, each within Slack's 3000 characters."""
    lines = [f"*{_slack_escape(k)}:* {_slack_escape(v)}" for k, v in msg.facts]
    sections = [f"*{_slack_escape(msg.title)}*", "\n".join(lines)]
    if msg.sql:
        sections.append(_fenced("*SQL:*", msg.sql))
    for sql in msg.executed_sql:
        sections.append(_fenced("*Run:*", sql))
    blocks = [{"type": "section",
               "text": {"type": "mrkdwn", "text": _cut(s, SLACK_SECTION_MAX)}}
              for s in sections if s]
    return {"text": _cut(_slack_escape(msg.title), SLACK_SECTION_MAX), "blocks": blocks}


def teams_body(msg: Message) -> dict[str, Any]:
    """A Microsoft Teams incoming-webhook body (a legacy MessageCard)."""
    failed = msg.state in (RemediationState.FAILED.value, RemediationState.ROLLED_BACK.value)
    color = "D13438" if failed else ("FFB900" if msg.approve else "2EB886")
    sections: list[dict[str, Any]] = [{
        "activityTitle": _teams_escape(msg.title),
        "facts": [{"name": k, "value": _teams_escape(v)} for k, v in msg.facts]}]
    if msg.sql:
        sections.append({"title": "SQL", "text": f"<pre>{_html(msg.sql)}</pre>"})
    for sql in msg.executed_sql:
        sections.append({"title": "Run", "text": f"<pre>{_html(sql)}</pre>"})
    return {"@type": "MessageCard", "@context": "https://schema.org/extensions",
            "summary": _cut(msg.title, 256), "themeColor": color,
            "title": _teams_escape(msg.title),
            "sections": sections}


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


#: What Teams' markdown would read as formatting or a link in a name the database controls.
_TEAMS_MARKDOWN = re.compile(r"([\\`*_\[\]#~|])")


def _teams_escape(text: str) -> str:
    """A Teams text or fact: HTML and markdown escaped, so a table or index name shows as
    itself (never a link, a heading or markup)."""
    return _TEAMS_MARKDOWN.sub(r"\\\1", _html(text))


def encode(body: dict[str, Any]) -> bytes:
    """Compact JSON, UTF-8 (no NaN: every figure is finite or a string)."""
    return json.dumps(body, ensure_ascii=False, allow_nan=False,
                      separators=(",", ":")).encode()


def _shrunk(msg: Message, room: int) -> Message:
    """``msg`` with its SQL, evidence and long texts cut to about ``room`` characters."""
    doc = dict(msg.document)
    doc["sql"] = _cut(doc.get("sql"), room)
    doc["rollbackSql"] = _cut(doc.get("rollbackSql"), room)
    doc["executedSql"] = [_cut(x, room // 2) for x in doc.get("executedSql") or []][:2]
    doc["evidence"] = {k: _cut(v, room // 16) for k, v in
                       list(_mapping(doc.get("evidence")).items())[:8]}
    for key in ("why", "message", "summary"):
        doc[key] = _cut(doc.get(key), max(room // 2, 64))
    for key in ("before", "after"):
        doc[key] = dict(list(_mapping(doc.get(key)).items())[:max(room // 200, 4)])
    facts = [(k, _cut(v, max(room // 2, 200))) for k, v in msg.facts]
    return dataclasses.replace(msg, facts=facts, sql=_cut(msg.sql, room),
                               executed_sql=[_cut(x, room // 2) for x in msg.executed_sql][:2],
                               document=doc)


def _encoded(msg: Message, fmt: models.NotificationFormat) -> bytes:
    if fmt is models.NotificationFormat.SLACK:
        return encode(slack_body(msg))
    if fmt is models.NotificationFormat.TEAMS:
        return encode(teams_body(msg))
    return encode(msg.document)


def build(msg: Message, fmt: models.NotificationFormat) -> bytes:
    """The body of ``msg`` in ``fmt``, measured once encoded (escapes and multi-byte text
    grow it) and its SQL and evidence shrunk until it is below the format's bound
    (:data:`TEAMS_MAX_BODY` for Teams, else :data:`MAX_BODY`)."""
    limit = TEAMS_MAX_BODY if fmt is models.NotificationFormat.TEAMS else MAX_BODY
    body = _encoded(msg, fmt)
    for room in (2000, 1000, 400, 100, 0):
        if len(body) < limit:
            break
        body = _encoded(_shrunk(msg, room), fmt)
    return body


def signing_key(raw: bytes) -> bytes:
    """The signing key of a Secret value or file: its bytes as stored, less one trailing
    newline (what ``kubectl create secret --from-file`` of an ``echo``-ed file holds); the
    operator and ``run`` both use this. Empty means unresolved, never unsigned."""
    return raw[:-1] if raw.endswith(b"\n") else raw


def signature(key: bytes, timestamp: str, body: bytes) -> str:
    """``sha256=`` and the hex HMAC-SHA256 of ``<timestamp>.<body>`` under ``key``."""
    mac = hmac.new(key, timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def signature_headers(key: bytes | None, body: bytes, now: float) -> dict[str, str]:
    """The signature headers (none without a key)."""
    if not key:
        return {}
    timestamp = str(int(now))
    return {TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: signature(key, timestamp, body)}


def verify(key: bytes, timestamp: str, body: bytes, header: str) -> bool:
    """What a receiver does: recompute and compare in constant time."""
    return hmac.compare_digest(signature(key, timestamp, body), header)


def rejudge(obj: Mapping[str, Any] | None, job: Job, target: str,
            fmt: models.NotificationFormat, place: Place) -> Job | None:
    """``job`` as ``obj`` (the freshest copy of its Remediation) warrants it now, its body
    rebuilt; None when the Remediation is gone, its state was recorded as delivered to
    ``target`` meanwhile, or the state is a PendingApproval it has already left."""
    if obj is None:
        return None
    status = _mapping(obj.get("status"))
    reached = states_reached(status)
    if job.state not in reached:
        return job  # a copy older than the job's: keep what was built
    if job.state is RemediationState.PENDING_APPROVAL and reached[-1] is not job.state:
        return None
    annotations = _mapping(_mapping(obj.get("metadata")).get("annotations"))
    if pair(job.state, target) in parse_notified(annotations.get(ANNOTATION_NOTIFIED)):
        return None
    return dataclasses.replace(job, body=build(message(obj, job.state, place), fmt))


# --------------------------------------------------------------------------------- delivery


@dataclasses.dataclass(frozen=True)
class Retry:
    """Per-attempt timeout, backoff and its bound. The defaults wait 2, 4, 8, ... 64 s, then
    120 s apart, 13 attempts in all: about 14 minutes of waits (:meth:`budget`), up to 16 with
    each attempt's timeout, so an outage of a few minutes (a webhook's deploy, a proxy
    restart) loses nothing. A delivery given up is queued again when the same target later
    answers 2xx (:class:`Worker`)."""

    timeout: float = 10.0
    attempts: int = 13
    first_delay: float = 2.0
    max_delay: float = 120.0

    def delay(self, attempt: int) -> float:
        """Seconds before attempt ``attempt + 1`` (``attempt`` counts from 1)."""
        return float(min(self.first_delay * 2 ** (attempt - 1), self.max_delay))

    def budget(self) -> float:
        """Seconds waited between the first attempt and the last (timeouts not counted)."""
        return sum(self.delay(n) for n in range(1, self.attempts))


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """A target's URL and signing key, read when sending (never logged)."""

    url: str
    key: bytes | None = None


class Unresolved(Exception):
    """The target's URL cannot be had (Secret or file missing): ``reason`` says which, in words
    fit for a condition (never the URL)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclasses.dataclass(frozen=True)
class Job:
    """One state of one Remediation for one target."""

    namespace: str
    remediation: str
    state: RemediationState
    body: bytes
    delivery_id: str


@dataclasses.dataclass
class Health:
    """A target's last outcome: what the condition and the metric say."""

    ok: bool = True
    reason: str = ""
    message: str = ""


REASON_FAILED = "DeliveryFailed"
REASON_TIMEOUT = "DeliveryTimedOut"
REASON_REFUSED = "DeliveryRefused"
#: The URL's host is a literal link-local address (169.254.0.0/16, fe80::/10: where clouds
#: serve instance metadata and credentials): never contacted.
REASON_FORBIDDEN = "DestinationForbidden"
#: Delivered (a 2xx) but the record of it could not be written: not sent again by this
#: process, but sent again after a restart.
REASON_RECORD_FAILED = "RecordFailed"
#: Tries of a record write after a 2xx (waits ``Retry.first_delay``, doubling).
RECORD_TRIES = 3

Resolver = Callable[[], Awaitable[Endpoint]]
#: ``record(target name, job)`` after a 2xx.
Recorder = Callable[[str, Job], Awaitable[None]]
#: ``refresh(job)`` before each attempt: the job as the freshest copy of its Remediation warrants
#: it now (its body rebuilt), or None when that state is not to be sent any more.
Refresher = Callable[[Job], Awaitable["Job | None"]]
Listener = Callable[[str, Job, Health], None]


def link_local(url: str) -> bool:
    """Whether ``url``'s host is a literal link-local address (IPv4 169.254.0.0/16, IPv6
    fe80::/10, or such an IPv4 mapped into IPv6). A name is not resolved here: an egress
    NetworkPolicy is what bounds where the operator's pod may connect
    (docs/notifications.md)."""
    try:
        host = urllib.parse.urlsplit(url.strip()).hostname
        address = ipaddress.ip_address((host or "").split("%")[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_link_local or (mapped is not None and mapped.is_link_local)


async def attempt(session: aiohttp.ClientSession, endpoint: Endpoint, job: Job,
                  within: float, now: Callable[[], float] = time.time) -> Health:
    """One POST within ``within`` seconds: ok on a 2xx, else why not (the URL is never said).
    A literal link-local host is refused without a connection (:func:`link_local`)."""
    if link_local(endpoint.url):
        return Health(False, REASON_FORBIDDEN, "the URL's host is a link-local address "
                      "(169.254.0.0/16 or fe80::/10: cloud metadata): refused, not sent")
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT,
               DELIVERY_HEADER: job.delivery_id,
               **signature_headers(endpoint.key, job.body, now())}
    try:
        async with asyncio.timeout(within):
            async with session.post(endpoint.url, data=job.body, headers=headers,
                                    allow_redirects=False) as resp:
                await resp.read()
                if 200 <= resp.status < 300:
                    return Health()
                return Health(False, REASON_REFUSED, f"the webhook answered HTTP {resp.status}")
    except TimeoutError:
        return Health(False, REASON_TIMEOUT, f"no answer within {within:g}s")
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        return Health(False, REASON_FAILED, f"{type(exc).__name__}: could not send "
                      "(connection refused, name not found, or the URL is not http(s))")


class Worker:
    """One target's queue and task: jobs are sent in order, each retried with backoff up to
    :attr:`Retry.attempts`; then given up (said by ``listener``) until the same target answers
    2xx again, when the given-up jobs are queued again. Before each attempt ``refresh`` (when
    given) re-judges the job against the freshest copy of its Remediation: a state no longer
    warranted is dropped, the body is rebuilt. Another target's worker is a separate task: it
    never waits here."""

    def __init__(self, name: str, resolve: Resolver, record: Recorder, listener: Listener,
                 retry: Retry | None = None, refresh: Refresher | None = None) -> None:
        self.name = name
        self.resolve = resolve
        self.record = record
        self.listener = listener
        self.retry = retry or Retry()
        self.refresh = refresh
        self.health = Health()
        self.queue: asyncio.Queue[Job] = asyncio.Queue()
        #: delivery ids queued or being sent, given up, or delivered by this process (never
        #: queued twice: a caller may judge from a copy of the object older than the record).
        self.pending: set[str] = set()
        #: delivery id -> the job given up (queued again after this target's next 2xx)
        self.given_up: dict[str, Job] = {}
        self.delivered: set[str] = set()
        self.task: asyncio.Task[None] | None = None

    def submit(self, job: Job) -> bool:
        """Queue ``job`` unless it is queued already or was given up; starts the task."""
        if job.delivery_id in self.pending or job.delivery_id in self.given_up \
                or job.delivery_id in self.delivered:
            return False
        self._queue(job)
        return True

    def _queue(self, job: Job) -> None:
        self.pending.add(job.delivery_id)
        self.queue.put_nowait(job)
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._run(), name=f"notify-{self.name}")

    def forget(self, prefix: str) -> None:
        """Drop what is kept of the delivery ids starting with ``prefix`` (a Remediation
        that is gone: ``<namespace>/<name>/``)."""
        self.delivered.difference_update({d for d in self.delivered if d.startswith(prefix)})
        for gone in [d for d in self.given_up if d.startswith(prefix)]:
            del self.given_up[gone]

    async def stop(self) -> None:
        """Cancel the task (queued jobs are sent again after a restart: not recorded)."""
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.retry.timeout)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                job = await self.queue.get()
                try:
                    await self._deliver(session, job)
                except Exception:  # a bug must not end the target's deliveries
                    log.exception("notification to %s failed", self.name)
                finally:
                    self.pending.discard(job.delivery_id)

    async def _deliver(self, session: aiohttp.ClientSession, job: Job) -> None:
        health = Health()
        for number in range(1, self.retry.attempts + 1):
            if self.refresh is not None:
                fresh = await self.refresh(job)
                if fresh is None:
                    log.info("notification %s to %s: no longer due; dropped", job.delivery_id,
                             self.name)
                    return
                job = fresh
            try:
                endpoint = await self.resolve()
            except Unresolved as exc:
                health = Health(False, exc.reason, exc.message)
            else:
                health = await attempt(session, endpoint, job, self.retry.timeout)
            if health.ok:
                # remembered first: a record that cannot be written never makes this process
                # send the same state again
                self.delivered.add(job.delivery_id)
                failure = await self._recorded(job)
                if failure is None:
                    self.health = health
                    self.listener("delivered", job, health)
                else:
                    self.health = Health(False, REASON_RECORD_FAILED, failure)
                    self.listener("record_failed", job, self.health)
                    log.warning("notification %s to %s: %s", job.delivery_id, self.name,
                                failure)
                self._again()
                return
            self.health = health
            if number < self.retry.attempts:
                self.listener("retried", job, health)
                log.info("notification %s to %s: %s; retrying", job.delivery_id, self.name,
                         health.message)
                await asyncio.sleep(self.retry.delay(number))
        self.given_up[job.delivery_id] = job
        self.health = Health(False, health.reason, f"gave up on {job.delivery_id} after "
                             f"{self.retry.attempts} attempts: {health.message}")
        self.listener("failed", job, self.health)
        log.warning("notification %s to %s: %s", job.delivery_id, self.name,
                    self.health.message)

    async def _recorded(self, job: Job) -> str | None:
        """Write the record, up to :data:`RECORD_TRIES` times; None when written, else what
        went wrong (the error's type and words: a record writer's errors hold no URL)."""
        for number in range(1, RECORD_TRIES + 1):
            try:
                await self.record(self.name, job)
                return None
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # an API 403/outage, ENOSPC: any, said below
                words = f"{type(exc).__name__}: {_cut(exc, 300)}"
                if number < RECORD_TRIES:
                    await asyncio.sleep(self.retry.delay(number))
        return (f"delivered {job.delivery_id} but could not record it after {RECORD_TRIES} "
                f"tries ({words}); sent again only after a restart")

    def _again(self) -> None:
        """The target answers again: queue what was given up (each re-judged by ``refresh``
        before its attempt)."""
        jobs, self.given_up = list(self.given_up.values()), {}
        for job in jobs:
            if job.delivery_id not in self.pending and job.delivery_id not in self.delivered:
                self._queue(job)
