"""The signing key's bytes (docs/notifications.md): as stored, less one trailing newline, the
same in the operator and under run; an empty key is an unresolved Secret (SecretKeyNotFound,
"is empty"), never a request sent unsigned."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from startupmonkey import notify
from startupmonkey.models import monitor as models
from startupmonkey.operator import notify as operator_notify


def test_the_key_is_its_bytes_less_one_trailing_newline() -> None:
    assert notify.signing_key(b"k3y\n") == b"k3y"
    assert notify.signing_key(b"k3y\n\n") == b"k3y\n"
    assert notify.signing_key(b" k3y ") == b" k3y "  # white space is part of the key
    assert notify.signing_key(b"\n") == b""


class SecretApi:
    def __init__(self, data: dict[str, bytes]) -> None:
        self.secret = {"data": {k: base64.b64encode(v).decode() for k, v in data.items()}}

    async def get(self, kind: Any, namespace: str, name: str) -> dict[str, Any]:
        return self.secret


def _notifier(data: dict[str, bytes]) -> tuple[operator_notify.Notifier, Any]:
    notifier = operator_notify.Notifier(SecretApi(data))  # type: ignore[arg-type]
    key = ("ns", "m", "ops")
    notifier.targets[key] = models.NotificationTarget.model_validate(
        {"name": "ops", "secretRef": {"name": "hook", "hmacKey": "hmac"}})
    return notifier, key


@pytest.mark.parametrize("stored", [b"", b"\n"])
async def test_the_operator_refuses_an_empty_key(stored: bytes) -> None:
    notifier, key = _notifier({"url": b"http://127.0.0.1:9/x?token=s3cr3t", "hmac": stored})
    with pytest.raises(notify.Unresolved) as caught:
        await notifier._resolve(key)
    assert caught.value.reason == "SecretKeyNotFound"
    assert "is empty" in caught.value.message and "s3cr3t" not in caught.value.message


async def test_the_operator_uses_the_same_bytes_as_run() -> None:
    notifier, key = _notifier({"url": b"http://127.0.0.1:9/\n", "hmac": b" k3y \n"})
    endpoint = await notifier._resolve(key)
    assert endpoint.key == b" k3y " == notify.signing_key(b" k3y \n")
