"""Celery's JSON types (kombu's: datetime, date, time, Decimal, UUID, bytes) go in
and come back as the same types: event data, step results (first run and replay),
run outputs, invoke data and results; anything else is refused, naming the type."""

from __future__ import annotations

import uuid
from datetime import date, datetime, time, timezone
from decimal import Decimal
from typing import Any

import pytest
from flowkit import make_flow
from services import Stack

from celeryflow import Event, EventError, RunStatus, event
from celeryflow.codec import from_json, to_json
from celeryflow.errors import SerializationError
from celeryflow.testing import wait_for_run, worker

WHEN = datetime(2024, 5, 1, 12, 30, 15, 250000, tzinfo=timezone.utc)
VALUES: dict[str, Any] = {
    "when": WHEN,
    "naive": datetime(2024, 5, 1, 9, 0),
    "day": date(2024, 5, 1),
    "at": time(12, 30),
    "amount": Decimal("19.90"),
    "uid": uuid.UUID("0b6f7a4e-8c1d-4c3e-9f7a-1d2e3f4a5b6c"),
    "raw": b"\xff\x00bytes",
}


def _types(value: dict[str, Any]) -> dict[str, str]:
    return {k: type(v).__name__ for k, v in value.items()}


EXPECTED = _types(VALUES)


def test_codec_round_trips_kombus_types_and_refuses_the_rest() -> None:
    nested = {"list": [VALUES, (1, 2)], **VALUES}
    back = from_json(to_json(nested, "x"))
    assert back == {**nested, "list": [VALUES, [1, 2]]}
    assert _types(back["list"][0]) == EXPECTED
    for bad, named in [({1, 2}, "set"), (object(), "object"), (frozenset(), "frozenset")]:
        with pytest.raises(SerializationError, match=rf"step 's' result must be JSON.*'{named}'"):
            to_json({"v": bad}, "step 's' result")
    # a dict shaped like kombu's marker would come back as something else
    with pytest.raises(SerializationError, match="__type__"):
        to_json({"v": {"__type__": "decimal", "__value__": "1"}}, "x")
    assert from_json(to_json({"__type__": "mine", "other": 1}, "x")) == {
        "__type__": "mine",
        "other": 1,
    }


@pytest.mark.parametrize("stack", ["embedded", "redis-postgres"], indirect=True)
def test_types_survive_event_steps_replay_output_invoke_and_cel(stack: Stack) -> None:
    flow = make_flow(stack)

    @flow.function(id="child")
    def child(ctx):  # type: ignore[no-untyped-def]
        got = ctx.event.data
        return {"types": _types(got), "later": got["when"].replace(year=2025)}

    @flow.function(
        id="typed",
        trigger=event(
            "t/typed",
            # CEL sees a datetime as a timestamp, a date and a UUID as their text
            if_="event.data.when > timestamp('2024-01-01T00:00:00Z') "
            "&& event.data.day == '2024-05-01' "
            "&& event.data.uid == '0b6f7a4e-8c1d-4c3e-9f7a-1d2e3f4a5b6c' "
            "&& event.data.amount > 19.0",
        ),
        retries=3,
    )
    def typed(ctx):  # type: ignore[no-untyped-def]
        made = ctx.step.run("make", lambda: dict(ctx.event.data))
        first = ctx.step.run("first-look", lambda: _types(made))

        def flaky() -> str:
            if ctx.attempt == 0:
                raise RuntimeError("forced retry: the run replays from its memo")
            return "ok"

        ctx.step.run("flaky", flaky)
        invoked = ctx.step.invoke("call", function=child, data=made, timeout="1m")
        return {
            "event": _types(ctx.event.data),
            "first": first,
            "replay": _types(made),
            "made": made,
            "invoked": invoked,
        }

    with worker(flow):
        [eid] = flow.send(Event(name="t/typed", data=VALUES))
        run = wait_for_run(flow, event_id=eid, timeout=60)
        [ignored] = flow.send(Event(name="t/typed", data={**VALUES, "amount": Decimal("1")}))
    assert run.status == RunStatus.COMPLETED, run.error
    out = run.output
    assert out["event"] == EXPECTED
    assert out["first"] == EXPECTED  # the step's value on its first run
    assert out["replay"] == EXPECTED  # the same step read back from the memo
    assert out["made"] == VALUES and _types(out["made"]) == EXPECTED  # the run's output
    assert out["invoked"]["types"] == EXPECTED
    assert out["invoked"]["later"] == WHEN.replace(year=2025)
    assert [s.attempts for s in run.steps if s.id == "flaky"] == [2]
    assert flow.list_runs(event_id=ignored) == []  # the filter compared the Decimal
    assert flow.get_run(run.id).events[0].data == VALUES


@pytest.mark.parametrize("stack", ["embedded"], indirect=True)
def test_wait_match_on_a_datetime_and_refusals_name_step_and_type(stack: Stack) -> None:
    flow = make_flow(stack)

    @flow.function(id="waits", trigger=event("w/start"))
    def waits(ctx):  # type: ignore[no-untyped-def]
        got = ctx.step.wait_for_event("paid", event="w/paid", match="data.slot", timeout="1m")
        return None if got is None else got.data

    @flow.function(id="bad-result", trigger=event("w/bad"), retries=0)
    def bad_result(ctx):  # type: ignore[no-untyped-def]
        return ctx.step.run("sets", lambda: {"ids": {1, 2}})

    with worker(flow):
        [wid] = flow.send(Event(name="w/start", data={"slot": WHEN}))
        wait_for_run(flow, event_id=wid, status="waiting", timeout=60)
        # the same instant as text is another value: it does not match
        flow.send(Event(name="w/paid", data={"slot": WHEN.isoformat(), "n": 1}))
        flow.send(Event(name="w/paid", data={"slot": WHEN, "n": 2}))
        waited = wait_for_run(flow, event_id=wid, timeout=60)
        [bid] = flow.send(Event(name="w/bad"))
        bad = wait_for_run(flow, event_id=bid, timeout=60)
    assert waited.status == RunStatus.COMPLETED
    assert waited.output == {"slot": WHEN, "n": 2}
    assert bad.status == RunStatus.FAILED
    assert bad.error is not None
    assert "step 'sets' result must be JSON" in bad.error["message"]
    assert "'set'" in bad.error["message"]
    before = flow.list_runs(limit=1000)
    with pytest.raises(EventError, match=r"event #1 \('w/start'\) data must be JSON.*'set'"):
        flow.send([Event(name="w/start", data={"ok": 1}), Event(name="w/start", data={"s": {1}})])
    assert flow.list_runs(limit=1000) == before
