"""The run read model: `Run.events` are `Event` objects, as `ctx.event` is."""

from __future__ import annotations

from pathlib import Path

from celery import Celery
from services import embedded_broker_url, fresh_sqlite_url

from celeryflow import Event, Flow, event


def test_run_events_are_event_objects_and_replay_reuses_them(tmp_path: Path) -> None:
    app = Celery("runs-model", broker=embedded_broker_url(tmp_path))
    flow = Flow(app, store=fresh_sqlite_url(tmp_path))

    @flow.function(id="greet", trigger=event("user/signed_up"))
    def greet(ctx: object) -> None:
        return None

    sent = Event(name="user/signed_up", data={"email": "ada@example.com"}, id="e-1", ts=1700)
    flow.send(sent)
    (run,) = flow.list_runs(event_id="e-1")
    assert run.events == [sent]
    assert isinstance(flow.get_run(run.id).events[0], Event)

    again = flow.get_run(flow.replay(run.id))
    assert again.id != run.id and again.events == [sent]
    flow.store.engine.dispose()
