"""The dashboard without a web framework: a :class:`Request` in, a :class:`Response`
out. The ASGI app (Starlette), the Flask blueprint and the Django view only translate
their request into this one, so every rule (auth, CSRF, escaping, headers) lives here
once, whichever way the dashboard is served.

Handlers are plain blocking functions (the store is synchronous SQLAlchemy); the
ASGI adapter calls :meth:`Dashboard.handle` in a worker thread.
"""

from __future__ import annotations

import logging
import mimetypes
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import jinja2

from ..errors import CeleryflowError, RunNotFound
from ..flow import Flow
from ..store import Store
from .pages import ROUTES
from .security import (
    AUTH_COOKIE,
    CSRF_COOKIE,
    CSRF_FIELD,
    SECURITY_HEADERS,
    Auth,
    cross_site,
    csrf_matches,
    new_csrf_token,
)
from .web import Request, Response, Route, duration_text, pretty_json, when

__all__ = ["MAX_BODY", "Dashboard"]

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
STATIC = {p.name: p for p in (HERE / "static").iterdir() if p.is_file()}
MAX_BODY = 256 * 1024  # a test event's data is typed by hand; more is a mistake


class Dashboard:
    """The dashboard of one store: pages to read it, buttons that call the same
    library functions as the CLI (``Flow.cancel``, ``Flow.replay``, ``Flow.send``,
    ``Store.pause_function``...).

    ``flow`` gives the registered functions (their triggers, cron slots and flow
    control) and what needs the broker (sending events, replaying); with only a
    ``store``, those parts say they need ``-A``. ``auth`` defaults to the
    environment's (:meth:`Auth.from_env`)."""

    def __init__(
        self,
        flow: Flow | None = None,
        *,
        store: Store | None = None,
        auth: Auth | None = None,
        poll_seconds: float = 2.0,
        page_size: int = 50,
        title: str = "celeryflow",
    ) -> None:
        if flow is None and store is None:
            raise CeleryflowError("Dashboard needs a Flow or a Store")
        self.flow = flow
        self.store: Store = store if store is not None else flow.store  # type: ignore[union-attr]
        self.auth = auth if auth is not None else Auth.from_env()
        self.poll_ms = max(250, int(poll_seconds * 1000))
        self.page_size = page_size
        self.title = title
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,  # every template, whatever its name
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.filters["pretty_json"] = pretty_json
        self.templates.filters["when"] = when
        self.templates.filters["duration"] = duration_text
        self.routes: list[Route] = ROUTES

    # -- entry point --------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        """Answer one request: auth, CSRF, then the page or action."""
        path = request.path or "/"
        if path.startswith("/static/"):
            return self._static(path.removeprefix("/static/"))
        new_cookie = False
        request.csrf = request.cookies.get(CSRF_COOKIE, "")
        if not request.csrf:
            request.csrf, new_cookie = new_csrf_token(), True
        if path == "/login":
            response = self._login(request)
        elif not self.auth.allows(request.headers, request.cookies):
            response = self._unauthorized(request)
        else:
            response = self._dispatch(request, path)
        if new_cookie:
            response.headers.append(
                ("Set-Cookie", self._cookie(request, CSRF_COOKIE, request.csrf))
            )
        response.headers.extend(SECURITY_HEADERS)
        return response

    def _dispatch(self, request: Request, path: str) -> Response:
        allowed = []
        for route in self.routes:
            match = route.pattern.fullmatch(path)
            if match is None:
                continue
            if route.method != request.method:
                allowed.append(route.method)
                continue
            if request.method == "POST":
                refused = self._refuse_forgery(request)
                if refused is not None:
                    return refused
            try:
                return route.handler(self, request, match)
            except RunNotFound as exc:
                return self.page(request, "error.html", {"message": str(exc)}, status=404)
            except CeleryflowError as exc:
                return self.page(request, "error.html", {"message": str(exc)}, status=400)
        if allowed:
            return Response(
                405, b"method not allowed", "text/plain", [("Allow", ", ".join(allowed))]
            )
        return self.page(request, "error.html", {"message": f"no page {path}"}, status=404)

    def _refuse_forgery(self, request: Request) -> Response | None:
        reason = cross_site(request.headers)
        if reason is None and not csrf_matches(
            request.cookies.get(CSRF_COOKIE), request.form.get(CSRF_FIELD)
        ):
            reason = "the form's CSRF token is missing or wrong (reload the page and try again)"
        if reason is None:
            return None
        log.warning("dashboard refused a POST to %s: %s", request.path, reason)
        return self.page(request, "error.html", {"message": f"refused: {reason}"}, status=403)

    # -- auth ---------------------------------------------------------------------------

    def _unauthorized(self, request: Request) -> Response:
        if self.auth.basic and self.auth.token is None:
            return Response(
                401,
                b"authentication required",
                "text/plain",
                [("WWW-Authenticate", 'Basic realm="celeryflow", charset="UTF-8"')],
            )
        if request.method == "GET" and not request.query.get("partial"):
            return self.redirect(request, "/login", next=request.path)
        return Response(401, b"authentication required", "text/plain")

    def _login(self, request: Request) -> Response:
        target = request.form.get("next") or request.query.get("next") or "/runs"
        if not target.startswith("/") or target.startswith("//"):
            target = "/runs"  # never an open redirect
        if self.auth.token is None:
            return self.redirect(request, target)
        error = ""
        if request.method == "POST":
            reason = cross_site(request.headers)
            ok_form = csrf_matches(request.cookies.get(CSRF_COOKIE), request.form.get(CSRF_FIELD))
            if (
                reason is None
                and ok_form
                and self.auth.token_matches(request.form.get("token", ""))
            ):
                response = self.redirect(request, target)
                value = self.auth.cookie_value()
                response.headers.append(("Set-Cookie", self._cookie(request, AUTH_COOKIE, value)))
                return response
            error = "wrong token" if reason is None and ok_form else "refused: reload and retry"
        status = 401 if error else 200
        return self.page(request, "login.html", {"error": error, "next": target}, status=status)

    def _cookie(self, request: Request, name: str, value: str) -> str:
        secure = "; Secure" if request.headers.get("x-forwarded-proto") == "https" else ""
        return f"{name}={value}; Path={request.root or '/'}; HttpOnly; SameSite=Strict{secure}"

    # -- responses ----------------------------------------------------------------------

    def url(self, request: Request, path: str, **query: Any) -> str:
        """A link inside the dashboard, under its mount prefix; empty values dropped."""
        pairs = [(k, str(v)) for k, v in query.items() if v not in (None, "")]
        return request.root + path + (f"?{urlencode(pairs)}" if pairs else "")

    def page(
        self,
        request: Request,
        template: str,
        context: dict[str, Any],
        *,
        status: int = 200,
        headers: list[tuple[str, str]] | None = None,
    ) -> Response:
        def url(path: str, **query: Any) -> str:
            return self.url(request, path, **query)

        html = self.templates.get_template(template).render(
            {
                **context,
                "url": url,
                "quote": lambda text: quote(str(text), safe=""),
                "csrf_field": CSRF_FIELD,
                "csrf": request.csrf,
                "title": self.title,
                "path": request.path,
                "poll_ms": self.poll_ms,
                "has_flow": self.flow is not None,
                "auth_on": self.auth.enabled,
            }
        )
        return Response(status, html.encode(), headers=list(headers or []))

    def redirect(self, request: Request, path: str, **query: Any) -> Response:
        return Response(303, b"", "text/plain", [("Location", self.url(request, path, **query))])

    def _static(self, name: str) -> Response:
        source = STATIC.get(name)  # only the files shipped: no path is ever joined
        if source is None:
            return Response(404, b"not found", "text/plain")
        kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if kind.startswith("text/") or kind.endswith("javascript"):
            kind += "; charset=utf-8"
        return Response(
            200,
            source.read_bytes(),
            kind,
            [("Cache-Control", "public, max-age=3600"), ("X-Content-Type-Options", "nosniff")],
        )
