"""Durations in every form a user may write them: "3 days", "30s", "1h30m", 90, timedelta."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from .errors import ConfigError

__all__ = ["Duration", "parse_datetime", "parse_duration", "utcnow"]

Duration = str | int | float | timedelta

_UNITS = {
    "ms": 0.001,
    "msec": 0.001,
    "millisecond": 0.001,
    "milliseconds": 0.001,
    "s": 1,
    "sec": 1,
    "secs": 1,
    "second": 1,
    "seconds": 1,
    "m": 60,
    "min": 60,
    "mins": 60,
    "minute": 60,
    "minutes": 60,
    "h": 3600,
    "hr": 3600,
    "hrs": 3600,
    "hour": 3600,
    "hours": 3600,
    "d": 86400,
    "day": 86400,
    "days": 86400,
    "w": 604800,
    "week": 604800,
    "weeks": 604800,
}
_TOKEN = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]+)\s*,?")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def parse_duration(value: Duration, what: str = "duration") -> timedelta:
    """Turn ``value`` into a non-negative timedelta; a bad value names ``what``."""
    if isinstance(value, bool):
        raise ConfigError(f"{what}: expected a duration, got a bool")
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_text(value, what)
    else:
        raise ConfigError(
            f"{what}: expected a duration (e.g. '30s', '3 days', seconds or a timedelta), "
            f"got {type(value).__name__}"
        )
    if seconds < 0:
        raise ConfigError(f"{what}: a duration cannot be negative, got {value!r}")
    return timedelta(seconds=seconds)


def _parse_text(text: str, what: str) -> float:
    stripped = text.strip()
    try:
        return float(stripped)
    except ValueError:
        pass
    total = 0.0
    pos = 0
    for match in _TOKEN.finditer(stripped):
        if match.start() != pos:
            break
        unit = match.group(2).lower()
        if unit not in _UNITS:
            raise ConfigError(f"{what}: unknown unit {match.group(2)!r} in {text!r}")
        total += float(match.group(1)) * _UNITS[unit]
        pos = match.end()
    if pos != len(stripped) or not stripped:
        raise ConfigError(
            f"{what}: cannot read {text!r} as a duration (try '30s', '1h30m', '3 days')"
        )
    return total


def parse_datetime(value: datetime | str, what: str = "time") -> datetime:
    """An aware UTC datetime from a datetime (naive means UTC) or an ISO-8601 string."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as exc:
            raise ConfigError(f"{what}: {value!r} is not an ISO-8601 date-time") from exc
    if not isinstance(value, datetime):
        raise ConfigError(f"{what}: expected a datetime or ISO string, got {type(value).__name__}")
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)
