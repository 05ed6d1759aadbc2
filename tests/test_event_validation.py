"""One validation for events (celeryflow.events.prepare_events), shared by flow.send and
HTTP ingest: every bad input is EventError / a 4xx with nothing recorded, on SQLite
and PostgreSQL; and a send of many events is linear and capped."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from celery import Celery

from celeryflow import Event, EventError, Flow, event
from celeryflow.events import MAX_DEPTH, MAX_EVENTS
from celeryflow.flowcontrol import Admission
from celeryflow.ingest import handle
from celeryflow.store.tables import events as events_table
from celeryflow.store.tables import runs as runs_table

JSON = {"Content-Type": "application/json"}
STORES = pytest.mark.parametrize("store_url", ["sqlite", "postgres", "mariadb"], indirect=True)


@pytest.fixture
def flow(store_url: str, tmp_path: Path) -> Iterator[Flow]:
    app = Celery(f"ev-{uuid.uuid4().hex[:6]}", broker=f"celeryflow+sqlite:///{tmp_path}/b.db")
    app.conf.task_default_queue = f"ev-{uuid.uuid4().hex}"
    flow = Flow(app, store=store_url, auto_migrate=True)

    @flow.function(id="any", trigger=event("v/*"))
    def anything(ctx):  # type: ignore[no-untyped-def]
        return None

    yield flow
    flow.store.engine.dispose()


def _recorded(flow: Flow) -> tuple[int, int]:
    with flow.store.engine.connect() as conn:
        count_events = conn.execute(sa.select(sa.func.count()).select_from(events_table))
        n_events = count_events.scalar_one()
        n_runs = conn.execute(sa.select(sa.func.count()).select_from(runs_table)).scalar_one()
    return n_events, n_runs


def _nested(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"d": value}
    return value


BAD_EVENTS: list[tuple[str, dict[str, Any], str]] = [
    ("ts at 2^63", {"name": "v/a", "ts": 2**63}, "ts: Input should be less than or equal"),
    ("ts below -2^63", {"name": "v/a", "ts": -(2**63) - 1}, "ts: Input should be greater"),
    ("NUL in name", {"name": "v/a\x00b"}, "name: Value error, must not contain control"),
    ("NUL in id", {"name": "v/a", "id": "id\x00"}, "id: Value error, must not contain control"),
    ("newline in id", {"name": "v/a", "id": "a\nb"}, "control characters"),
    ("lone surrogate", {"name": "v/\ud800"}, "name: Input should be a valid string"),
    ("huge integer", {"name": "v/a", "data": {"n": 10**5000}}, "integer has too many digits"),
    ("nested 500 deep", {"name": "v/a", "data": _nested(500)}, "nested too deeply (over 64"),
    ("nested 65 deep", {"name": "v/a", "data": _nested(MAX_DEPTH + 1)}, "nested too deeply"),
    ("a set", {"name": "v/a", "data": {"s": {1}}}, "'set' is not JSON-serializable"),
]


@STORES
@pytest.mark.parametrize(
    ("bad", "reason"), [b[1:] for b in BAD_EVENTS], ids=[b[0] for b in BAD_EVENTS]
)
def test_send_refuses_with_event_error_and_records_nothing(
    flow: Flow, bad: dict[str, Any], reason: str
) -> None:
    with pytest.raises(EventError, match=r"event #1\b") as raised:
        flow.send([{"name": "v/ok"}, bad])
    assert reason in str(raised.value)
    # an Event built without validation is checked all the same
    constructed = Event.model_construct(**{"data": {}, "id": None, "ts": None, **bad})
    with pytest.raises(EventError, match=r"event #0\b"):
        flow.send(constructed)
    assert _recorded(flow) == (0, 0)


@STORES
def test_limits_are_inclusive_and_values_round_trip(flow: Flow) -> None:
    ids = flow.send(
        [
            {"name": "v/a", "ts": 2**63 - 1, "data": {"n": 10**4000}},
            {"name": "v/b", "ts": -(2**63), "data": _nested(MAX_DEPTH)},
        ]
    )
    assert _recorded(flow) == (2, 2)
    first = flow.list_runs(event_id=ids[0])[0]
    assert first.events[0].ts == 2**63 - 1
    assert first.events[0].data == {"n": 10**4000}


@STORES
def test_ingest_answers_400_or_413_and_records_nothing(flow: Flow) -> None:
    digits = "9" * 4301
    body_ok = json.dumps({"name": "v/ok"}).encode()
    cases: list[tuple[str, bytes, dict[str, str], int, str]] = [
        (
            "huge integer",
            b'{"name": "v/a", "data": {"n": ' + digits.encode() + b"}}",
            {},
            400,
            "malformed JSON: Exceeds the limit (4300 digits)",
        ),
        ("ts at 2^63", json.dumps({"name": "v/a", "ts": 2**63}).encode(), {}, 400, "ts:"),
        ("NUL in name", b'{"name": "v/a\\u0000b"}', {}, 400, "name: Value error"),
        ("NUL in id", b'{"name": "v/a", "id": "x\\u0000"}', {}, 400, "id: Value error"),
        ("lone surrogate", b'{"name": "v/\\ud800"}', {}, 400, "valid string"),
        (
            "nested 100",
            json.dumps({"name": "v/a", "data": _nested(100)}).encode(),
            {},
            400,
            "nested too deeply",
        ),
        (
            "short body",
            body_ok,
            {"Content-Length": str(len(body_ok) + 10)},
            400,
            "body is 16 bytes, not the 26 of its Content-Length",
        ),
        (
            "marker dict",
            b'{"name": "v/a", "data": {"x": {"__type__": "decimal", "__value__": "1"}}}',
            {},
            400,
            "__type__",
        ),
        (
            "too many",
            json.dumps([{"name": "v/a"}] * (MAX_EVENTS + 1)).encode(),
            {},
            413,
            f"{MAX_EVENTS + 1:,} events, over the limit of {MAX_EVENTS:,}",
        ),
    ]
    for what, body, headers, status, reason in cases:
        got, answer = handle(flow, body, {**JSON, **headers})
        assert (got, reason in answer["error"]) == (status, True), (what, answer)
    assert _recorded(flow) == (0, 0)
    assert handle(flow, body_ok, {**JSON, "Content-Length": str(len(body_ok))})[0] == 200
    assert _recorded(flow) == (1, 1)


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_send_of_many_events_is_capped_and_linear(flow: Flow) -> None:
    with pytest.raises(EventError, match=f"at most {MAX_EVENTS:,} events at once, got"):
        flow.send([{"name": "v/a"}] * (MAX_EVENTS + 1))
    assert _recorded(flow) == (0, 0)

    def per_event(count: int) -> float:
        batch = [Event(name="w/none", data={"i": i}) for i in range(count)]
        start = time.perf_counter()
        flow.send(batch)
        return (time.perf_counter() - start) / count

    # runs of a limited function are what the quadratic ring check walked
    @flow.function(id="limited", trigger=event("w/none"), concurrency={"limit": 2})
    def limited(ctx):  # type: ignore[no-untyped-def]
        return None

    per_event(50)  # warm-up
    small, large = per_event(400), per_event(4000)
    # linear: the time per event does not grow with the batch (quadratic was ~10x)
    assert large < small * 3, (small, large)
    assert not Admission()  # a plain run takes the plain path


@STORES
def test_ids_repeated_within_a_send_and_across_sends_start_one_run(flow: Flow) -> None:
    # a list is inserted in one executemany: its dedup must match one-by-one inserts
    flow.send([{"name": "v/a", "id": "x"}, {"name": "v/b", "id": "x"}, {"name": "v/c", "id": "y"}])
    assert _recorded(flow) == (2, 2)
    flow.send([{"name": "v/a", "id": "y"}, {"name": "v/a", "id": "z"}, {"name": "v/a", "id": "z"}])
    assert _recorded(flow) == (3, 3)
    assert [r.event_id for r in flow.list_runs(event_id="x")] == ["x"]
    assert flow.list_runs(event_id="x")[0].events[0].name == "v/a"  # the first one kept
