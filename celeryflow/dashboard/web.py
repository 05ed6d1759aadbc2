"""The framework-free shapes every adapter speaks: a :class:`Request` in, a
:class:`Response` out, and the template filters that format values for a page."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .core import Dashboard

__all__ = ["Handler", "Request", "Response", "Route", "duration_text", "pretty_json", "when"]


@dataclass
class Request:
    """One HTTP request, as every adapter gives it. ``path`` is inside the dashboard
    (``/runs``), ``root`` the prefix it is mounted under (``""`` or ``/ops/flows``);
    ``headers`` keys are lower case; ``query``/``form`` keep the first value of each."""

    method: str
    path: str
    root: str = ""
    query: Mapping[str, str] = field(default_factory=dict)
    form: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    cookies: Mapping[str, str] = field(default_factory=dict)
    # set by the dashboard: the browser's CSRF token (new when it had none)
    csrf: str = ""


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/html; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)


Handler = Callable[["Dashboard", Request, "re.Match[str]"], Response]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler


def pretty_json(value: Any) -> str:
    # Shown inside <pre>, autoescaped like any other text: never marked safe.
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def when(value: datetime | None) -> str:
    if value is None:
        return ""
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def duration_text(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
