"""Pausing a function: no run from events or cron while paused, events still
recorded, the pause seen by every process within PAUSED_TTL; on every stack."""

from __future__ import annotations

from datetime import timedelta

from flowkit import make_flow
from services import Stack

from celeryflow import Event, event
from celeryflow.durations import utcnow
from celeryflow.schedule import cron
from celeryflow.store import Store
from celeryflow.store import views as v
from celeryflow.store.tables import cron_ticks
from celeryflow.testing import wait_for


def test_a_paused_function_starts_nothing_until_resumed(stack: Stack) -> None:
    flow = make_flow(stack)

    @flow.function(id="p-paused", trigger=event("p/go"))
    def paused(ctx):  # type: ignore[no-untyped-def]
        return 1

    @flow.function(id="p-other", trigger=event("p/go"))
    def other(ctx):  # type: ignore[no-untyped-def]
        return 2

    store = flow.store
    assert store.pause_function("p-paused", utcnow()) is True
    assert store.pause_function("p-paused", utcnow()) is False
    assert store.paused_function_ids() == {"p-paused"}
    # another process (another Store) sees the pause within PAUSED_TTL
    elsewhere = Store(stack.store_url)
    assert "p-paused" in elsewhere.paused_functions()

    [while_paused] = flow.send(Event(name="p/go", data={}))
    started = flow.list_runs(event_id=while_paused)
    assert [r.function_id for r in started] == ["p-other"]  # the event was recorded
    assert [e.id for e in v.recent_events(store)] == [while_paused]

    assert store.resume_function("p-paused") is True
    assert store.resume_function("p-paused") is False
    [after] = flow.send(Event(name="p/go", data={}))
    assert sorted(r.function_id for r in flow.list_runs(event_id=after)) == ["p-other", "p-paused"]
    wait_for(lambda: elsewhere.paused_function_ids() == frozenset(), what="the resume seen")


def test_a_paused_cron_function_records_its_slots_without_runs(stack: Stack) -> None:
    flow = make_flow(stack)

    @flow.function(id="p-cron", trigger=cron("* * * * *"))
    def every_minute(ctx):  # type: ignore[no-untyped-def]
        return 1

    now = utcnow()
    flow.store.pause_function("p-cron", now)
    assert flow.tick(now) == []
    with flow.store.engine.connect() as conn:
        ticks = conn.execute(cron_ticks.select()).mappings().all()
    assert [t["run_id"] for t in ticks] == [None]
    flow.store.resume_function("p-cron")
    assert flow.tick(now) == []  # that slot passed while paused: not fired on resume
    assert len(flow.tick(now + timedelta(minutes=1))) == 1
