"""Bad input gets a clear error naming what was wrong, and nothing is written."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from celery import Celery

from celeryflow import ConfigError, Event, EventError, ExpressionError, Flow, event
from celeryflow.durations import parse_datetime, parse_duration


def _flow(tmp_path: Path) -> Flow:
    app = Celery("v", broker=f"celeryflow+sqlite:///{tmp_path}/broker.db")
    return Flow(app, store=f"sqlite:///{tmp_path}/store.db")


def test_invalid_cel_fails_at_decoration_naming_the_function(tmp_path: Path) -> None:
    flow = _flow(tmp_path)
    with pytest.raises(ExpressionError, match=r"function 'bad-filter' trigger if_.*event.data.x >"):

        @flow.function(id="bad-filter", trigger=event("a/b", if_="event.data.x >"))
        def bad(ctx):  # type: ignore[no-untyped-def]
            pass

    assert "bad-filter" not in flow.functions


def test_duplicate_function_id_fails_at_decoration(tmp_path: Path) -> None:
    flow = _flow(tmp_path)

    @flow.function(id="same", trigger=event("a/b"))
    def first(ctx):  # type: ignore[no-untyped-def]
        pass

    with pytest.raises(ConfigError, match="'same' is already registered"):

        @flow.function(id="same", trigger=event("a/c"))
        def second(ctx):  # type: ignore[no-untyped-def]
            pass


def test_bad_function_config_is_named(tmp_path: Path) -> None:
    flow = _flow(tmp_path)
    with pytest.raises(ConfigError, match=r"'neg'.*retries"):
        flow.function(id="neg", trigger=event("a/b"), retries=-1)(lambda ctx: None)
    with pytest.raises(ConfigError, match="trigger must be event"):
        flow.function(id="t", trigger="a/b")(lambda ctx: None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="invalid Flow settings"):
        Flow(Celery("x2", broker="memory://"), store=f"sqlite:///{tmp_path}/s2.db", lease="soon")


def test_non_json_event_data_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    flow = _flow(tmp_path)

    @flow.function(id="f", trigger=event("a/b"))
    def f(ctx):  # type: ignore[no-untyped-def]
        pass

    good = Event(name="a/b", data={"ok": 1})
    bad = Event(name="a/b", data={"tags": {"a", "b"}})
    with pytest.raises(EventError, match=r"event #1 \('a/b'\) data must be JSON.*'set'"):
        flow.send([good, bad])
    with pytest.raises(EventError, match=r"event #0 is invalid.*name"):
        flow.send({"data": {}})
    with pytest.raises(EventError, match="at least one event"):
        flow.send([])
    assert flow.list_runs() == []
    with pytest.raises(EventError, match=r"nan|NaN"):
        flow.send(Event(name="a/b", data={"x": float("nan")}))
    deep: dict[str, object] = {}
    for _ in range(5000):
        deep = {"d": deep}
    with pytest.raises(EventError, match="nested too deeply"):
        flow.send({"name": "a/b", "data": deep})
    assert flow.list_runs() == []


def test_durations_in_every_form() -> None:
    assert parse_duration("3 days") == timedelta(days=3)
    assert parse_duration("1h30m") == timedelta(hours=1, minutes=30)
    assert parse_duration("30s") == timedelta(seconds=30)
    assert parse_duration("250ms") == timedelta(milliseconds=250)
    assert parse_duration(90) == timedelta(seconds=90)
    assert parse_duration(timedelta(minutes=2)) == timedelta(minutes=2)
    for bad in ("3 fortnights", "soon", "", -1, True, [1]):
        with pytest.raises(ConfigError):
            parse_duration(bad, "step.sleep('x')")  # type: ignore[arg-type]
    assert parse_datetime("2030-01-01T09:00:00Z") == datetime(2030, 1, 1, 9, tzinfo=timezone.utc)
    with pytest.raises(ConfigError, match="ISO-8601"):
        parse_datetime("next tuesday")


def test_beat_entry_is_added_beside_the_users_schedule(tmp_path: Path) -> None:
    app = Celery("beat", broker="memory://")
    app.conf.beat_schedule = {"mine": {"task": "mine", "schedule": 60.0}}
    Flow(app, store=f"sqlite:///{tmp_path}/store.db", reconcile_interval="7s")
    app.finalize()
    assert app.conf.beat_schedule["mine"] == {"task": "mine", "schedule": 60.0}
    assert app.conf.beat_schedule["celeryflow.reconcile"]["schedule"] == 7.0
    assert {"celeryflow.run", "celeryflow.reconcile"} <= set(app.tasks)


def test_bad_flow_control_fails_at_decoration_naming_it(tmp_path: Path) -> None:
    flow = _flow(tmp_path)

    def define(**control: object) -> None:
        flow.function(id="fc", trigger=event("a/b"), **control)(lambda ctx: None)  # type: ignore[arg-type]

    with pytest.raises(ConfigError, match=r"'fc'.*concurrency.*limit"):
        define(concurrency={"limit": 0})
    with pytest.raises(ConfigError, match=r"'fc'.*at most 2 concurrency"):
        define(concurrency=[{"limit": 1}, {"limit": 2}, {"limit": 3}])
    with pytest.raises(ExpressionError, match=r"'fc' concurrency\[0\]\.key"):
        define(concurrency={"limit": 1, "key": "event.data."})
    with pytest.raises(ConfigError, match=r"'fc'.*throttle.*cannot read 'soon'"):
        define(throttle={"limit": 1, "period": "soon"})
    with pytest.raises(ConfigError, match=r"'fc'.*rate_limit.*period"):
        define(rate_limit={"limit": 1})
    with pytest.raises(ConfigError, match=r"'fc'.*debounce and batch_events"):
        define(debounce={"period": "1s"}, batch_events={"max_size": 2, "timeout": "1s"})
    with pytest.raises(ConfigError, match=r"'fc'.*singleton.*mode"):
        define(singleton={"mode": "replace"})
    with pytest.raises(ExpressionError, match=r"'fc' priority\.run"):
        define(priority={"run": "event.data.plan =="})
    with pytest.raises(ConfigError, match=r"'fc'.*batch_events.size: Extra inputs"):
        define(batch_events={"max_size": 2, "timeout": "1s", "size": 3})
    assert "fc" not in flow.functions
    define(  # every form a user may write is accepted
        concurrency=[{"limit": 2, "key": "event.data.c"}, {"limit": 5}],
        throttle={"limit": 10, "period": 60, "burst": 2},
        rate_limit={"limit": 5, "period": "1 hour", "key": "event.data.u"},
        batch_events={"max_size": 10, "timeout": "5s"},
        priority={"run": "event.data.vip ? 120 : 0"},
        idempotency="event.data.order_id",
        singleton={"key": "event.data.u", "mode": "cancel"},
    )
    assert flow.functions["fc"].control.throttle is not None
