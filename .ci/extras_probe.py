"""Run inside a clean venv holding only ``celeryflow-engine[EXTRA]``: use what the extra
is for, without any service. Exits non-zero (with the traceback) if anything is missing.

    python extras_probe.py EXTRA      # run from a directory outside the repository
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from celery import Celery

import celeryflow
from celeryflow import Event, Flow, event

__all__ = ["PROBES", "main"]


def embedded_flow(tmp: Path) -> Flow:
    """The core on the embedded default: a store, the SQLite broker, one function."""
    flow = Flow(Celery("probe"), store=f"sqlite:///{tmp / 'store.db'}")

    @flow.function(id="probe", trigger=event("probe/sent"))
    def probe(ctx: Any) -> None:
        return None

    return flow


def check_sent(flow: Flow, event_id: str) -> None:
    runs = flow.list_runs(event_id=event_id)
    assert [r.function_id for r in runs] == ["probe"], runs


def probe_redis(tmp: Path) -> None:
    # kombu's Redis transport imports `packaging` and `redis` at import time: a worker
    # without them dies at start.
    import kombu.transport.redis  # noqa: F401

    app = Celery("probe", broker="redis://127.0.0.1:1/0")
    transport = app.connection().transport  # the transport class, no connection made
    assert type(transport).__module__ == "kombu.transport.redis", type(transport)
    Flow(app, store=f"sqlite:///{tmp / 'store.db'}")


def probe_dialect(url: str, module: str) -> None:
    engine = sa.create_engine(url)  # loads the DBAPI module; connects to nothing
    assert engine.dialect.dbapi is not None and engine.dialect.dbapi.__name__ == module


def probe_postgres(tmp: Path) -> None:
    import psycopg  # noqa: F401

    probe_dialect("postgresql+psycopg://u@127.0.0.1:1/x", "psycopg")


def probe_mysql(tmp: Path) -> None:
    import pymysql  # noqa: F401

    probe_dialect("mysql+pymysql://u@127.0.0.1:1/x", "pymysql")


def probe_django(tmp: Path) -> None:
    from django.conf import settings

    settings.configure(ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__, USE_TZ=True)
    import django

    django.setup()
    from django.test import RequestFactory

    from celeryflow.ingest.django import event_view

    flow = embedded_flow(tmp)
    view = event_view(flow)
    request = RequestFactory().post(
        "/events", data=json.dumps({"name": "probe/sent"}), content_type="application/json"
    )
    response = view(request)
    assert response.status_code == 200, response.content
    check_sent(flow, json.loads(response.content)["ids"][0])


def probe_flask(tmp: Path) -> None:
    from flask import Flask

    from celeryflow.ingest.flask import blueprint

    flow = embedded_flow(tmp)
    web = Flask("probe")
    web.register_blueprint(blueprint(flow, url_prefix="/events"))
    response = web.test_client().post("/events", json={"name": "probe/sent"})
    assert response.status_code == 200, response.data
    check_sent(flow, response.get_json()["ids"][0])


def probe_fastapi(tmp: Path) -> None:
    from fastapi import FastAPI

    from celeryflow.ingest.fastapi import router

    flow = embedded_flow(tmp)
    web = FastAPI()
    web.include_router(router(flow, path="/events"))
    web.openapi()  # the route's schema builds
    body = json.dumps({"name": "probe/sent"}).encode()
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/events",
        "raw_path": b"/events",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    asyncio.run(web(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    payload = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert start["status"] == 200, payload
    check_sent(flow, json.loads(payload)["ids"][0])


def asgi_get(app: Any, path: str) -> tuple[int, bytes]:
    """One GET through an ASGI app, without a server."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return int(start["status"]), body


def probe_dashboard(tmp: Path) -> None:
    # the ASGI app (starlette), its templates and static files from the wheel, uvicorn
    import uvicorn  # noqa: F401

    from celeryflow.dashboard.asgi import dashboard_app

    flow = embedded_flow(tmp)
    check_sent(flow, flow.send(Event(name="probe/sent"))[0])
    run_id = flow.list_runs()[0].id
    app = dashboard_app(flow)
    for path, wanted in (
        ("/runs", run_id),
        (f"/runs/{run_id}", "probe"),
        ("/functions", "probe"),
        ("/static/dashboard.js", "data-poll"),
    ):
        status, body = asgi_get(app, path)
        assert status == 200 and wanted.encode() in body, (path, body[:500])


def probe_prometheus(tmp: Path) -> None:
    from prometheus_client import generate_latest

    from celeryflow.metrics import PrometheusHook, registry

    flow = embedded_flow(tmp)
    flow.add_hook(PrometheusHook())
    check_sent(flow, flow.send(Event(name="probe/sent"))[0])
    text = generate_latest(registry(flow)).decode()
    assert 'celeryflow_runs{function="probe",status="queued"} 1.0' in text, text


def probe_otel(tmp: Path) -> None:
    from opentelemetry import trace

    from celeryflow.tracing import TracingHook

    flow = embedded_flow(tmp)
    flow.add_hook(TracingHook())
    # the API alone (no SDK): spans are no-ops, nothing fails
    with trace.get_tracer("probe").start_as_current_span("send"):
        check_sent(flow, flow.send(Event(name="probe/sent"))[0])


PROBES: dict[str, Callable[[Path], None]] = {
    "redis": probe_redis,
    "postgres": probe_postgres,
    "mysql": probe_mysql,
    "django": probe_django,
    "flask": probe_flask,
    "fastapi": probe_fastapi,
    "dashboard": probe_dashboard,
    "prometheus": probe_prometheus,
    "otel": probe_otel,
}


def main(extra: str) -> None:
    # The package under test is the installed wheel, not a source tree on sys.path.
    assert "site-packages" in celeryflow.__file__, celeryflow.__file__
    with tempfile.TemporaryDirectory(prefix="cf-extra-") as tmp:
        core = embedded_flow(Path(tmp))
        check_sent(core, core.send(Event(name="probe/sent"))[0])
        core.store.engine.dispose()
    with tempfile.TemporaryDirectory(prefix="cf-extra-") as tmp:
        PROBES[extra](Path(tmp))
    print(f"{extra}: ok ({celeryflow.__file__})")


if __name__ == "__main__":
    main(sys.argv[1])
