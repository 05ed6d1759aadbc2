"""The dashboard's safety rules: who may look (token or basic auth), where it may
listen (loopback only without auth), and which POSTs count (CSRF).

* **Bind.** :func:`check_bind` refuses any address but loopback (``127.0.0.1``,
  ``::1``, ``localhost``) unless authentication is configured: a dashboard can cancel
  runs and send events, so an open one on ``0.0.0.0`` is an incident waiting.
* **Auth.** ``Authorization: Bearer <token>``, or the token typed once into the login
  page (an HttpOnly cookie then holds an HMAC of it, never the token), or HTTP basic
  auth. From the arguments or ``CELERYFLOW_DASHBOARD_TOKEN`` /
  ``CELERYFLOW_DASHBOARD_USER`` + ``CELERYFLOW_DASHBOARD_PASSWORD``.
* **CSRF.** Each browser gets a random ``cf_csrf`` cookie (HttpOnly, SameSite=Strict);
  every form carries the same value, and a POST whose field does not equal the cookie,
  or that a browser marks cross-site (``Sec-Fetch-Site``, ``Origin``), is refused.
* **Content.** Every response forbids inline script and style
  (``Content-Security-Policy``) and framing; templates autoescape everything.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..errors import ConfigError

__all__ = [
    "AUTH_COOKIE",
    "CSRF_COOKIE",
    "CSRF_FIELD",
    "ENV_PASSWORD",
    "ENV_TOKEN",
    "ENV_USER",
    "SECURITY_HEADERS",
    "Auth",
    "check_bind",
    "cross_site",
    "csrf_matches",
    "is_loopback",
    "new_csrf_token",
]

ENV_TOKEN = "CELERYFLOW_DASHBOARD_TOKEN"
ENV_USER = "CELERYFLOW_DASHBOARD_USER"
ENV_PASSWORD = "CELERYFLOW_DASHBOARD_PASSWORD"
AUTH_COOKIE = "cf_auth"
CSRF_COOKIE = "cf_csrf"
CSRF_FIELD = "csrf_token"

SECURITY_HEADERS = (
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "same-origin"),
    ("Cache-Control", "no-store"),
)


@dataclass(frozen=True)
class Auth:
    """Who may use the dashboard. Nothing set: anyone who can reach it (loopback only,
    or behind the host application's own login when mounted)."""

    token: str | None = field(default=None, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    # signs the login cookie; a new one per process logs everyone out on restart
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)

    def __post_init__(self) -> None:
        if self.token is not None and not self.token.strip():
            raise ConfigError("dashboard token is empty: set a non-empty token or none")
        if (self.username is None) != (self.password is None):
            raise ConfigError("dashboard basic auth needs both a user name and a password")
        if self.password is not None and not self.password:
            raise ConfigError("dashboard basic auth password is empty")

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        token: str | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> Auth:
        """The arguments, else ``CELERYFLOW_DASHBOARD_TOKEN`` / ``_USER`` / ``_PASSWORD``."""
        env = os.environ if environ is None else environ
        return cls(
            token=token if token is not None else env.get(ENV_TOKEN) or None,
            username=username if username is not None else env.get(ENV_USER) or None,
            password=password if password is not None else env.get(ENV_PASSWORD) or None,
        )

    @property
    def enabled(self) -> bool:
        return self.token is not None or self.username is not None

    @property
    def basic(self) -> bool:
        return self.username is not None

    def cookie_value(self) -> str:
        """What the login cookie holds: an HMAC of the token, so the cookie is not the
        token and stops working when the token changes."""
        assert self.token is not None
        return hmac.new(self.secret, self.token.encode(), hashlib.sha256).hexdigest()

    def token_matches(self, given: str) -> bool:
        return self.token is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def allows(self, headers: Mapping[str, str], cookies: Mapping[str, str]) -> bool:
        """Whether this request is authenticated (always, when auth is off)."""
        if not self.enabled:
            return True
        header = headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if self.token is not None:
            if scheme.lower() == "bearer" and self.token_matches(value.strip()):
                return True
            cookie = cookies.get(AUTH_COOKIE, "")
            if cookie and hmac.compare_digest(cookie, self.cookie_value()):
                return True
        if self.username is not None and scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(value.strip()).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return False
            assert self.password is not None
            # both compared, always, so the time taken does not tell which was wrong
            ok_user = hmac.compare_digest(user.encode(), self.username.encode())
            ok_password = hmac.compare_digest(password.encode(), self.password.encode())
            return ok_user and ok_password
        return False


def is_loopback(host: str) -> bool:
    """Whether ``host`` only listens on this machine."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def check_bind(host: str, auth: Auth) -> None:
    """Refuse to serve on a non-loopback address without authentication."""
    if is_loopback(host) or auth.enabled:
        return
    raise ConfigError(
        f"refusing to serve the dashboard on {host!r} without authentication: anyone who "
        f"can reach it could cancel runs and send events. Set {ENV_TOKEN} (or "
        f"{ENV_USER} and {ENV_PASSWORD}), or bind 127.0.0.1 and use an SSH tunnel"
    )


def cross_site(headers: Mapping[str, str]) -> str | None:
    """Why a state-changing request looks cross-site, or None. Browsers send
    ``Sec-Fetch-Site`` and ``Origin`` on POSTs; a missing one (an old browser, curl)
    leaves the decision to the CSRF token."""
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site and fetch_site not in ("same-origin", "none"):
        return f"Sec-Fetch-Site is {fetch_site!r}"
    origin = headers.get("origin")
    host = headers.get("host")
    if origin and origin != "null" and host and urlsplit(origin).netloc != host:
        return f"Origin {origin!r} is not this host ({host!r})"
    if origin == "null":
        return "Origin is null"
    return None


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def csrf_matches(cookie: str | None, given: str | None) -> bool:
    return bool(cookie and given) and hmac.compare_digest(str(cookie), str(given))
