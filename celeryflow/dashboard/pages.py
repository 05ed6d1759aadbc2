"""The dashboard's pages and actions: each a function of (dashboard, request, match).

Reads go through ``celeryflow.store.views`` (bounded, index-walking queries); actions
call what the CLI calls (``Flow.cancel``/``replay``/``send``, ``Store.pause_function``).
``?partial=1`` on the runs list and a run's page returns only the live part, which
``static/dashboard.js`` polls; a run's part says ``X-Celeryflow-Final: 1`` once the
run has ended, and polling stops.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from ..durations import utcnow
from ..errors import CeleryflowError, ConfigError, EventError
from ..events import Event, EventTrigger
from ..functions import FLOW_CONTROL_OPTIONS
from ..runs import TERMINAL, RunStatus
from ..store.views import (
    RunFilter,
    decode_cursor,
    encode_cursor,
    event_payloads,
    function_stats,
    list_runs,
    recent_events,
    run_detail,
    waiting_runs,
)
from .timeline import waterfall
from .web import Request, Response, Route

if TYPE_CHECKING:
    from .core import Dashboard

__all__ = ["ROUTES", "STATS_WINDOWS"]

# a run's page shows its newest steps: a page of thousands of rows is slow to render
# (5,000 steps: ~260 ms) and to read; the note above the table says how many are left out
RUN_STEPS_SHOWN = 200
STATS_WINDOWS = {"1h": timedelta(hours=1), "24h": timedelta(days=1), "7d": timedelta(days=7)}
# p50/p95 from the newest ended runs of each function: enough for a daily look, and
# the page stays quick with many functions
STATS_SAMPLE = 500
NOTICES = {
    "cancelled": "Run cancelled (a running run stops at its next step).",
    "ended": "The run had already ended; nothing was cancelled.",
    "replayed": "Replayed: this is the new run.",
    "sent": "Event sent.",
    "paused": "Paused: events and cron slots start no run of it until it is resumed.",
    "resumed": "Resumed.",
}
NEEDS_APP = "this needs the Celery app: start the dashboard with -A (or mount it with a Flow)"


def _time(value: str, name: str) -> datetime | None:
    """A ``datetime-local`` input (``2026-01-02T03:04``), read as UTC."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"{name}: {value!r} is not a date and time (YYYY-MM-DDTHH:MM)") from None
    return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed


def _statuses(value: str) -> list[RunStatus]:
    if not value:
        return []
    try:
        return [RunStatus(v) for v in value.split(",") if v]
    except ValueError:
        raise ConfigError(f"status {value!r} is not a run state") from None


def _notice(request: Request) -> str:
    return NOTICES.get(request.query.get("done", ""), "")


# -- runs ----------------------------------------------------------------------------


def home(dash: Dashboard, request: Request, match: re.Match[str]) -> Response:
    return dash.redirect(request, "/runs")


def runs_page(dash: Dashboard, request: Request, match: re.Match[str]) -> Response:
    q = request.query
    filters = {
        k: q.get(k, "") for k in ("function", "status", "event", "event_id", "since", "until")
    }
    where = RunFilter(
        function_id=filters["function"] or None,
        statuses=_statuses(filters["status"]),
        event_name=filters["event"] or None,
        event_id=filters["event_id"] or None,
        since=_time(filters["since"], "from"),
        until=_time(filters["until"], "until"),
    )
    after = decode_cursor(q["after"]) if q.get("after") else None
    page = list_runs(dash.store, where, limit=dash.page_size, after=after)
    context = {
        "runs": page.rows,
        "filters": filters,
        "after": q.get("after", ""),
        "next_cursor": encode_cursor(page.next_cursor) if page.next_cursor else "",
        "statuses": [s.value for s in RunStatus],
        "functions": sorted(dash.flow.functions) if dash.flow else [],
        "notice": _notice(request),
    }
    if q.get("partial"):
        return dash.page(request, "runs_rows.html", context)
    return dash.page(request, "runs.html", context)


def run_page(dash: Dashboard, request: Request, match: re.Match[str]) -> Response:
    run_id = dash.store.run_id_for(match["run_id"])
    detail = run_detail(dash.store, run_id, step_limit=RUN_STEPS_SHOWN)
    now = utcnow()
    context = {
        "d": detail,
        "run": detail.run,
        "bars": waterfall(detail, now),
        "final": detail.run.status in TERMINAL,
        "notice": _notice(request),
    }
    if request.query.get("partial"):
        headers = [("X-Celeryflow-Final", "1")] if context["final"] else []
        return dash.page(request, "run_live.html", context, headers=headers)
    return dash.page(request, "run.html", context)


def cancel_run(dash: Dashboard, request: Request, match: re.Match[str]) -> Response:
    run_id = dash.store.run_id_for(match["run_id"])
    done = dash.store.cancel(run_id, utcnow())
    return dash.redirect(request, f"/runs/{run_id}", done="cancelled" if done else "ended")


def replay_run(dash: Dashboard, request: Request, match: re.Match[str]) -> Response:
    if dash.flow is None:
        raise CeleryflowError(NEEDS_APP)
    run_id = dash.store.run_id_for(match["run_id"])
    function_id = dash.store.get_run(run_id).function_id
    if function_id not in dash.flow.functions:
        raise CeleryflowError(f"the app has no function {function_id!r} to replay")
    new_id = dash.flow.replay(run_id)
    return dash.redirect(request, f"/runs/{new_id}", done="replayed")


# -- events --------------------------------------------------------------------------


def _events_context(dash: Dashboard, request: Request) -> dict[str, Any]:
    name = request.query.get("name", "")
    found = recent_events(dash.store, name=name or None, limit=dash.page_size)
    return {
        "events": found,
        "payloads": event_payloads(dash.store, [e.id for e in found]),
        "name": name,
        "notice": _notice(request),
        "highlight": request.query.get("event", ""),
        "form": {"name": "", "data": "{}", "id": ""},
        "form_error": "",
    }


