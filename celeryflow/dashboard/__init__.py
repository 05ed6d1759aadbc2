"""A web dashboard for a celeryflow store: runs (filters, keyset paging, live
status), a run's steps as a waterfall with Cancel and Replay, recent events (send a
test event, re-send one), functions (triggers, next cron slots, flow control, counts,
failure rate, p50/p95, pause and resume) and the runs waiting for events.

Install ``pip install 'celeryflow-engine[dashboard]'`` and run
``celeryflow -A proj dashboard`` (http://127.0.0.1:8288), or mount it:

* FastAPI / Starlette: ``app.mount("/flows", celeryflow.dashboard.asgi.dashboard_app(flow))``
* Flask: ``app.register_blueprint(celeryflow.dashboard.flask.blueprint(flow, url_prefix="/flows"))``
* Django: ``path("flows/", include(celeryflow.dashboard.django.dashboard_urls(flow)))``

It binds 127.0.0.1; any other address needs a token or basic auth
(``CELERYFLOW_DASHBOARD_TOKEN``, or ``CELERYFLOW_DASHBOARD_USER`` and
``CELERYFLOW_DASHBOARD_PASSWORD``). Rules: :mod:`celeryflow.dashboard.security`.
This package imports no web framework; each adapter module imports its own.
"""

from __future__ import annotations

from .core import Dashboard
from .security import Auth, check_bind
from .web import Request, Response

__all__ = ["Auth", "Dashboard", "Request", "Response", "check_bind"]
