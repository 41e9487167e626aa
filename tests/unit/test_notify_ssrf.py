"""A webhook URL whose host is a literal link-local address (cloud instance metadata) is
refused before any connection; other addresses and names are left to the egress policy."""

from __future__ import annotations

from typing import Any

import pytest

from startupmonkey import notify
from startupmonkey.models.enums import RemediationState


@pytest.mark.parametrize(("url", "refused"), [
    ("http://169.254.169.254/latest/meta-data/", True),
    ("https://169.254.0.1:8443/hook", True),
    ("http://[fe80::1]/hook", True),
    ("http://[fe80::1%25eth0]/hook", True),
    ("http://[febf::1]/hook", True),
    ("http://[::ffff:169.254.169.254]/hook", True),
    (" http://169.254.169.254/x\n", True),
    ("http://127.0.0.1:8080/hook", False),
    ("http://10.0.0.1/hook", False),
    ("http://[fec0::1]/hook", False),
    ("https://hooks.slack.com/services/x", False),
    ("http://169.254.169.254.nip.io/x", False),  # a name: the egress policy's to bound
    ("not a url", False),
])
def test_a_literal_link_local_host_is_refused(url: str, refused: bool) -> None:
    assert notify.link_local(url) is refused


class NoSession:
    """A session that must not be used: a refused URL is never connected to."""

    def post(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("connected to a link-local address")


async def test_attempt_refuses_without_connecting_and_without_the_url() -> None:
    job = notify.Job("ns", "r", RemediationState.FAILED, b"{}", "ns/r/Failed")
    endpoint = notify.Endpoint("http://169.254.169.254/latest?token=s3cr3t")
    health = await notify.attempt(NoSession(), endpoint, job, 1.0)  # type: ignore[arg-type]
    assert not health.ok and health.reason == notify.REASON_FORBIDDEN
    assert "s3cr3t" not in health.message and "169.254.169.254" not in health.message
