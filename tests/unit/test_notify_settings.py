"""The operator's notification bounds are operator settings (``STARTUPMONKEY_NOTIFICATIONS_*``,
the chart's ``notifications.*``): by default the notifier's own retry; durations and a count
parsed from the environment; a bad value refused naming its variable."""

from __future__ import annotations

import pytest

from startupmonkey import notify
from startupmonkey.operator import config


def test_the_defaults_are_the_notifiers_own() -> None:
    assert config.from_env({}).notifications.retry() == notify.Retry()


def test_durations_and_a_count_from_the_environment() -> None:
    settings = config.from_env({"STARTUPMONKEY_NOTIFICATIONS_TIMEOUT": "3s",
                                "STARTUPMONKEY_NOTIFICATIONS_ATTEMPTS": "5",
                                "STARTUPMONKEY_NOTIFICATIONS_FIRST_DELAY": "200ms"})
    assert settings.notifications.retry() == notify.Retry(timeout=3.0, attempts=5,
                                                          first_delay=0.2)


@pytest.mark.parametrize(("name", "value"), [
    ("STARTUPMONKEY_NOTIFICATIONS_TIMEOUT", "3"),  # no unit
    ("STARTUPMONKEY_NOTIFICATIONS_TIMEOUT", "0s"),
    ("STARTUPMONKEY_NOTIFICATIONS_FIRST_DELAY", "2h"),
    ("STARTUPMONKEY_NOTIFICATIONS_ATTEMPTS", "0"),
    ("STARTUPMONKEY_NOTIFICATIONS_ATTEMPTS", "many"),
])
def test_a_bad_value_is_refused_naming_its_variable(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=name):
        config.from_env({name: value})
