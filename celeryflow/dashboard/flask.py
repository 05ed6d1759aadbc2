"""The dashboard in a Flask app: ``app.register_blueprint(blueprint(flow))``."""

from __future__ import annotations

from flask import Blueprint, Response, request

from ..flow import Flow
from ..store import Store
from .core import MAX_BODY, Dashboard
from .security import Auth
from .web import Request

__all__ = ["blueprint"]


def blueprint(
    flow: Flow | None = None,
    *,
    store: Store | None = None,
    url_prefix: str = "/flows",
    token: str | None = None,
    username: str | None = None,
    password: str | None = None,
    name: str = "celeryflow_dashboard",
) -> Blueprint:
    """A blueprint serving the dashboard under ``url_prefix`` (auth as in
    :func:`celeryflow.dashboard.asgi.dashboard_app`)."""
    auth = Auth.from_env(token=token, username=username, password=password)
    dashboard = Dashboard(flow, store=store, auth=auth)
    prefix = "/" + url_prefix.strip("/")
    bp = Blueprint(name, __name__, url_prefix=prefix)

    @bp.route("/", defaults={"sub": ""}, methods=["GET", "POST"])
    @bp.route("/<path:sub>", methods=["GET", "POST"])
    def view(sub: str) -> Response:
        form: dict[str, str] = {}
        if request.method == "POST":
            if (request.content_length or 0) > MAX_BODY:
                return Response("body too large", 413)
            form = {k: v for k, v in request.form.items()}
        answer = dashboard.handle(
            Request(
                method=request.method,
                path="/" + sub,
                root=request.script_root + prefix,
                query={k: v for k, v in request.args.items()},
                form=form,
                headers={k.lower(): v for k, v in request.headers.items()},
                cookies=dict(request.cookies),
            )
        )
        response = Response(answer.body, answer.status, content_type=answer.content_type)
        for header, value in answer.headers:
            response.headers.add(header, value)
        return response

    return bp
