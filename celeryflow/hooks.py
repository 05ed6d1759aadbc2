"""Hooks: code of the user's (or a plugin's) called as events and runs move, in the
manner of dramatiq's middleware. Subclass :class:`Hook`, override what you need, and
register it: ``Flow(app, hooks=[MyHook()])`` or ``flow.add_hook(MyHook())``.

Each method gets one small frozen dataclass. The rules every method shares:

* **Synchronous, after the commit.** A hook runs in the thread that made the change,
  after the store committed it (never inside a store transaction), so what it is
  told has happened. ``step_finished`` of a completed step is the one exception: the
  step's result rides in the run's next write (DESIGN section 4), so the hook runs
  when the step's code returned, just before that write.
* **Never breaks a run.** A hook that raises is logged (``celeryflow.hooks``, with
  the traceback) and the next hook is called; the run goes on as if nothing happened.
  A slow hook is slow for the run: hand heavy work to a thread or a queue.
* **Where it runs.** ``event_received`` and ``run_queued`` run in the process that
  recorded the event or the run (the sender, or the worker child whose run sent an
  event, invoked a function or failed). Every ``run_*`` hook after that and every
  ``step_*`` hook run in the worker child executing the run, so a plugin sees
  ``run_started`` and its end (``run_parked`` or ``run_finished``), and
  ``step_started`` and its end (``step_finished`` or ``step_retried``), as pairs in
  one process and one thread. Register hooks where the functions are defined (the
  app module), so senders and workers both have them.

Each execution of a run is ``run_woken`` (only if it executed before), then
``run_started``, then ``memo_loaded``, then exactly one of ``run_parked`` (it left the
worker and will come back) or ``run_finished`` (it ended).

**Every run ends in ``run_finished`` exactly once**, wherever it was cancelled from
(``flow.cancel``, the CLI, the dashboard, ``cancel_on``, a ``Timeouts`` expiry, a
cancelled parent). The process that cancels does not tell the hooks: a CLI or a
dashboard is not where the metrics are scraped. The cancel leaves a mark on the run
(its ``due_at``) and whoever clears the mark tells them: the executor that finds its
run cancelled (it tells ``run_finished`` as before), else the reconciler (a worker's
main process, or beat), at its next pass for a run cancelled while parked, after the
lease for a run whose executor went silent. A run cancelled while its execution is
ending may get ``run_parked`` (``lost``) from that execution and ``run_finished``
from the reconciler. ``RunFinished.executed`` is False when no execution ended there.

**Carrying context.** :meth:`Hook.carry` is the one method that returns something:
called where a run is created (the sender's ``flow.send``, or the parent run's
execution for an invoke or a parallel branch), before it is recorded. The strings it
returns are stored with the run and given back to every execution as
``RunInfo.context``: how a tracing plugin carries the sender's trace into the run
and its children (``celeryflow.tracing``).

**Changing the replayed outputs.** :meth:`Hook.memo_loaded` is the one method whose
argument may be changed: ``info.outputs`` maps each completed step of the run to its
recorded output, and what a hook puts there (before the function reaches that step)
is what the replay returns; the store is not changed. It is how a decrypting plugin
(the Inngest facade's middleware) shows a run the plain values of steps it stored
encrypted.

``reconciled`` runs in the process of the reconciler (a worker's main process, or
beat) after each pass, with what it rang.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .codec import from_json, to_json
from .errors import ConfigError
from .events import Event
from .runs import StepStatus

__all__ = [
    "EventReceived",
    "Hook",
    "Hooks",
    "MemoLoaded",
    "Reconciled",
    "RunFinished",
    "RunInfo",
    "RunParked",
    "RunQueued",
    "RunStarted",
    "RunWoken",
    "StepFinished",
    "StepInfo",
    "StepOutputs",
    "StepRetried",
    "StepStarted",
    "carried_context",
]

log = logging.getLogger("celeryflow.hooks")


@dataclass(frozen=True)
class EventReceived:
    """An event was recorded (``flow.send``, ``step.send_event``, ingest). An event
    whose id was seen within ``dedup_window`` is reported too (it starts nothing)."""

    event: Event


@dataclass(frozen=True)
class RunQueued:
    """A run was created. ``wake_at``: it starts no earlier (throttle, ``not_before``);
    ``parent_run_id``: the run that invoked it, or whose ``step.parallel`` branch it is."""

    function_id: str
    run_id: str
    event_id: str | None
    wake_at: datetime | None = None
    parent_run_id: str | None = None


@dataclass(frozen=True)
class RunInfo:
    """What every hook about one execution of a run is told. ``attempt`` is the
    function body's (0 on the first try); ``event`` the run's first event;
    ``context`` what the hooks' :meth:`Hook.carry` returned where the run was
    created; ``parent_run_id`` the run that invoked it (or whose parallel branch it
    is); ``created_at`` when the run was created (UTC)."""

    function_id: str
    run_id: str
    attempt: int
    event: Event
    context: dict[str, str] = field(default_factory=dict)
    parent_run_id: str | None = None
    created_at: datetime | None = None


@dataclass(frozen=True)
class RunWoken(RunInfo):
    """A run that executed before is claimed again: after a park (its sleep ended, its
    event or child arrived, its wait timed out, its retry back-off passed) or after
    its executor was lost. ``run_started`` follows at once."""


@dataclass(frozen=True)
class RunStarted(RunInfo):
    """An executor claimed the run and is about to call the function (replaying the
    recorded steps first). ``first``: the run's first execution."""

    first: bool = True


