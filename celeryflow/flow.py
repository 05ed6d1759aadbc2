"""Flow: binds a Celery app and a store, registers functions, sends events."""

from __future__ import annotations

import hashlib
import logging
import os
import random
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from celery import Celery
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from . import oncommit, tasks
from .durations import Duration, parse_duration, utcnow
from .engine import Engine
from .errors import CeleryflowError, ConfigError, describe
from .events import (
    INVOKED_EVENT,
    SCHEDULED_EVENT,
    Event,
    EventTrigger,
    condition_holds,
    prepare_events,
)
from .flowcontrol import (
    Batch,
    Concurrency,
    Debounce,
    Priority,
    RateLimit,
    Singleton,
    Throttle,
)
from .functions import DEFAULT_RETRIES, CancelOn, FlowFunction, Registry, Timeouts
from .hooks import Hook, Hooks
from .legacy import RunHandle, subscriber
from .outcomes import task_outcome
from .planning import Planner
from .runs import Run, RunStatus
from .schedule import CATCH_UP, CronTrigger
from .store import EVENT_DEDUP_WINDOW, PlannedRun, Store
from .store.admin import cancellable_statuses
from .store.cron import fire_slot
from .store.database import sqlite_path
from .store.rows import RunRow

__all__ = ["DEFAULT_STORE", "Flow", "FlowSettings"]

log = logging.getLogger("celeryflow.flow")
DEFAULT_STORE = "sqlite:///celeryflow.db"


class FlowSettings(BaseModel):
    """Knobs of the engine; durations take any form ``step.sleep`` takes."""

    model_config = ConfigDict(extra="forbid")

    queue: str | None = None  # the Celery queue for celeryflow's own messages
    recovery_queue: str | None = None  # runs whose executor died; None: "<queue>.recovery"
    lease: timedelta = timedelta(seconds=20)  # how long a silent executor keeps a run
    reconcile_interval: timedelta = timedelta(seconds=5)
    redeliver_after: timedelta = timedelta(seconds=30)  # ring again if nothing happened
    eta_horizon: timedelta = timedelta(minutes=5)  # longer waits: the reconciler wakes them
    # how long ended runs (and events no run refers to) are kept; None keeps everything
    retention: timedelta | None = timedelta(days=7)
    prune_interval: timedelta = timedelta(minutes=1)  # store-wide, whatever the workers
    dedup_window: timedelta = EVENT_DEDUP_WINDOW  # an event id seen within it starts nothing
    retry_base: timedelta = timedelta(seconds=1)
    retry_max: timedelta = timedelta(hours=1)
    tick_interval: timedelta = timedelta(seconds=1)  # the longest cron look-away (workers, beat)
    reconcile_in_worker: bool = True
    # opening a store connection, and one statement (None: no limit); see README
    connect_timeout: timedelta | None = timedelta(seconds=10)
    statement_timeout: timedelta | None = timedelta(seconds=30)
    # celeryflow.run's own Celery time limit (see tasks.run_time_limits); None: the
    # app-wide task_time_limit / task_soft_time_limit apply, as to any task
    run_time_limit: timedelta | None = None
    extra: dict[str, Any] = Field(default_factory=dict)

    @field_validator(
        "lease",
        "reconcile_interval",
        "redeliver_after",
        "eta_horizon",
        "retry_base",
        "retry_max",
        "tick_interval",
        "prune_interval",
        "dedup_window",
        mode="before",
    )
    @classmethod
    def _duration(cls, value: Duration) -> timedelta:
        return parse_duration(value, "Flow setting")

    @field_validator("retention", mode="before")
    @classmethod
    def _retention(cls, value: Duration | None) -> timedelta | None:
        return None if value is None else parse_duration(value, "Flow setting retention")

    @field_validator("connect_timeout", "statement_timeout", mode="before")
    @classmethod
    def _timeout(cls, value: Duration | None) -> timedelta | None:
        return None if value is None else parse_duration(value, "Flow setting")

    @field_validator("run_time_limit", mode="before")
    @classmethod
    def _limit(cls, value: Duration | None) -> timedelta | None:
        if value is None:
            return None
        limit = parse_duration(value, "run_time_limit")
        if limit < timedelta(seconds=1):
            raise ValueError("run_time_limit must be at least 1 second")
        return limit


def default_broker_for(store_url: str) -> str | None:
    """The embedded broker beside a SQLite store: its own file, because SQLite has
    one writer at a time per file and doorbells should not queue behind steps."""
    path = sqlite_path(store_url)
    if path is None or path == ":memory:":
        return None
    base = Path(path)
    return f"celeryflow+sqlite:///{base.with_name(base.stem + '-broker.db')}"


