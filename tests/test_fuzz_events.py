"""Bad input (issue 12): a property-based fuzz of event names, ids, data and timestamps
through ``flow.send`` and HTTP ingest (FastAPI's test client). Every input is either
accepted and comes back exactly from its run (``run.events``), or refused with
``EventError`` / a 4xx with nothing recorded; never another exception, never a 500.

On SQLite and PostgreSQL (which refuses what SQLite keeps, a NUL for one); a trigger
on every name (``"*"``) makes each accepted event start a run, so "nothing recorded"
is "no new run"."""

from __future__ import annotations

import contextlib
import itertools
import json
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from services import fresh_postgres_url

from celeryflow import Event, EventError, Flow, event
from celeryflow.ingest.fastapi import router

# Values at and beyond int64, the widest integer the stores keep. Ints beyond Python's
# 4,300-digit int/str limit cannot be printed in a hypothesis report: they have their
# own test at the end.
EDGE_INTS = [2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64, 10**30]
JSON = {"Content-Type": "application/json"}

ints = st.integers() | st.sampled_from(EDGE_INTS)
scalars = (
    st.none() | st.booleans() | ints | st.floats() | st.text(max_size=20)
)  # floats include NaN and infinities, which JSON has no text for
data_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
names = st.text(max_size=300) | st.sampled_from(["", "a/b", "x" * 255, "x" * 256, "a\x00b"])
ts_values = st.none() | ints | st.integers(min_value=-(2**64), max_value=2**64)
serial = itertools.count()


def _id(text: str | None) -> str | None:
    # A unique prefix: an id seen before starts nothing new, and the round trip
    # would then find the older run.
    return None if text is None else f"{next(serial)}-{text}"


events = st.fixed_dictionaries(
    {
        "name": names,
        "data": st.dictionaries(st.text(max_size=10), data_values, max_size=5),
        "id": st.none() | st.text(max_size=80).map(_id),
        "ts": ts_values,
    }
)
FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def flow(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Flow]:
    directory: Path = tmp_path_factory.mktemp("fuzz")
    with contextlib.ExitStack() as stack:
        if request.param == "postgres":
            store = stack.enter_context(fresh_postgres_url())
        else:
            store = f"sqlite:///{directory}/store.db"
        app = Celery("fuzz", broker=f"celeryflow+sqlite:///{directory}/broker.db")
        app.conf.task_default_queue = f"fuzz-{uuid.uuid4().hex}"
        flow = Flow(app, store=store, auto_migrate=True)

        @flow.function(id="all", trigger=event("*"))
        def everything(ctx: Any) -> None:
            return None

        yield flow
        flow.store.engine.dispose()


@pytest.fixture(scope="module")
def client(flow: Flow) -> TestClient:
    api = FastAPI()
    api.include_router(router(flow, path="/events"))
    return TestClient(api, raise_server_exceptions=False)


def _runs(flow: Flow) -> str | None:
    """The newest run's id: every accepted event starts a run, so a refused one
    leaves it unchanged."""
    newest = flow.list_runs(limit=1)
    return newest[0].id if newest else None


def _expected(sent: dict[str, Any], event_id: str) -> dict[str, Any]:
    return {**sent, "id": event_id}


def _round_trip(flow: Flow, sent: dict[str, Any], event_id: str) -> None:
    runs = flow.list_runs(event_id=event_id)
    assert len(runs) == 1, f"accepted {sent!r} but found {len(runs)} runs"
    [stored] = runs[0].events
    got = stored.model_dump() if isinstance(stored, Event) else stored
    want = _expected(sent, event_id)
    if sent["ts"] is None:
        want["ts"] = got["ts"]  # filled in at send time
    assert got == want, f"sent {sent!r}, got back {got!r}"


@FUZZ
@given(sent=events)
def test_flow_send_accepts_exactly_or_refuses_with_event_error(
    flow: Flow, sent: dict[str, Any]
) -> None:
    before = _runs(flow)
    try:
        [event_id] = flow.send(dict(sent))
    except EventError:
        assert _runs(flow) == before, f"refused {sent!r} yet recorded a run"
        return
    _round_trip(flow, sent, event_id)


def _body(payload: dict[str, Any]) -> bytes:
    # The client side may print any int; the server keeps Python's default limit.
    limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        return json.dumps(payload, ensure_ascii=False).encode("utf-8", "surrogatepass")
    finally:
        sys.set_int_max_str_digits(limit)


@FUZZ
@given(sent=events)
def test_http_ingest_accepts_exactly_or_answers_4xx(
    flow: Flow, client: TestClient, sent: dict[str, Any]
) -> None:
    before = _runs(flow)
    response = client.post("/events", content=_body(sent), headers=JSON)
    assert response.status_code < 500, f"{response.status_code} for {sent!r}"
    if response.status_code >= 400:
        assert _runs(flow) == before, f"{response.status_code} for {sent!r} yet recorded a run"
        return
    [event_id] = response.json()["ids"]
    _round_trip(flow, sent, event_id)


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


# Inputs the fuzz does not draw, each refused on both paths: the event as a dict for
# flow.send, and its JSON text for ingest (the huge int written out by hand: Python
# will not print it).
EDGES: dict[str, tuple[dict[str, Any] | None, bytes]] = {
    "int-over-4300-digits": (
        {"name": "edge/int", "data": {"n": 10**5000}},
        b'{"name": "edge/int", "data": {"n": ' + b"9" * 5000 + b"}}",
    ),
    "nested-100-deep": (
        {"name": "edge/deep", "data": {"n": _nested(100)}},
        json.dumps({"name": "edge/deep", "data": {"n": _nested(100)}}).encode(),
    ),
}
LOOSE_TS = {"ts-true": True, "ts-numeric-string": "12", "ts-float-integral": 12.0}


def _refused_on(
    path: str, flow: Flow, client: TestClient, sent: dict[str, Any], body: bytes
) -> None:
    before = _runs(flow)
    if path == "send":
        with pytest.raises(EventError):
            flow.send(sent)
    else:
        response = client.post(
            "/events", content=body, headers={"Content-Type": "application/json"}
        )
        assert 400 <= response.status_code < 500, (response.status_code, response.text[:200])
    assert _runs(flow) == before


@pytest.mark.parametrize(
    "case, path",
    [
        ("int-over-4300-digits", "send"),
        ("int-over-4300-digits", "http"),
        ("nested-100-deep", "send"),
        ("nested-100-deep", "http"),
    ],
)
def test_edge_inputs_are_refused_not_a_crash(
    flow: Flow, client: TestClient, case: str, path: str
) -> None:
    sent, body = EDGES[case]
    _refused_on(path, flow, client, sent or {}, body)


@pytest.mark.parametrize("path", ["send", "http"])
@pytest.mark.parametrize("case", list(LOOSE_TS))
def test_a_ts_that_is_not_an_integer_is_refused(
    flow: Flow, client: TestClient, case: str, path: str
) -> None:
    sent = {"name": "edge/ts", "ts": LOOSE_TS[case]}
    _refused_on(path, flow, client, sent, json.dumps(sent).encode())