class StepOutputs(MutableMapping[str, Any]):
    """The recorded outputs of a run's completed steps, by step key (``id``, or
    ``id:N`` for a repeat), over the execution's memo: a value set here is what the
    replay of that step returns in this execution (it must be JSON, as a step's
    result is). The store keeps what was recorded."""

    def __init__(self, memo: dict[str, dict[str, Any]]) -> None:
        self._memo = memo

    def _settled(self, key: str) -> dict[str, Any]:
        row = self._memo.get(key)
        if row is None or row["status"] != StepStatus.COMPLETED or row["output"] is None:
            raise KeyError(key)
        return row

    def __getitem__(self, key: str) -> Any:
        return from_json(self._settled(key)["output"])

    def __setitem__(self, key: str, value: Any) -> None:
        row = self._settled(key)
        # a copy: the row may be shared with the claim, which stays as read
        self._memo[key] = {**row, "output": to_json(value, f"step {key!r} output")}

    def __delitem__(self, key: str) -> None:
        raise TypeError("a recorded step cannot be removed from the replay")

    def __iter__(self) -> Iterator[str]:
        memo = self._memo
        return iter(
            [k for k in memo if memo[k]["status"] == StepStatus.COMPLETED and memo[k]["output"]]
        )

    def __len__(self) -> int:
        return sum(1 for _ in self)


@dataclass(frozen=True)
class MemoLoaded(RunInfo):
    """The steps this execution replays were loaded: ``outputs`` (mutable, see
    :class:`StepOutputs`), a parallel branch's including its parent's steps before
    the parallel step."""

    outputs: StepOutputs = field(default_factory=lambda: StepOutputs({}))


@dataclass(frozen=True)
class RunParked(RunInfo):
    """The execution ended without ending the run. ``reason``: ``sleep``, ``wait``
    (an event), ``invoke`` (a function), ``task`` (a legacy task), ``parallel``,
    ``retry`` (a retry back-off of a step or of the body), ``lost`` (its lease was
    taken over) or ``released`` (the store or broker failed under it, or it was
    handed back for a concurrency slot). ``step_id`` is the parking step;
    ``wake_at`` when it is woken at the latest (None: by what it waits for alone);
    ``duration``: seconds this execution took."""

    reason: str = "sleep"
    step_id: str | None = None
    wake_at: datetime | None = None
    duration: float = 0.0


