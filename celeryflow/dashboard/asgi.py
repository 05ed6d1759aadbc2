"""The dashboard as an ASGI app (Starlette): served by ``celeryflow dashboard``
(uvicorn), or mounted in a FastAPI or Starlette app::

    from celeryflow.dashboard.asgi import dashboard_app
    app.mount("/flows", dashboard_app(flow))        # token/basic auth: see Auth
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import uvicorn
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request as StarletteRequest
from starlette.responses import Response as StarletteResponse
from starlette.types import Receive, Scope, Send

from ..flow import Flow
from ..store import Store
from .core import MAX_BODY, Dashboard
from .security import Auth, check_bind
from .web import Request

__all__ = ["DashboardApp", "dashboard_app", "serve"]


class DashboardApp:
    """An ASGI callable around one :class:`Dashboard`."""

    def __init__(self, dashboard: Dashboard) -> None:
        self.dashboard = dashboard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # served alone by uvicorn: nothing to set up
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        incoming = StarletteRequest(scope, receive)
        form: dict[str, str] = {}
        if incoming.method == "POST":
            body = bytearray()
            async for chunk in incoming.stream():
                body += chunk
                if len(body) > MAX_BODY:
                    await StarletteResponse("body too large", 413)(scope, receive, send)
                    return
            media = incoming.headers.get("content-type", "").partition(";")[0].strip()
            if media == "application/x-www-form-urlencoded":
                form = _first(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        # Mounted under a prefix, Starlette keeps the full path and sets root_path.
        root = scope.get("root_path", "").rstrip("/")
        path = scope["path"]
        inner = path[len(root) :] if root and path.startswith(root) else path
        request = Request(
            method=incoming.method,
            path=inner or "/",
            root=root,
            query=_first(incoming.query_params.multi_items()),
            form=form,
            headers={k.lower(): v for k, v in incoming.headers.items()},
            cookies=dict(incoming.cookies),
        )
        answer = await run_in_threadpool(self.dashboard.handle, request)
        response = StarletteResponse(answer.body, answer.status, media_type=None)
        response.headers["content-type"] = answer.content_type
        for name, value in answer.headers:
            response.headers.append(name, value)
        await response(scope, receive, send)


def _first(pairs: Any) -> dict[str, str]:
    found: dict[str, str] = {}
    for key, value in pairs:
        found.setdefault(key, value)
    return found


def dashboard_app(
    flow: Flow | None = None,
    *,
    store: Store | None = None,
    token: str | None = None,
    username: str | None = None,
    password: str | None = None,
    poll_seconds: float = 2.0,
    page_size: int = 50,
) -> DashboardApp:
    """The dashboard of ``flow`` (or of a bare ``store``) as an ASGI app. Auth: the
    arguments, else ``CELERYFLOW_DASHBOARD_TOKEN`` / ``_USER`` + ``_PASSWORD``; none
    means anyone who reaches it (mounted: put it behind your app's own login)."""
    auth = Auth.from_env(token=token, username=username, password=password)
    return DashboardApp(
        Dashboard(flow, store=store, auth=auth, poll_seconds=poll_seconds, page_size=page_size)
    )


def serve(app: DashboardApp, host: str = "127.0.0.1", port: int = 8288) -> None:
    """Serve with uvicorn until interrupted; refuses a non-loopback ``host`` without
    authentication (``ConfigError``) before anything listens."""
    check_bind(host, app.dashboard.auth)
    uvicorn.run(app, host=host, port=port, log_level="info", proxy_headers=False)
