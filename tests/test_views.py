"""The operators' read views (store/views.py) over runs a real worker executed, on
every stack."""

from __future__ import annotations

from datetime import timedelta

from flowkit import make_flow
from services import Stack

from celeryflow import Event, RunStatus, event
from celeryflow.durations import utcnow
from celeryflow.store import views as v
from celeryflow.testing import wait_for_run, worker


def test_views_show_runs_steps_events_stats_and_waiters(stack: Stack) -> None:
    flow = make_flow(stack)

    @flow.function(id="v-ok", trigger=event("v/ok"))
    def ok(ctx):  # type: ignore[no-untyped-def]
        return ctx.step.run("double", lambda: ctx.event.data["n"] * 2)

    @flow.function(id="v-fail", trigger=event("v/fail"), retries=0)
    def fail(ctx):  # type: ignore[no-untyped-def]
        raise ValueError("no   good\nat all")

    @flow.function(id="v-wait", trigger=event("v/wait"))
    def wait(ctx):  # type: ignore[no-untyped-def]
        return ctx.step.wait_for_event("reply", event="v/reply", match="data.k", timeout="1h")

    with worker(flow):
        [ok_event] = flow.send(Event(name="v/ok", data={"n": 2}))
        ok_run = wait_for_run(flow, event_id=ok_event)
        [fail_event] = flow.send(Event(name="v/fail", data={}))
        fail_run = wait_for_run(flow, event_id=fail_event)
        [wait_event] = flow.send(Event(name="v/wait", data={"k": "abc"}))
        wait_run = wait_for_run(flow, event_id=wait_event, status="waiting")
    store = flow.store

    page = v.list_runs(store)
    assert [r.id for r in page.rows] == [wait_run.id, fail_run.id, ok_run.id]
    assert page.next_cursor is None
    by_id = {r.id: r for r in page.rows}
    assert by_id[ok_run.id].event_name == "v/ok"
    assert by_id[ok_run.id].duration is not None and by_id[ok_run.id].error is None
    assert by_id[fail_run.id].error == "ValueError: no good at all"
    assert by_id[wait_run.id].duration is None

    # keyset paging: one row a page, every run once, newest first
    seen, cursor = [], None
    while True:
        one = v.list_runs(store, limit=1, after=cursor)
        seen += [r.id for r in one.rows]
        if one.next_cursor is None:
            break
        cursor = v.decode_cursor(v.encode_cursor(one.next_cursor))
    assert seen == [r.id for r in page.rows]

    ended = v.list_runs(store, v.RunFilter(statuses=[RunStatus.COMPLETED, RunStatus.FAILED]))
    assert [r.id for r in ended.rows] == [fail_run.id, ok_run.id]
    assert [r.id for r in v.list_runs(store, v.RunFilter(event_name="v/fail")).rows] == [
        fail_run.id
    ]
    assert [r.id for r in v.list_runs(store, v.RunFilter(function_id="v-ok")).rows] == [ok_run.id]
    assert v.list_runs(store, v.RunFilter(since=utcnow() + timedelta(minutes=1))).rows == []

    detail = v.run_detail(store, ok_run.id)
    assert [(s.name, s.kind, s.status) for s in detail.steps] == [("double", "run", "completed")]
    assert detail.output == 4 and detail.events[0]["name"] == "v/ok"
    waiting = v.run_detail(store, wait_run.id)
    [step] = waiting.steps
    assert step.kind == "wait" and step.wait is not None
    assert (step.wait.event_name, step.wait.match_field, step.wait.match_value) == (
        "v/reply",
        "data.k",
        '"abc"',
    )
    assert step.wait.expires_at is not None

    recent = [e for e in v.recent_events(store) if not e.name.startswith("celeryflow/")]
    assert [e.name for e in recent] == ["v/wait", "v/fail", "v/ok"]
    assert [r.id for r in recent[1].runs] == [fail_run.id]

    stats = {s.function_id: s for s in v.function_stats(store, since=utcnow() - timedelta(hours=1))}
    assert stats["v-fail"].counts == {"failed": 1} and stats["v-fail"].failure_rate == 1.0
    assert stats["v-ok"].failure_rate == 0.0 and stats["v-ok"].p95 is not None
    # the database computes each duration (stats.py): the run's end minus its start
    took = by_id[ok_run.id].duration
    assert took is not None and stats["v-ok"].p50 is not None
    assert abs((stats["v-ok"].p50 - took).total_seconds()) < 0.002, (stats["v-ok"].p50, took)
    assert stats["v-wait"].failure_rate is None and stats["v-wait"].sampled == 0

    [parked] = v.waiting_runs(store)
    assert (parked.run_id, parked.function_id, parked.event_name) == (
        wait_run.id,
        "v-wait",
        "v/reply",
    )