@dataclass(frozen=True)
class RunFinished(RunInfo):
    """The run ended: ``status`` is ``completed``, ``failed``, ``cancelled`` (found
    cancelled, or past its ``Timeouts``) or ``skipped``; ``error`` the failure's
    exception type name; ``duration`` seconds of this last execution. ``executed``
    is False when no execution ends here: a run skipped by flow control, or
    cancelled while parked (told by the reconciler, see "Where it runs")."""

    status: str = "completed"
    error: str | None = None
    duration: float = 0.0
    executed: bool = True


@dataclass(frozen=True)
class StepInfo:
    """One ``step.run`` call. ``step_id`` is the id passed, ``key`` its memo key
    (``id:N`` for the N-th repeat), ``index`` its position in the execution,
    ``attempt`` this attempt (1 on the first)."""

    function_id: str
    run_id: str
    step_id: str
    key: str
    index: int
    attempt: int


@dataclass(frozen=True)
class StepStarted(StepInfo):
    """The step's code is about to run (a memoized step fires nothing)."""


@dataclass(frozen=True)
class StepFinished(StepInfo):
    """The step's code ended: ``status`` is ``completed``, or ``failed`` for good
    (its error is raised into the function as ``StepError``)."""

    status: str = "completed"
    duration: float = 0.0
    error: str | None = None


@dataclass(frozen=True)
class StepRetried(StepInfo):
    """The attempt failed and the step will be tried again at ``wake_at`` (the run
    parks ``queued`` until then: ``run_parked`` follows with reason ``retry``)."""

    error: str = ""
    wake_at: datetime | None = None
    duration: float = 0.0


@dataclass(frozen=True)
class Reconciled:
    """One reconciler pass: ``rung`` overdue runs rung again, of which ``recovered``
    were left running by a lost executor (their lease lapsed); ``slots`` runs rung
    because a concurrency slot was free."""

    rung: int = 0
    recovered: int = 0
    slots: int = 0


def _first_event(row: Mapping[str, Any]) -> Event | None:
    recorded = from_json(row["events"]) if row.get("events") else None
    if not isinstance(recorded, list) or not recorded:
        return None
    return Event.model_validate(recorded[0])


def carried_context(stored: str | None) -> dict[str, str]:
    """A run's stored ``context`` column (JSON text, or NULL) as ``RunInfo.context``."""
    value = from_json(stored) if stored else None
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items()}


class Hook:
    """Override any of these; each default does nothing. Every method returns None
    and may not change what it is given (see the module docstring for the rules)."""

    def event_received(self, info: EventReceived) -> None:
        """Sender process, after the event's transaction committed."""

    def run_queued(self, info: RunQueued) -> None:
        """The process that created the run, after its transaction committed."""

    def run_woken(self, info: RunWoken) -> None:
        """Worker child, after the claim of a run that executed before."""

    def run_started(self, info: RunStarted) -> None:
        """Worker child, after the claim, before the function is called."""

    def memo_loaded(self, info: MemoLoaded) -> None:
        """Worker child, after ``run_started``, before the function is called; may
        change ``info.outputs`` (see "Changing the replayed outputs" above) until the
        function replays each step."""

    def run_parked(self, info: RunParked) -> None:
        """Worker child, after the park (or release) was written."""

    def run_finished(self, info: RunFinished) -> None:
        """Worker child, after the run's end was written."""

    def step_started(self, info: StepStarted) -> None:
        """Worker child, after the previous step's result was written."""

    def step_finished(self, info: StepFinished) -> None:
        """Worker child; a completed step's result is written with the next write."""

    def step_retried(self, info: StepRetried) -> None:
        """Worker child, after the failed attempt and the park were written."""

    def reconciled(self, info: Reconciled) -> None:
        """The reconciler's process, after each pass."""

    def carry(self) -> dict[str, str]:
        """Strings to store with a run created now (see "Carrying context" above);
        the process and thread creating it call this, before the run is recorded."""
        return {}


