"""Durations as the resource spells them: "500ms", "30s", "10m", "24h", "7d", or sums like "1h30m"."""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS: dict[str, timedelta] = {
    "ms": timedelta(milliseconds=1),
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
}
# Same grammar as the CRD's rule: one or more <integer><unit> parts, no spaces, no sign.
_WHOLE = re.compile(r"(?:[0-9]+(?:ms|s|m|h|d))+")
_PART = re.compile(r"([0-9]+)(ms|s|m|h|d)")


def parse_duration(text: str) -> timedelta:
    """Parse a duration string; raise ValueError with the offending text when it does not match."""
    if not isinstance(text, str) or not _WHOLE.fullmatch(text):
        raise ValueError(f"{text!r} is not a duration like 30s, 10m, 24h or 7d")
    try:
        return sum((int(amount) * _UNITS[unit] for amount, unit in _PART.findall(text)), timedelta())
    except OverflowError:
        raise ValueError(f"{text!r} is longer than any duration can be") from None


def format_duration(duration: timedelta) -> str:
    """The shortest string parse_duration reads back to the same value, e.g. 90 minutes -> "1h30m"."""
    remaining_ms = round(duration.total_seconds() * 1000)
    if remaining_ms < 0:
        raise ValueError(f"negative duration {duration}")
    if remaining_ms == 0:
        return "0s"
    parts: list[str] = []
    for unit in ("d", "h", "m", "s", "ms"):
        unit_ms = round(_UNITS[unit].total_seconds() * 1000)
        amount, remaining_ms = divmod(remaining_ms, unit_ms)
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts)
