"""Event ingest over HTTP (celeryflow.ingest): Django, Flask and FastAPI through their own
test clients, one live uvicorn server over a socket, a real worker and store behind them."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import django
import fastapi
import flask
import pytest
import uvicorn
from celery import Celery
from django.conf import settings as django_settings
from fastapi.testclient import TestClient

from celeryflow import Flow, RunStatus, event
from celeryflow.ingest import SIGNATURE_HEADER, IngestSettings, handle, sign
from celeryflow.ingest.django import event_view
from celeryflow.ingest.fastapi import router
from celeryflow.ingest.flask import blueprint
from celeryflow.testing import wait_for, wait_for_run, worker

KEY = "s3cret-signing-key"
JSON = {"Content-Type": "application/json"}
FRAMEWORKS = ["django", "flask", "fastapi"]


def _flow(directory: Path) -> Flow:
    app = Celery("ingest-test", broker=f"celeryflow+sqlite:///{directory}/broker.db")
    app.conf.task_default_queue = f"ingest-{uuid.uuid4().hex}"
    app.conf.worker_hijack_root_logger = False
    flow = Flow(app, store=f"sqlite:///{directory}/store.db")

    @flow.function(id="greet", trigger=event("user/signed_up"))
    def greet(ctx):  # type: ignore[no-untyped-def]
        return f"hello {ctx.event.data['email']}"

    return flow


@pytest.fixture
def flow(tmp_path: Path) -> Flow:
    return _flow(tmp_path)


@pytest.fixture(scope="module")
def live_flow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flow]:
    """One flow with a real worker for every test that waits for runs (a worker takes
    seconds to stop, so it is started once)."""
    flow = _flow(tmp_path_factory.mktemp("ingest-live"))
    with worker(flow):
        yield flow


# --- One request through each framework's own test client -------------------------------

if not django_settings.configured:
    django_settings.configure(
        SECRET_KEY="ingest-tests",
        ALLOWED_HOSTS=["testserver"],
        INSTALLED_APPS=[],
        DATABASES={},
        # The real CSRF middleware: the view must be exempt from it.
        MIDDLEWARE=["django.middleware.csrf.CsrfViewMiddleware"],
        ROOT_URLCONF=__name__,
    )
    django.setup()
urlpatterns: list[Any] = []


class _Urls:
    """A URLconf object (Django takes any object with ``urlpatterns``): one per endpoint."""

    def __init__(self, patterns: list[Any]) -> None:
        self.urlpatterns = patterns


class Answer(SimpleNamespace):
    status: int
    body: Any  # the JSON answer, or None when the framework answered with no JSON
    headers: dict[str, str]


def _answer(status: int, content: bytes, headers: Iterable[tuple[str, str]]) -> Answer:
    try:
        body = json.loads(content)
    except ValueError:
        body = None
    return Answer(status=status, body=body, headers={k.lower(): v for k, v in headers})


def post(
    framework: str,
    flow: Flow,
    body: bytes,
    headers: dict[str, str] | None = None,
    *,
    method: str = "POST",
    **options: Any,
) -> Answer:
    """Send ``body`` to a freshly mounted endpoint (``options`` go to the adapter)."""
    headers = {**JSON, **(headers or {})}
    if framework == "django":
        from django.test import Client, override_settings
        from django.urls import path

        with override_settings(ROOT_URLCONF=_Urls([path("events", event_view(flow, **options))])):
            client = Client(enforce_csrf_checks=True)
            content_type = headers.pop("Content-Type")
            r = client.generic(method, "/events", body, content_type=content_type, headers=headers)
        return _answer(r.status_code, r.content, r.headers.items())
    if framework == "flask":
        app = flask.Flask(__name__)
        app.register_blueprint(blueprint(flow, url_prefix="/events", **options))
        fr = app.test_client().open("/events", method=method, data=body, headers=headers)
        return _answer(fr.status_code, fr.data, fr.headers.items())
    api = fastapi.FastAPI()
    api.include_router(router(flow, path="/events", **options))
    with TestClient(api) as client:
        xr = client.request(method, "/events", content=body, headers=headers)
    return _answer(xr.status_code, xr.content, xr.headers.items())


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


def signup(email: str, **fields: Any) -> dict[str, Any]:
    return {"name": "user/signed_up", "data": {"email": email}, **fields}


# --- Accepted requests start real runs ----------------------------------------------------


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_one_event_and_a_list_start_runs_on_a_worker(framework: str, live_flow: Flow) -> None:
    tag = f"{framework}-{uuid.uuid4().hex[:8]}"
    one = post(framework, live_flow, dumps(signup(f"{tag}@a")))
    assert one.status == 200, one.body
    [single] = one.body["ids"]

    many = post(framework, live_flow, dumps([signup(f"{tag}@b"), signup(f"{tag}@c", id=tag)]))
    assert many.status == 200, many.body
    assert len(many.body["ids"]) == 2 and many.body["ids"][1] == tag

    outputs = [wait_for_run(live_flow, event_id=i).output for i in [single, *many.body["ids"]]]
    assert outputs == [f"hello {tag}@a", f"hello {tag}@b", f"hello {tag}@c"]


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_signed_request_is_accepted(framework: str, flow: Flow) -> None:
    body = dumps(signup("signed@a", id=f"signed-{framework}"))
    r = post(framework, flow, body, {SIGNATURE_HEADER: sign(body, KEY)}, signing_key=KEY)
    assert (r.status, r.body) == (200, {"ids": [f"signed-{framework}"]})
    [run] = flow.list_runs()
    assert run.event_id == f"signed-{framework}" and run.status == RunStatus.QUEUED


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_repeated_event_id_starts_nothing_new(framework: str, flow: Flow) -> None:
    body = dumps(signup("twice@a", id="dup-1"))
    first = post(framework, flow, body)
    again = post(framework, flow, body)
    assert first.body == again.body == {"ids": ["dup-1"]}
    assert first.status == again.status == 200
    assert len(flow.list_runs()) == 1


# --- Refused requests record nothing ------------------------------------------------------

REFUSALS: list[tuple[str, bytes, dict[str, str], dict[str, Any], int, str]] = [
    ("malformed JSON", b'{"name": "a", ', {}, {}, 400, "malformed JSON: Expecting"),
    ("not an object", b'"user/signed_up"', {}, {}, 400, "JSON object"),
    ("empty list", b"[]", {}, {}, 400, "list of events is empty"),
    ("no name", dumps([signup("x@a"), {"data": {}}]), {}, {}, 400, "event #1 is invalid: name"),
    ("unknown field", dumps({"name": "a", "dat": {}}), {}, {}, 400, "dat: Extra inputs"),
    ("NaN in data", b'{"name": "a", "data": {"x": NaN}}', {}, {}, 400, "NaN and infinity"),
    ("not UTF-8", b'{"name": "\xff"}', {}, {}, 400, "not UTF-8"),
    ("form post", b"name=a", {"Content-Type": "text/plain"}, {}, 415, "application/json"),
    ("unsigned", dumps(signup("x@a")), {}, {"signing_key": KEY}, 401, "missing X-Celeryflow"),
    ("too big", dumps(signup("x" * 2000)), {}, {"max_bytes": 1000}, 413, "over the limit of 1000"),
]


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize(
    ("body", "headers", "options", "status", "reason"),
    [r[1:] for r in REFUSALS],
    ids=[r[0] for r in REFUSALS],
)
def test_refused_with_a_reason_and_nothing_recorded(
    framework: str,
    flow: Flow,
    body: bytes,
    headers: dict[str, str],
    options: dict[str, Any],
    status: int,
    reason: str,
) -> None:
    r = post(framework, flow, body, dict(headers), **options)
    assert r.status == status, r.body
    assert reason in r.body["error"], r.body
    assert flow.list_runs() == []


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_wrong_old_and_future_signatures_get_401(framework: str, flow: Flow) -> None:
    body = dumps(signup("x@a"))
    now = int(time.time())
    cases = {
        sign(body, "another key"): "does not match",
        sign(b"another body", KEY): "does not match",
        sign(body, KEY, timestamp=now - 301): "s old",  # a replay of a captured request
        sign(body, KEY, timestamp=now + 600): "in the future",
        "s=abc": "malformed",
    }
    for header, reason in cases.items():
        r = post(framework, flow, body, {SIGNATURE_HEADER: header}, signing_key=KEY)
        assert (r.status, reason in r.body["error"]) == (401, True), (header, r.body)
    assert flow.list_runs() == []


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_get_is_405(framework: str, flow: Flow) -> None:
    r = post(framework, flow, b"", method="GET")
    assert r.status == 405
    assert "POST" in r.headers["allow"]


def test_django_refuses_by_content_length_before_reading(flow: Flow) -> None:
    from django.test import RequestFactory

    view = event_view(flow, max_bytes=1000)
    # The declared length is a lie: reading the body would fail the test client's
    # FakePayload, so a 413 shows the header alone decided.
    request = RequestFactory().post(
        "/events", b"{}", content_type="application/json", CONTENT_LENGTH="5000000"
    )
    response = view(request)
    assert response.status_code == 413 and b"5000000 bytes" in response.content


def test_body_over_the_limit_without_content_length_is_413(flow: Flow) -> None:
    """A chunked body declares no length: the bytes read are counted instead."""
    big = dumps(signup("x" * 5000))
    api = fastapi.FastAPI()
    api.include_router(router(flow, max_bytes=1000))
    with TestClient(api) as client:
        r = client.post("/events", content=iter([big[:600], big[600:]]), headers=JSON)
    assert "content-length" not in r.request.headers
    assert r.status_code == 413 and "over the limit of 1000" in r.json()["error"]

    app = flask.Flask(__name__)
    app.register_blueprint(blueprint(flow, max_bytes=1000))
    fr = app.test_client().post(
        "/events",
        input_stream=io.BytesIO(big),
        headers=JSON,
        # What a WSGI server sets for a chunked request: read the stream to its end.
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert fr.status_code == 413 and "over the limit of 1000" in fr.json["error"]

    assert handle(flow, big, JSON, max_bytes=1000)[0] == 413
    assert flow.list_runs() == []


# --- The framework-free core ----------------------------------------------------------------


def test_core_signature_rules(flow: Flow) -> None:
    body = dumps(signup("core@a", id="core-1"))
    t = 1_700_000_000
    signed = {"content-type": "application/json", "x-celeryflow-signature": sign(body, KEY, t)}
    assert handle(flow, body, signed, signing_key=KEY, now=t + 300)[0] == 200
    # Rotation: any key of the list may have signed, and several s= entries may be sent.
    rotated = {**signed, SIGNATURE_HEADER: f"t={t},s=00,{sign(body, 'new', t).split(',')[1]}"}
    assert handle(flow, body, rotated, signing_key=["new", KEY], now=t)[0] == 200
    assert handle(flow, body, signed, signing_key=KEY, now=t + 301)[0] == 401
    assert handle(flow, body, signed, signing_key=KEY, now=t - 301)[0] == 401
    # str.isdigit() is true for "²"; the header must not make int() raise (a 500).
    odd = {**signed, "x-celeryflow-signature": "t=\u00b2,s=00", "content-length": "\u00b2"}
    assert handle(flow, body, odd, now=t) == (400, {"error": "invalid Content-Length '²'"})
    del odd["content-length"]
    assert "malformed" in handle(flow, body, odd, signing_key=KEY, now=t)[1]["error"]
    with pytest.raises(ValueError, match="signing_key is empty"):
        IngestSettings(signing_key="")
    with pytest.raises(ValueError, match="signing_key is empty"):
        IngestSettings(signing_key=[])
    assert sign(body, KEY, t) == sign(body, KEY.encode(), t)


def test_core_refuses_deep_nesting_as_400(flow: Flow) -> None:
    body = b'{"name": "a", "data": {"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}"
    status, answer = handle(flow, body, JSON)
    assert status == 400 and "nested" in answer["error"]
    assert flow.list_runs() == []


def test_importing_celeryflow_imports_no_web_framework() -> None:
    # kombu.utils.json itself imports django.utils when Django is installed: count only
    # what celeryflow adds on top of Celery.
    code = (
        "import sys, celery, kombu.utils.json; before = set(sys.modules); "
        "import celeryflow, celeryflow.ingest; "
        "print(sorted({m for m in set(sys.modules) - before if m.split('.')[0] in "
        "{'django', 'flask', 'werkzeug', 'fastapi', 'starlette'}}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- A live server over real HTTP -------------------------------------------------------------


@pytest.fixture
def live_url(live_flow: Flow) -> Iterator[str]:
    """Uvicorn serving the FastAPI router (signed) on a free port, in a thread."""
    api = fastapi.FastAPI()
    api.include_router(router(live_flow, signing_key=KEY, max_bytes=64 * 1024))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(api, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, timeout=10, what="uvicorn to start")
    try:
        yield f"http://127.0.0.1:{port}/events"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _urlopen(request: urllib.request.Request) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def test_live_server_signed_events_run_and_refusals(live_flow: Flow, live_url: str) -> None:
    tag = uuid.uuid4().hex[:8]
    body = dumps([signup(f"live-{tag}@a", id=f"live-{tag}")])

    def request(headers: dict[str, str]) -> urllib.request.Request:
        all_headers = {**JSON, **headers}
        return urllib.request.Request(live_url, data=body, method="POST", headers=all_headers)

    assert _urlopen(request({})) == (401, {"error": f"missing {SIGNATURE_HEADER} header"})
    status, answer = _urlopen(request({SIGNATURE_HEADER: sign(body, KEY)}))
    assert (status, answer) == (200, {"ids": [f"live-{tag}"]})
    run = wait_for_run(live_flow, event_id=f"live-{tag}")
    assert (run.status, run.output) == (RunStatus.COMPLETED, f"hello live-{tag}@a")

    # A declared length over the limit is answered at once, though no byte of it is sent.
    port = int(live_url.split(":")[2].split("/")[0])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(
            b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 10000000\r\n\r\n"
        )
        head = s.recv(65536)
    assert head.startswith(b"HTTP/1.1 413"), head[:200]
