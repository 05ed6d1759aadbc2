"""Event ingest over HTTP: other services ``POST`` events, the endpoint calls ``flow.send``.

Mount one endpoint per app (each framework is an optional extra; ``import celeryflow``
imports none of them)::

    # Django (urls.py)                    pip install 'celeryflow-engine[django]'
    from celeryflow.ingest.django import event_view
    urlpatterns = [path("events", event_view(flow, signing_key=os.environ["CF_KEY"]))]

    # Flask                               pip install 'celeryflow-engine[flask]'
    from celeryflow.ingest.flask import blueprint
    app.register_blueprint(blueprint(flow, url_prefix="/events", signing_key=key))

    # FastAPI                             pip install 'celeryflow-engine[fastapi]'
    from celeryflow.ingest.fastapi import router
    app.include_router(router(flow, path="/events", signing_key=key))

The body is one event, ``{"name": "user/signed_up", "data": {...}, "id": "...", "ts": ...}``
(only ``name`` is required), or a JSON list of them, sent as ``Content-Type:
application/json``. The answer is ``200 {"ids": [...]}``, one id per event in order; an id
already seen in the last 24 h starts nothing new, so a sender may retry safely with ids.
A refused request records nothing and gets ``{"error": "<reason>"}`` with:

* 400: the body is not UTF-8 JSON (an integer over 4,300 digits is not), not as long
  as its ``Content-Length`` says, not an object or a list of objects, or an event is
  invalid: the reason names it (``event #1 is invalid: name: Field required``). Events
  are checked by the same validation as ``flow.send`` (``celeryflow.events.prepare_events``):
  a name or id with a control character (NUL...), a ``ts`` outside a 64-bit integer,
  data that is not JSON or is nested deeper than ``MAX_DEPTH`` (64) levels;
* 401: a signing key is configured and the signature is missing, wrong, or its
  timestamp is more than ``tolerance`` (5 minutes) in the past or in the future;
* 405: not a ``POST``;
* 413: the body (``Content-Length``, checked before reading, then the bytes read) is over
  ``max_bytes`` (512 KiB), or it holds more than ``MAX_EVENTS`` (10,000) events;
* 415: the ``Content-Type`` is not JSON. A browser can only send a JSON content type
  cross-origin after a CORS preflight, so a web page cannot forge events to an endpoint
  reachable only from your network.

Signing (optional, recommended): with ``signing_key=`` set, every request needs::

    X-Celeryflow-Signature: t=<unix seconds>,s=<hex HMAC-SHA256 of f"{t}." + body>

The HMAC is over the exact body bytes sent. Several ``s=`` entries may be given, and
``signing_key`` may be a list of keys: a request passes if any entry matches any key, so
keys rotate without downtime. Within the 5 minutes a captured request can be replayed;
give events ids and the replay starts nothing. A sender signs with ``sign``::

    import json, urllib.request
    from celeryflow.ingest import SIGNATURE_HEADER, sign

    body = json.dumps({"name": "user/signed_up", "id": "user-42", "data": {"id": 42}}).encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", SIGNATURE_HEADER: sign(body, key)})
    ids = json.load(urllib.request.urlopen(request))["ids"]

Without celeryflow: ``t = str(int(time.time()))`` and ``s = hmac.new(key, t.encode() +
b"." + body, hashlib.sha256).hexdigest()``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from ..errors import EventError
from ..events import MAX_DEPTH, MAX_EVENTS
from ..flow import Flow

__all__ = [
    "MAX_BYTES",
    "MAX_DEPTH",
    "MAX_EVENTS",
    "SIGNATURE_HEADER",
    "TOLERANCE",
    "IngestSettings",
    "Key",
    "Result",
    "handle",
    "sign",
]

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Celeryflow-Signature"
MAX_BYTES = 512 * 1024
TOLERANCE = 300.0

Key = str | bytes
Result = tuple[int, dict[str, Any]]


def _key_bytes(key: Key) -> bytes:
    return key.encode() if isinstance(key, str) else key


def _digest(key: bytes, timestamp: str, body: bytes) -> str:
    return hmac.new(key, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def sign(body: bytes, key: Key, timestamp: int | None = None) -> str:
    """The ``X-Celeryflow-Signature`` value for ``body``, at ``timestamp`` (default now)."""
    t = str(int(time.time()) if timestamp is None else timestamp)
    return f"t={t},s={_digest(_key_bytes(key), t, body)}"


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    # A plain dict from a caller is case-sensitive; the frameworks' mappings are not.
    lowered = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lowered), None)


def _is_digits(text: str) -> bool:
    # str.isdigit() also takes "²", which int() then refuses.
    return text.isascii() and text.isdigit()


def _error(status: int, reason: str) -> Result:
    log.info("refused event ingest (%d): %s", status, reason)
    return status, {"error": reason}


@dataclass(frozen=True)
class IngestSettings:
    """An endpoint's settings, checked once when the endpoint is built."""

    signing_key: Key | Sequence[Key] | None = field(default=None, repr=False)
    max_bytes: int = MAX_BYTES
    tolerance: float = TOLERANCE
    keys: tuple[bytes, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        raw = self.signing_key
        given = [] if raw is None else [raw] if isinstance(raw, str | bytes) else list(raw)
        keys = tuple(_key_bytes(k) for k in given)
        # An unset environment variable would otherwise leave the endpoint open silently.
        if raw is not None and (not keys or not all(keys)):
            raise ValueError("signing_key is empty: pass a non-empty key, or None to not sign")
        if self.max_bytes <= 0 or self.tolerance <= 0:
            raise ValueError("max_bytes and tolerance must be positive")
        object.__setattr__(self, "keys", keys)

    def check_length(self, headers: Mapping[str, str]) -> Result | None:
        """Refuse by ``Content-Length`` before any of the body is read."""
        value = _header(headers, "Content-Length")
        if value is None or not value.strip():
            return None
        if not _is_digits(value.strip()):
            return _error(400, f"invalid Content-Length {value!r}")
        if int(value) > self.max_bytes:
            return _error(413, f"body is {int(value)} bytes, over the limit of {self.max_bytes}")
        return None

    def verify(self, body: bytes, headers: Mapping[str, str], now: float | None = None) -> str:
        """Why the signature is refused, or "" when it passes (or no key is set)."""
        if not self.keys:
            return ""
        header = _header(headers, SIGNATURE_HEADER)
        if not header:
            return f"missing {SIGNATURE_HEADER} header"
        parts = [p.strip().partition("=") for p in header.split(",")]
        stamps = [v for k, _, v in parts if k == "t"]
        sigs = [v.lower() for k, _, v in parts if k == "s"]
        if len(stamps) != 1 or not _is_digits(stamps[0]) or len(stamps[0]) > 12 or not sigs:
            return f"malformed {SIGNATURE_HEADER} header: expected t=<unix seconds>,s=<hex>"
        age = (time.time() if now is None else now) - int(stamps[0])
        if age > self.tolerance:
            return f"signature timestamp is {age:.0f} s old (over {self.tolerance:.0f} s)"
        if -age > self.tolerance:
            return f"signature timestamp is {-age:.0f} s in the future (check the clocks)"
        expected = [_digest(k, stamps[0], body) for k in self.keys]
        if any(hmac.compare_digest(e, s) for e in expected for s in sigs):
            return ""
        return "signature does not match"

    def handle(
        self, flow: Flow, body: bytes, headers: Mapping[str, str], now: float | None = None
    ) -> Result:
        """Check, parse and send one request's events: ``(status, json body)``."""
        refused = self.check_length(headers)
        if refused:
            return refused
        if len(body) > self.max_bytes:
            return _error(413, f"body is over the limit of {self.max_bytes} bytes")
        declared = (_header(headers, "Content-Length") or "").strip()
        if declared and int(declared) != len(body):
            # a client that died mid-body, or a proxy that cut it: never take a part
            return _error(
                400, f"body is {len(body)} bytes, not the {declared} of its Content-Length"
            )
        reason = self.verify(body, headers, now)
        if reason:
            return _error(401, reason)
        media = (_header(headers, "Content-Type") or "").partition(";")[0].strip().lower()
        if media != "application/json" and not media.endswith("+json"):
            return _error(415, f"Content-Type must be application/json, not {media!r}")
        try:
            payload = json.loads(body.decode("utf-8"))
        except UnicodeDecodeError as exc:
            return _error(400, f"body is not UTF-8: {exc.reason} at byte {exc.start}")
        except json.JSONDecodeError as exc:
            return _error(400, f"malformed JSON: {exc}")
        except ValueError as exc:  # an integer literal over sys.get_int_max_str_digits()
            return _error(400, f"malformed JSON: {str(exc).partition(';')[0]}")
        except RecursionError:
            return _error(400, f"JSON nested too deeply (over {MAX_DEPTH} levels)")
        if isinstance(payload, list) and not payload:
            return _error(400, "the list of events is empty")
        if not isinstance(payload, dict | list):
            return _error(400, "body must be a JSON object (one event) or a list of events")
        if isinstance(payload, list) and len(payload) > MAX_EVENTS:
            return _error(413, f"{len(payload):,} events, over the limit of {MAX_EVENTS:,}")
        try:
            ids = flow.send(payload)
        except (EventError, ValidationError) as exc:
            return _error(400, str(exc))
        return 200, {"ids": ids}


def handle(
    flow: Flow,
    body: bytes,
    headers: Mapping[str, str],
    *,
    signing_key: Key | Sequence[Key] | None = None,
    max_bytes: int = MAX_BYTES,
    tolerance: float = TOLERANCE,
    now: float | None = None,
) -> Result:
    """One request, framework-free: ``(status, json body)``. ``headers`` needs
    ``Content-Type`` (and the signature when ``signing_key`` is set); ``now`` is unix
    seconds, for tests."""
    settings = IngestSettings(signing_key, max_bytes, tolerance)
    return settings.handle(flow, body, headers, now)
