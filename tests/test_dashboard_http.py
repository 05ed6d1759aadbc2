"""The dashboard's safety rules over plain HTTP: the bind refusal of `celeryflow
dashboard`, token and basic auth, CSRF and cross-site POSTs refused, escaping and
headers; and the same app mounted in FastAPI, Flask and Django under a prefix."""

from __future__ import annotations

import base64
import http.cookiejar
import os
import re
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import eventually, free_port, served
from flowkit import make_flow
from services import Stack

from celeryflow import Event, Flow, event
from celeryflow.dashboard import Auth, Dashboard, Request, check_bind
from celeryflow.dashboard.asgi import dashboard_app
from celeryflow.dashboard.pages import RUN_STEPS_SHOWN
from celeryflow.errors import ConfigError
from celeryflow.runs import RunStatus
from celeryflow.store.views import run_detail
from celeryflow.testing import wait_for_run, worker

pytestmark = pytest.mark.parametrize("stack", ["embedded"], indirect=True)


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class Client:
    """urllib with a cookie jar, no redirects followed, errors returned not raised."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.jar), NoRedirect()
        )

    def call(
        self,
        path: str,
        form: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], str]:
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        request = urllib.request.Request(self.base + path, data=data, headers=headers or {})
        try:
            with self.opener.open(request, timeout=15) as response:
                return response.status, dict(response.headers), response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read().decode()

    def csrf(self) -> str:
        return next(c.value for c in self.jar if c.name == "cf_csrf" and c.value)


def sleeper(flow: Flow) -> None:
    @flow.function(id="sleeper", trigger=event("http/nap"))
    def sleeper_fn(ctx: Any) -> None:
        ctx.step.sleep("nap", "1h")


@pytest.fixture
def flow(stack: Stack) -> Iterator[Flow]:
    flow = make_flow(stack)
    sleeper(flow)
    with worker(flow):
        yield flow


def sleeping_run(flow: Flow) -> str:
    [event_id] = flow.send(Event(name="http/nap", data={"q": "<b>&"}))
    return wait_for_run(flow, event_id=event_id, status=RunStatus.SLEEPING).id


def test_posts_without_the_csrf_token_or_from_another_site_are_refused(flow: Flow) -> None:
    run_id = sleeping_run(flow)
    with served(dashboard_app(flow)) as url:
        client = Client(url)
        status, headers, body = client.call(f"/runs/{run_id}")
        assert status == 200
        assert "script-src 'self'" in headers["content-security-policy"]
        assert headers["x-frame-options"] == "DENY"
        assert "&lt;b&gt;&amp;" in body and "<b>&" not in body
        token = client.csrf()
        refusals = [
            client.call(f"/runs/{run_id}/cancel", {}),
            client.call(f"/runs/{run_id}/cancel", {"csrf_token": "forged"}),
            client.call(
                f"/runs/{run_id}/cancel",
                {"csrf_token": token},
                {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"},
            ),
        ]
        assert [r[0] for r in refusals] == [403, 403, 403], refusals
        assert flow.get_run(run_id).status == RunStatus.SLEEPING
        status, headers, _ = client.call(
            f"/runs/{run_id}/cancel", {"csrf_token": token}, {"Origin": url}
        )
        assert status == 303 and headers["location"].startswith(f"/runs/{run_id}")
        assert flow.get_run(run_id).status == RunStatus.CANCELLED
        assert client.call(f"/runs/{run_id}/cancel")[0] == 405  # a GET


def test_token_and_basic_auth(flow: Flow) -> None:
    with served(dashboard_app(flow, token="s3cret-token")) as url:
        client = Client(url)
        status, headers, _ = client.call("/runs")
        assert status == 303 and headers["location"] == "/login?next=%2Fruns"
        assert client.call("/runs?partial=1")[0] == 401
        assert client.call("/runs", headers={"Authorization": "Bearer s3cret-token"})[0] == 200
        assert client.call("/runs", headers={"Authorization": "Bearer wrong"})[0] == 303
        client.call("/login")
        wrong = client.call("/login", {"token": "nope", "csrf_token": client.csrf()})
        assert wrong[0] == 401 and "wrong token" in wrong[2]
        status, headers, _ = client.call(
            "/login", {"token": "s3cret-token", "csrf_token": client.csrf(), "next": "//evil"}
        )
        assert status == 303 and headers["location"] == "/runs"  # never an open redirect
        assert any(c.name == "cf_auth" and "s3cret" not in str(c.value) for c in client.jar)
        assert client.call("/runs")[0] == 200
    with served(dashboard_app(flow, username="ops", password="pw:x")) as url:
        client = Client(url)
        status, headers, _ = client.call("/runs")
        assert status == 401 and headers["www-authenticate"].startswith("Basic")
        good = base64.b64encode(b"ops:pw:x").decode()
        bad = base64.b64encode(b"ops:pw").decode()
        assert client.call("/runs", headers={"Authorization": f"Basic {good}"})[0] == 200
        assert client.call("/runs", headers={"Authorization": f"Basic {bad}"})[0] == 401


def cli(*args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "celeryflow.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def test_a_non_loopback_bind_without_auth_refuses_to_start(flow: Flow, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERYFLOW_DASHBOARD")}
    port = free_port()
    store = ["--store", flow.store.url]
    refused = cli(*store, "dashboard", "--host", "0.0.0.0", "--port", str(port), env=env)
    output = refused.communicate(timeout=60)[0].decode()
    assert refused.returncode == 1, output
    assert "refusing to serve the dashboard on '0.0.0.0' without authentication" in output
    assert "CELERYFLOW_DASHBOARD_TOKEN" in output and "Traceback" not in output
    with pytest.raises(ConfigError):
        check_bind("::", Auth())
    for host in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"):
        check_bind(host, Auth())

    # with a token it serves, and asks for it
    server = cli(
        *store,
        "dashboard",
        "--host",
        "0.0.0.0",
        "--port",
        str(port),
        env={**env, "CELERYFLOW_DASHBOARD_TOKEN": "tok-1"},
    )
    try:
        client = Client(f"http://127.0.0.1:{port}")

        def up() -> int | None:
            try:
                return client.call("/runs?partial=1")[0]
            except OSError:
                return None

        assert eventually(up, what="the dashboard to listen") == 401
        run_id = sleeping_run(flow)
        status, _, body = client.call("/runs", headers={"Authorization": "Bearer tok-1"})
        assert status == 200 and run_id[:8] in body
    finally:
        server.terminate()
        server.wait(30)


MOUNTED_LINK = re.compile(r'href="(/ops/flows/runs/[0-9a-f]+)"')


def test_mounted_in_fastapi_flask_and_django_under_a_prefix(flow: Flow) -> None:
    from fastapi import FastAPI

    run_id = sleeping_run(flow)
    web = FastAPI()
    web.mount("/ops/flows", dashboard_app(flow))
    with served(web) as url:
        client = Client(url)
        status, _, body = client.call("/ops/flows/runs")
        assert status == 200 and f"/ops/flows/runs/{run_id}" in body
        assert 'src="/ops/flows/static/dashboard.js"' in body
        assert client.call("/ops/flows/static/dashboard.js")[0] == 200
        assert any(c.name == "cf_csrf" and c.path == "/ops/flows" for c in client.jar)

    from flask import Flask

    from celeryflow.dashboard.flask import blueprint

    app = Flask("dash")
    app.register_blueprint(blueprint(flow, url_prefix="/ops/flows"))
    test = app.test_client()
    page = test.get("/ops/flows/runs")
    assert page.status_code == 200 and f"/ops/flows/runs/{run_id}" in page.text
    assert test.post(f"/ops/flows/runs/{run_id}/cancel", data={}).status_code == 403
    token = test.get_cookie("cf_csrf", path="/ops/flows")
    assert token is not None
    done = test.post(f"/ops/flows/runs/{run_id}/cancel", data={"csrf_token": token.value})
    assert done.status_code == 303 and done.headers["Location"].startswith("/ops/flows/runs/")
    assert flow.get_run(run_id).status == RunStatus.CANCELLED

    import django
    from django.conf import settings
    from django.test import Client as DjangoClient
    from django.test import override_settings
    from django.urls import include, path

    from celeryflow.dashboard.django import dashboard_urls

    if not settings.configured:
        settings.configure(
            SECRET_KEY="dashboard-tests",
            ALLOWED_HOSTS=["testserver"],
            INSTALLED_APPS=[],
            DATABASES={},
            MIDDLEWARE=["django.middleware.csrf.CsrfViewMiddleware"],
            ROOT_URLCONF=__name__,
        )
        django.setup()
    other = sleeping_run(flow)
    urls = type("Urls", (), {"urlpatterns": [path("ops/flows/", include(dashboard_urls(flow)))]})
    with override_settings(ROOT_URLCONF=urls):
        client = DjangoClient(enforce_csrf_checks=True)
        page = client.get("/ops/flows/runs")
        assert page.status_code == 200 and f"/ops/flows/runs/{other}" in page.text
        assert client.post(f"/ops/flows/runs/{other}/cancel", {}).status_code == 403
        token = client.cookies["cf_csrf"]
        assert token["path"] == "/ops/flows"
        done = client.post(f"/ops/flows/runs/{other}/cancel", {"csrf_token": token.value})
        assert done.status_code == 303, done.content
    assert flow.get_run(other).status == RunStatus.CANCELLED


urlpatterns: list[Any] = []


def test_the_core_escapes_and_needs_a_flow_for_sending(flow: Flow) -> None:
    dashboard = Dashboard(store=flow.store)  # as `celeryflow dashboard --store URL`
    page = dashboard.handle(Request("GET", "/events"))
    assert page.status == 200 and b"start the dashboard with <code>-A</code>" in page.body
    token = "t"
    sent = dashboard.handle(
        Request(
            "POST",
            "/events/send",
            form={"csrf_token": token, "name": "http/nap"},
            cookies={"cf_csrf": token},
        )
    )
    assert sent.status == 400 and b"needs the Celery app" in sent.body
    missing = dashboard.handle(Request("GET", "/runs/<script>"))
    assert missing.status == 404 and b"<script>" not in missing.body


def test_a_run_with_many_steps_shows_its_newest(stack: Stack) -> None:
    """A run's page reads and renders at most RUN_STEPS_SHOWN steps, the newest, and
    says how many it leaves out (issue 15: a page of thousands of steps took 260 ms)."""
    many = make_flow(stack)
    total = RUN_STEPS_SHOWN + 30

    @many.function(id="long", trigger=event("http/long"))
    def long_fn(ctx: Any) -> int:
        for n in range(total):
            ctx.step.run(f"s{n:03d}", lambda n=n: n)
        return total

    with worker(many):
        [sent] = many.send(Event(name="http/long"))
        run = wait_for_run(many, event_id=sent, timeout=120)
    assert run.status == RunStatus.COMPLETED and len(run.steps) == total
    page = Dashboard(many, auth=Auth()).handle(Request("GET", f"/runs/{run.id}")).body.decode()
    shown = re.findall(r'data-step="(s\d+)"', page)
    assert shown == [f"s{n:03d}" for n in range(30, total)]
    assert f"The newest {RUN_STEPS_SHOWN} of {total} steps; 30 earlier" in page
    detail = run_detail(many.store, run.id)  # the CLI's view: every step
    assert len(detail.steps) == total and detail.steps_hidden == 0