def events_page(dash: Dashboard, request: Request, match: re.Match[str]) -> Response:
    return dash.page(request, "events.html", _events_context(dash, request))


def send_event(dash: Dashboard, request: Request, match: re.Match[str]) -> Response:
    form = {k: request.form.get(k, "") for k in ("name", "data", "id")}
    error = ""
    if dash.flow is None:
        error = NEEDS_APP
    else:
        try:
            data = json.loads(form["data"] or "{}")
            if not isinstance(data, dict):
                raise EventError("data must be a JSON object ({...})")
            event = Event(name=form["name"].strip(), data=data, id=form["id"].strip() or None)
            [event_id] = dash.flow.send(event)
            return dash.redirect(request, "/events", done="sent", event=event_id)
        except json.JSONDecodeError as exc:
            error = f"data is not JSON: {exc}"
        except (CeleryflowError, ValueError) as exc:  # pydantic's ValidationError is one
            error = " ".join(str(exc).split())
    context = {**_events_context(dash, request), "form": form, "form_error": error}
    return dash.page(request, "events.html", context, status=400)


def resend_event(dash: Dashboard, request: Request, match: re.Match[str]) -> Response:
    """Send the event's name and data again, as a new event (a new id: the old one
    would be a duplicate and start nothing)."""
    if dash.flow is None:
        raise CeleryflowError(NEEDS_APP)
    event_id = request.form.get("event_id", "")
    payload = event_payloads(dash.store, [event_id]).get(event_id)
    if payload is None:
        raise CeleryflowError(f"no event with id {event_id!r} (pruned?)")
    [new_id] = dash.flow.send(Event(name=payload["name"], data=payload["data"]))
    return dash.redirect(request, "/events", done="sent", event=new_id)


# -- functions -----------------------------------------------------------------------


def _triggers(dash: Dashboard, function_id: str, now: datetime) -> dict[str, Any]:
    fn = dash.flow.functions.get(function_id) if dash.flow else None
    if fn is None:
        return {"known": False, "events": [], "crons": [], "control": {}}
    events, crons = [], []
    for trigger in fn.config.triggers:
        if isinstance(trigger, EventTrigger):
            events.append({"name": trigger.name, "if": trigger.if_ or ""})
        else:
            slots, at = [], now
            for _ in range(3):
                at = trigger.next_slot(at)
                slots.append(at)
            crons.append(
                {"expression": trigger.expression, "tz": trigger.tz or "UTC", "next": slots}
            )
    control = fn.config.model_dump(
        mode="json",
        include={*FLOW_CONTROL_OPTIONS, "retries", "timeouts", "cancel_on"},
        exclude_none=True,
        exclude_defaults=True,
    )
    return {"known": True, "events": events, "crons": crons, "control": control}


def functions_page(dash: Dashboard, request: Request, match: re.Match[str]) -> Response:
    window = request.query.get("window", "24h")
    if window not in STATS_WINDOWS:
        window = "24h"
    now = utcnow()
    stats = {
        s.function_id: s
        for s in function_stats(dash.store, since=now - STATS_WINDOWS[window], sample=STATS_SAMPLE)
    }
    paused = dash.store.paused_functions()
    ids = sorted(set(stats) | set(paused) | set(dash.flow.functions if dash.flow else ()))
    rows = [
        {
            "id": fid,
            "stats": stats.get(fid),
            "paused_at": paused.get(fid),
            **_triggers(dash, fid, now),
        }
        for fid in ids
    ]
    context = {
        "functions": rows,
        "window": window,
        "sample": STATS_SAMPLE,
        "windows": list(STATS_WINDOWS),
        "statuses": [s.value for s in RunStatus],
        "notice": _notice(request),
    }
    return dash.page(request, "functions.html", context)


def pause(dash: Dashboard, request: Request, match: re.Match[str]) -> Response:
    function_id = request.form.get("function_id", "")
    if not function_id:
        raise ConfigError("no function_id given")
    dash.store.pause_function(function_id, utcnow())
    return dash.redirect(request, "/functions", done="paused")


def resume(dash: Dashboard, request: Request, match: re.Match[str]) -> Response:
    function_id = request.form.get("function_id", "")
    if not function_id:
        raise ConfigError("no function_id given")
    dash.store.resume_function(function_id)
    return dash.redirect(request, "/functions", done="resumed")


# -- waiting -------------------------------------------------------------------------


def waiting_page(dash: Dashboard, request: Request, match: re.Match[str]) -> Response:
    function_id = request.query.get("function", "")
    event_name = request.query.get("event", "")
    rows = waiting_runs(
        dash.store, function_id=function_id or None, event_name=event_name or None, limit=200
    )
    context = {"waits": rows, "function": function_id, "event": event_name}
    return dash.page(request, "waiting.html", context)


def _route(method: str, pattern: str, handler: Any) -> Route:
    return Route(method, re.compile(pattern), handler)


RUN_ID = r"/runs/(?P<run_id>[^/]+)"
ROUTES = [
    _route("GET", r"/", home),
    _route("GET", r"/runs", runs_page),
    _route("GET", RUN_ID, run_page),
    _route("POST", RUN_ID + "/cancel", cancel_run),
    _route("POST", RUN_ID + "/replay", replay_run),
    _route("GET", r"/events", events_page),
    _route("POST", r"/events/send", send_event),
    _route("POST", r"/events/resend", resend_event),
    _route("GET", r"/functions", functions_page),
    _route("POST", r"/functions/pause", pause),
    _route("POST", r"/functions/resume", resume),
    _route("GET", r"/waiting", waiting_page),
]
