"""Flow controls as a registry (celeryflow/flowcontrol/controls.py): FunctionConfig is
the one source of the options, and the store asks a run's controls in the registry's
order, each deciding on its own locked rows. (Each control's behaviour across worker
processes is tests/test_flowcontrol.py's.)"""

from __future__ import annotations

import sqlalchemy as sa

from celeryflow.durations import utcnow
from celeryflow.events import Event
from celeryflow.flowcontrol import ADMISSION_CONTROLS, OPTIONS, FlowControl, RateLimit
from celeryflow.flowcontrol.controls import Keep
from celeryflow.functions import FLOW_CONTROL_OPTIONS, FunctionConfig
from celeryflow.planning import new_run_id
from celeryflow.runs import RunStatus
from celeryflow.store import PlannedRun, Store
from celeryflow.store.tables import flow_keys


def test_every_control_is_an_option_of_function_config() -> None:
    assert set(OPTIONS) <= set(FunctionConfig.model_fields)
    assert set(FLOW_CONTROL_OPTIONS) == set(OPTIONS)
    scopes = [control.scope for control in ADMISSION_CONTROLS]
    assert len(set(scopes)) == len(scopes)  # each keeps rows of its own
    assert all(isinstance(control.keeps, Keep) for control in ADMISSION_CONTROLS)  # prune reads it
    config = FunctionConfig(
        id="f", triggers=[], throttle={"limit": 1, "period": 60}, idempotency="event.data.k"
    )
    control = FlowControl("f", config)
    assert control.throttle is config.throttle and control.idempotency == "event.data.k"
    assert control.debounce is None
    assert [c.option for c in control.controls] == ["idempotency", "throttle"]


def _row(ev: Event) -> dict[str, object]:
    now = utcnow()
    return {
        "id": new_run_id(),
        "function_id": "f",
        "event_id": ev.id,
        "events": f'[{{"name":"{ev.name}","data":{{}},"id":"{ev.id}","ts":1}}]',
        "status": "queued",
        "attempt": 0,
        "fence": 0,
        "dispatches": 0,
        "due_at": now,
        "created_at": now,
    }


def test_a_run_skipped_by_one_control_consumes_nothing_further_down(store_url: str) -> None:
    store = Store(store_url, auto_migrate=True)
    config = FunctionConfig(
        id="f",
        triggers=[],
        rate_limit=RateLimit(limit=1, period=3600),
        idempotency="event.data.k",
    )
    control = FlowControl("f", config)

    def plan(ev: Event) -> list[PlannedRun]:
        return [PlannedRun(_row(ev), [], control.admission({"event": ev.model_dump()}))]

    first = Event(name="a/b", id=new_run_id(), data={"k": "one"}, ts=1)
    second = Event(name="a/b", id=new_run_id(), data={"k": "two"}, ts=1)
    [started] = store.record_events([first], plan, utcnow()).created
    assert store.record_events([second], plan, utcnow()).created == []  # recorded skipped
    assert store.get_run(started).status == RunStatus.QUEUED
    [run] = store.list_runs(event_id=second.id)
    assert run.status == RunStatus.SKIPPED and run.error["reason"] == "rate_limit"
    with store.engine.connect() as conn:
        taken = conn.execute(
            sa.select(flow_keys.c.key).where(flow_keys.c.scope == "idempotency")
        ).scalars()
        assert list(taken) == ["one"]  # the rate limit decided first: "two" is not taken