class Hooks:
    """The hooks of one Flow, called in registration order; a raising hook is
    logged and skipped."""

    def __init__(self, hooks: Iterable[Hook] = ()) -> None:
        self._hooks: list[Hook] = []
        for hook in hooks:
            self.add(hook)

    def add(self, hook: Hook) -> None:
        if not isinstance(hook, Hook):
            raise ConfigError(f"a hook must be an instance of celeryflow.Hook, got {hook!r}")
        self._hooks.append(hook)

    def __bool__(self) -> bool:
        return bool(self._hooks)

    def __len__(self) -> int:
        return len(self._hooks)

    def announce(
        self, events: Iterable[Event], rows: Iterable[Mapping[str, Any]], created: Iterable[str]
    ) -> None:
        """After events and runs were recorded: ``event_received`` for each event,
        then ``run_queued`` for each run created (``run_finished`` with ``skipped``
        for one that flow control recorded skipped). ``rows`` are the planned run
        rows, as the store left them. So a skip is told in the process that
        recorded the event: the sender's ``flow.send``, the worker child whose run
        called ``step.send_event`` (or failed, for ``on_failure``), the reconciler's
        process for a cron slot."""
        if not self._hooks:
            return
        events = list(events)
        for ev in events:
            self.emit("event_received", EventReceived(ev))
        by_id = {ev.id: ev for ev in events}
        planned = {str(row["id"]): row for row in rows}
        # a run flow control skipped (rate limit, idempotency, singleton) is recorded
        # but not "created" (nothing rings it): its row says so
        skipped = [i for i, row in planned.items() if row.get("status") == "skipped"]
        for run_id in dict.fromkeys([*created, *skipped]):
            row = planned.get(run_id)
            if row is None:
                continue  # a batch that filled up: queued when its first event came
            if row.get("status") == "skipped":
                # an invoked child or a replay has no event among ``events``: its
                # trigger is the one recorded with it
                trigger = by_id.get(row.get("event_id") or "") or _first_event(row)
                if trigger is not None:
                    info = RunInfo(
                        row["function_id"],
                        run_id,
                        0,
                        trigger,
                        context=carried_context(row.get("context")),
                        parent_run_id=row.get("parent_run_id"),
                        created_at=row.get("created_at"),
                    )
                    finished = RunFinished(**vars(info), status="skipped", executed=False)
                    self.emit("run_finished", finished)
                continue
            self.emit(
                "run_queued",
                RunQueued(
                    function_id=row["function_id"],
                    run_id=run_id,
                    event_id=row.get("event_id"),
                    wake_at=row.get("wake_at"),
                    parent_run_id=row.get("parent_run_id"),
                ),
            )

    def cancelled(self, rows: Iterable[dict[str, Any]]) -> None:
        """``run_finished`` (``cancelled``, not executed) for runs whose cancel no
        executor saw: ``rows`` as :meth:`Store.take_due` gives them."""
        for row in rows:
            trigger = _first_event(row)
            if trigger is None:
                continue
            info = RunInfo(
                str(row["function_id"]),
                str(row["id"]),
                int(row["attempt"] or 0),
                trigger,
                context=carried_context(row.get("context")),
                parent_run_id=row.get("parent_run_id"),
                created_at=row.get("created_at"),
            )
            self.emit("run_finished", RunFinished(**vars(info), status="cancelled", executed=False))

    def carry(self) -> dict[str, str]:
        """What every hook's :meth:`Hook.carry` returns, merged (a later hook wins a
        shared key); a hook that raises or returns anything but strings is logged."""
        carried: dict[str, str] = {}
        for hook in self._hooks:
            try:
                more = hook.carry()
                if not isinstance(more, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) for k, v in more.items()
                ):
                    raise TypeError(f"carry() must return a dict of strings, got {more!r}")
                carried.update(more)
            except Exception:
                log.exception("hook %r raised in carry; ignored", hook)
        return carried

    def emit(self, method: str, info: Any) -> None:
        for hook in self._hooks:
            try:
                getattr(hook, method)(info)
            except Exception:
                log.exception("hook %r raised in %s; ignored", hook, method)
