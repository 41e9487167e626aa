"""Kubernetes-style duration strings (``"500ms"``, ``"10s"``, ``"5m"``, ``"1h30m"``, ``"36h"``).

Every window in the user-facing config is one of these, so tests shorten windows through the
same config a user writes (docs/design.md#frozen-names). The grammar is the subset of Go's
``time.ParseDuration`` that CEL's ``duration()`` also accepts, so the CRD can compare them.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
#: Also used verbatim as the CRD ``pattern``.
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
_WHOLE = re.compile(DURATION_PATTERN)


def parse_duration(text: str) -> float:
    """Seconds in a duration string; raises ValueError with the accepted forms."""
    if not isinstance(text, str) or not _WHOLE.match(text):
        raise ValueError(
            f"invalid duration {text!r}: use a number with a unit ms, s, m or h, "
            "e.g. '500ms', '10s', '5m', '1h30m'"
        )
    return sum(float(n) * _UNITS[u] for n, u in _PART.findall(text))


def format_duration(seconds: float) -> str:
    """The shortest duration string for a number of seconds (inverse of parse_duration)."""
    if seconds < 1 and seconds != 0:
        return f"{round(seconds * 1000)}ms"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{v}{u}" for v, u in ((hours, "h"), (minutes, "m"), (secs, "s")) if v]
    return "".join(parts) or "0s"


def _check(text: str) -> str:
    parse_duration(text)
    return text


#: A pydantic field type: stored as the user's string, validated on input.
Duration = Annotated[
    str,
    Field(pattern=DURATION_PATTERN, max_length=32),
    AfterValidator(_check),
]

_QUANTITY_UNITS = {
    "": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
}
QUANTITY_PATTERN = r"^[0-9]+(Ki|Mi|Gi|Ti|k|M|G|T)?$"
_QUANTITY = re.compile(r"^([0-9]+)(Ki|Mi|Gi|Ti|k|M|G|T)?$")


def parse_quantity(text: str) -> int:
    """Bytes in a Kubernetes-style quantity (``"512Mi"``, ``"10Gi"``, ``"1000"``)."""
    match = _QUANTITY.match(text) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"invalid size {text!r}: use e.g. '512Mi', '10Gi' or a byte count")
    return int(match.group(1)) * _QUANTITY_UNITS[match.group(2) or ""]


def _check_quantity(text: str) -> str:
    parse_quantity(text)
    return text


#: A byte size as a Kubernetes quantity string.
Quantity = Annotated[
    str,
    Field(pattern=QUANTITY_PATTERN, max_length=32),
    AfterValidator(_check_quantity),
]