class Flow:
    """Durable functions on an existing Celery app.

    ``store`` is a SQLAlchemy URL; it defaults to ``$CELERYFLOW_STORE``, else
    ``sqlite:///celeryflow.db``. If the app has no broker configured and the store
    is SQLite, the app gets the embedded SQLite broker (``celeryflow+sqlite://``)
    beside the store, so a first try needs no service at all.

    ``hooks``: :class:`celeryflow.Hook` instances told as events and runs move (see
    :mod:`celeryflow.hooks`); more can be added with :meth:`add_hook`.
    """

    def __init__(
        self,
        app: Celery,
        store: str | None = None,
        *,
        auto_migrate: bool | None = None,
        hooks: Iterable[Hook] = (),
        **settings: Any,
    ) -> None:
        try:
            self.settings = FlowSettings(**settings)
        except ValidationError as exc:
            raise ConfigError(f"invalid Flow settings: {describe(exc)}") from None
        self.app = app
        self.hooks = Hooks(hooks)
        url = store or os.environ.get("CELERYFLOW_STORE") or DEFAULT_STORE
        self.store = Store(
            url,
            auto_migrate=auto_migrate,
            connect_timeout=self.settings.connect_timeout,
            statement_timeout=self.settings.statement_timeout,
        )
        self.store.dedup_window = self.settings.dedup_window
        if not tasks.broker_configured(app):
            broker = default_broker_for(url)
            if broker is not None:
                tasks.set_default_broker(app, broker)
        self.registry = Registry()
        self.functions = self.registry.functions  # by id
        self.limited_functions = self.registry.limited
        self.planner = Planner(self.store, self.settings, self.functions, self.hooks.carry)
        self.doorbell = tasks.install(self)
        self.engine = Engine(
            store=self.store,
            doorbell=self.doorbell,
            registry=self.registry,
            settings=self.settings,
            planner=self.planner,
            hooks=self.hooks,
        )

    def add_hook(self, hook: Hook) -> None:
        """Register ``hook`` after those given so far (see :mod:`celeryflow.hooks`)."""
        self.hooks.add(hook)

    # -- defining functions -------------------------------------------------------------

    def function(
        self,
        *,
        id: str | None = None,
        trigger: EventTrigger | CronTrigger | list[EventTrigger | CronTrigger] | None = None,
        retries: int = DEFAULT_RETRIES,
        retry_delay: Duration | None = None,
        cancel_on: list[CancelOn | dict[str, Any]] | CancelOn | dict[str, Any] | None = None,
        timeouts: Timeouts | dict[str, Any] | None = None,
        on_failure: FlowFunction | str | None = None,
        concurrency: Concurrency
        | dict[str, Any]
        | list[Concurrency | dict[str, Any]]
        | None = None,
        throttle: Throttle | dict[str, Any] | None = None,
        rate_limit: RateLimit | dict[str, Any] | None = None,
        debounce: Debounce | dict[str, Any] | None = None,
        batch_events: Batch | dict[str, Any] | None = None,
        priority: Priority | dict[str, Any] | None = None,
        idempotency: str | None = None,
        singleton: Singleton | dict[str, Any] | None = None,
        params: list[str] | None = None,
    ) -> Callable[[Callable[..., Any]], FlowFunction]:
        """Register a durable function: ``@flow.function(id=..., trigger=event(...))``.

        Flow control (``concurrency`` ... ``singleton``) follows Inngest; see
        :mod:`celeryflow.flowcontrol`. Each takes its model or a plain dict."""

        def register(fn: Callable[..., Any]) -> FlowFunction:
            function = FlowFunction.build(
                self,
                fn,
                id=id,
                trigger=trigger,
                retries=retries,
                retry_delay=retry_delay,
                cancel_on=cancel_on,
                timeouts=timeouts,
                on_failure=on_failure.id if isinstance(on_failure, FlowFunction) else on_failure,
                concurrency=concurrency,
                throttle=throttle,
                rate_limit=rate_limit,
                debounce=debounce,
                batch_events=batch_events,
                priority=priority,
                idempotency=idempotency,
                singleton=singleton,
                params=params,
            )
            self.registry.add(function)
            return function

        return register

    # -- events -------------------------------------------------------------------------

    def send(
        self,
        events: Event | dict[str, Any] | list[Event | dict[str, Any]],
        *,
        on_commit: bool | oncommit.Defer = False,
    ) -> list[str]:
        """Record events and start the runs they trigger; returns the event ids.

        An id already seen within ``dedup_window`` (24 h) starts nothing new; within one list the
        first event with an id wins and the later ones are deduplicated, though their
        ids are still returned (one per event given, in order). Like calling a Celery
        task, the sending process must have imported the functions (directly or by
        ``app.autodiscover_tasks``); the events are validated before anything is written.

        ``on_commit=True`` records them when the caller's database transaction commits
        (at once outside one, never if it rolls back): Django's, once
        ``celeryflow.django`` is imported; or pass the hook (``on_commit=fn``, called
        with a callable). The ids are returned at once.
        """
        prepared = prepare_events(events)
        if on_commit is not False:
            defer = oncommit.resolve(on_commit)
            checked: list[Event | dict[str, Any]] = [*prepared]

            def record() -> None:
                self.send(checked)

            defer(record)
            return [ev.id for ev in prepared if ev.id is not None]
        now = utcnow()
        # Runs are planned with the functions this process knows; finalizing the app
        # runs Celery's autodiscovery first, exactly as calling a task would.
        tasks.finalize(self.app)
        functions = list(self.functions.values())
        # the store picks the path (the commonest send is one statement where it can)
        planned: list[PlannedRun] = []

        def plan(ev: Event) -> list[PlannedRun]:
            runs = self.planner.plan_runs(ev, functions, now)
            planned.extend(runs)
            return runs

        recorded = self.store.record_events(
            prepared,
            plan,
            now,
            resume_due=now + self.settings.redeliver_after,
            condition_holds=condition_holds,
        )
        self.doorbell.ring(
            [*self.planner.ring_for_slots(recorded.created, planned, now), *recorded.resumed],
            function_id={p.row["id"]: p.row["function_id"] for p in planned},
        )
        self.hooks.announce(prepared, [p.row for p in planned], recorded.created)
        return [ev.id for ev in prepared if ev.id is not None]

    def start(
        self, function: FlowFunction, data: dict[str, Any], *, not_before: datetime | None = None
    ) -> RunHandle:
        """Start one run of ``function`` with ``data`` as its event's data (the event,
        ``celeryflow/function.invoked``, is recorded and triggers nothing else); its
        flow control applies. ``not_before`` delays the start (countdown, eta)."""
        [ev] = prepare_events([Event(name=INVOKED_EVENT, data=data)])
        now = utcnow()

        rows: list[RunRow] = []

        def plan(e: Event) -> list[PlannedRun]:
            planned = self.planner.plan_for(function, e, {"event": e.model_dump()}, now)
            if not_before is not None and not_before > now:
                row = planned.row
                row["wake_at"] = not_before
                row["due_at"] = not_before + self.settings.redeliver_after
            rows.append(planned.row)
            return [planned]

        recorded = self.store.record_events(
            [ev],
            plan,
            now,
            resume_due=now + self.settings.redeliver_after,
            condition_holds=condition_holds,
        )
        self.doorbell.ring(recorded.created, function_id=function.id)
        self.hooks.announce([ev], rows, recorded.created)
        runs = self.store.list_runs(event_id=ev.id, limit=1)
        if not runs:  # it joined a debounced or batched run, which has another event
            raise CeleryflowError(
                f"{function.id}: the call joined a pending debounced or batched run; "
                "there is no run of its own to return"
            )
        return RunHandle(self, runs[0].id)

    def subscribe(
        self,
        task: Any,
        *,
        trigger: EventTrigger | CronTrigger | list[EventTrigger | CronTrigger],
        kwargs: Callable[[Event], dict[str, Any]] | None = None,
        id: str | None = None,
        **options: Any,
    ) -> FlowFunction:
        """Call the legacy Celery ``task`` for each triggering event, with the event's
        data as keyword arguments (or what ``kwargs(event)`` returns), on its usual
        queue. Recorded as runs of a function (id ``task:<task name>``), so dedup,
        flow control, retries and the run history apply; ``options`` are those of
        :meth:`function`."""
        name = getattr(task, "name", None)
        if not isinstance(name, str):
            raise ConfigError(f"subscribe() needs a Celery task, got {task!r}")
        return self.function(id=id or f"task:{name}", trigger=trigger, **options)(
            subscriber(task, kwargs)
        )

    def resolve_task_step(self, run_id: str, key: str, outcome: dict[str, Any]) -> str:
        """A legacy task invoked as a step ended: resume the run (the callbacks in
        tasks.py call this). Returns "resolved", "early" or "gone"."""
        output, error = task_outcome(outcome)
        now = utcnow()
        result = self.store.resolve_step(
            run_id,
            key,
            output=output,
            error=error,
            now=now,
            resume_due=now + self.settings.redeliver_after,
        )
        if result == "resolved":
            self.doorbell.ring([run_id])
        return result

    def tick(self, now: datetime | None = None, *, since: datetime | None = None) -> list[str]:
        """Fire the cron slots that are due (each once, whatever the number of workers
        and beats); returns the new run ids. Called by every worker's reconciler thread
        and by the ``celeryflow.tick`` beat entry. ``since``: skip slots at or before
        it (the caller handled them), so a look between slots costs no query."""
        now = now or utcnow()
        created: dict[str, str] = {}
        jittered: dict[str, tuple[str, datetime]] = {}
        fired: list[tuple[Event, RunRow]] = []
        paused: frozenset[str] | None = None
        for fn in list(self.functions.values()):
            for trigger in fn.crons:
                slot = trigger.latest_slot(now)
                if since is not None and slot <= since:
                    continue
                if paused is None:
                    paused = self.store.paused_function_ids()
                if fn.id in paused:  # its slot is recorded, without a run
                    fire_slot(self.store, fn.id, slot, now, None, CATCH_UP)
                    continue
                stamp = slot.isoformat()
                ev = Event(
                    name=SCHEDULED_EVENT,
                    id=hashlib.sha256(f"cron:{fn.id}:{stamp}".encode()).hexdigest()[:32],
                    ts=int(now.timestamp() * 1000),
                    data={"cron": trigger.expression, "scheduled_at": stamp, "function_id": fn.id},
                )
                run = self.planner.new_run(fn.id, [ev], now)
                start = None
                if trigger.jitter is not None:
                    start = now + trigger.jitter * random.random()
                    run["wake_at"] = start
                    run["due_at"] = start + self.settings.redeliver_after
                if fire_slot(self.store, fn.id, slot, now, run, CATCH_UP):
                    log.debug("cron: %s fired its %s slot (run %s)", fn.id, stamp, run["id"])
                    fired.append((ev, run))
                    if start is None:
                        created[str(run["id"])] = fn.id
                    else:
                        jittered[str(run["id"])] = (fn.id, start)
        self.doorbell.ring(list(created), function_id=created)
        for run_id, (function_id, start) in jittered.items():
            self.doorbell.ring([run_id], start, function_id=function_id)
        self.hooks.announce([e for e, _ in fired], [r for _, r in fired], [*created, *jittered])
        return [*created, *jittered]

    def has_crons(self) -> bool:
        return any(fn.crons for fn in self.functions.values())

    # -- runs ---------------------------------------------------------------------------

    def get_run(self, run_id: str) -> Run:
        """The run with its steps; raises RunNotFound."""
        return self.store.get_run(run_id)

    def list_runs(
        self,
        *,
        event_id: str | None = None,
        function_id: str | None = None,
        status: RunStatus | str | None = None,
        limit: int = 100,
    ) -> list[Run]:
        """Runs, newest first (without their steps; use get_run for those)."""
        return self.store.list_runs(
            event_id=event_id, function_id=function_id, status=status, limit=limit
        )

    def cancel(self, run_id: str, *, keep_children: bool = False) -> bool:
        """Cancel a run: a parked one at once, a running one at its next step, and
        the runs it started that are still going (its ``step.invoke`` children and
        ``step.parallel`` branches, theirs in turn) unless ``keep_children``.
        False if it had already ended."""
        return self.store.cancel(run_id, utcnow(), children=not keep_children)

    def cancel_runs(
        self,
        *,
        function_id: str,
        status: RunStatus | str | list[RunStatus | str] | None = None,
        dry_run: bool = False,
        keep_children: bool = False,
    ) -> int:
        """Cancel every run of ``function_id`` that has not ended (or only those in
        ``status``), as :meth:`cancel` does each (with their children unless
        ``keep_children``); returns how many runs of ``function_id``. The function
        need not be defined any more: this retires the runs of a removed one.
        ``dry_run`` counts them instead."""
        statuses = cancellable_statuses(status)
        if dry_run:
            return self.store.count_runs(function_id, statuses)
        return self.store.cancel_runs(function_id, statuses, utcnow(), children=not keep_children)

    def replay(self, run_id: str) -> str:
        """Start a new run of the same function with the same event(s)."""
        old = self.store.get_run(run_id)
        now = utcnow()
        row = self.planner.new_run(old.function_id, list(old.events), now)
        self.store.insert_runs([row])
        self.doorbell.ring([row["id"]], function_id=old.function_id)
        self.hooks.announce([], [row], [str(row["id"])])
        return str(row["id"])
