"""Events to runs: which functions an event starts, each run's row (deadlines, keys,
queue position, cancel_on waiters, flow control), and the events a run sends (a
``Sending``, which the store records with the run's own write: the engine never holds
a transaction). Used by the face (``Flow.send``) and by runs themselves
(``step.send_event``, ``celeryflow/function.failed``, invoke and parallel children)."""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from .codec import to_json
from .errors import error_info
from .events import FAILED_EVENT, Event
from .flowcontrol import Admission, KeyUnavailable
from .functions import FlowFunction
from .runs import RunStatus
from .store import PlannedRun, Store
from .store.rows import RunRow, Sending, run_row

if TYPE_CHECKING:
    from .flow import FlowSettings

__all__ = ["MAX_SLOT_GROUPS", "Planner", "new_run_id", "skip"]

MAX_SLOT_GROUPS = 32  # concurrency keys in one send() looked up for their first runs


def new_run_id() -> str:
    """Sortable by creation time, unique without coordination."""
    return f"{int(time.time() * 1000):012x}{secrets.token_hex(10)}"


def skip(row: RunRow, refused: KeyUnavailable, now: datetime) -> None:
    """Turn the planned run ``row`` into its skipped record (flow control refused it)."""
    row.update(
        {
            "status": RunStatus.SKIPPED.value,
            "error": refused.refuse(row["id"], row["event_id"]),
            "ended_at": now,
            "due_at": None,
            "wake_at": None,
        }
    )


class Planner:
    """Plans and records the runs events start, for the functions of one Flow."""

    def __init__(
        self,
        store: Store,
        settings: FlowSettings,
        functions: dict[str, FlowFunction],
        carry: Callable[[], dict[str, str]] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.functions = functions
        # the hooks' Hook.carry, asked as each run row is made (the one place)
        self.carry = carry

    def ring_for_slots(
        self, created: list[str], planned: list[PlannedRun], now: datetime
    ) -> list[str]:
        """The new runs to ring: of a concurrency-limited function, only those first
        in line for a free slot (1,000 runs under a limit of 4 are 4 messages, not
        1,000 of which 996 would be refused)."""
        limited: dict[tuple[str, str | None, str | None], list[int]] = {}
        waiting_for_slot: list[str] = []
        new = set(created)
        planned_ids = {p.row["id"] for p in planned}
        ring = [i for i in created if i not in planned_ids]  # batches that filled up
        for p in planned:
            row = p.row
            fn = self.functions.get(row["function_id"])
            if row["id"] not in new:
                continue  # skipped, or joined a debounced or batched run
            if fn is None or not fn.control.concurrency or row.get("wake_at") is not None:
                ring.append(row["id"])
                continue
            waiting_for_slot.append(row["id"])
            group = (fn.id, row["concurrency_key1"], row["concurrency_key2"])
            limited[group] = [c.limit for c in fn.control.concurrency]
        if len(limited) > MAX_SLOT_GROUPS:  # many keys: ringing all is cheaper than looking
            return ring + waiting_for_slot
        for (function_id, key1, key2), limits in limited.items():
            ring += self.store.next_for_slots(function_id, [key1, key2], limits, now)
        return list(dict.fromkeys(ring))

    def sending(self, prepared: list[Event], now: datetime) -> Sending:
        """Events a run's ``step.send_event`` sends, for the store to record with the
        step: the runs of every function they trigger."""
        functions = list(self.functions.values())
        return Sending(
            prepared,
            lambda ev: self.plan_runs(ev, functions, now),
            now,
            now + self.settings.redeliver_after,
        )

    def failure_sending(
        self,
        run_id: str,
        function: FlowFunction,
        event: Event,
        failure: BaseException,
        now: datetime,
    ) -> Sending:
        """``celeryflow/function.failed`` for run ``run_id`` of ``function`` that failed
        for good (``event``: what its code saw as ``ctx.event``), for the store to
        record with the run's end: to every function triggered by that name, and to
        the failed function's ``on_failure``."""
        info = error_info(failure)
        failed = Event(
            name=FAILED_EVENT,
            id=hashlib.sha256(f"failed:{run_id}".encode()).hexdigest()[:32],
            ts=int(now.timestamp() * 1000),
            data={
                "run_id": run_id,
                "function_id": function.id,
                "event": event.model_dump(),
                "error": {k: v for k, v in info.items() if k != "traceback"},
            },
        )
        functions = list(self.functions.values())
        handler = self.functions.get(function.config.on_failure or "")

        def plan(ev: Event) -> list[PlannedRun]:
            planned = self.plan_runs(ev, functions, now)
            if handler is not None and all(p.row["function_id"] != handler.id for p in planned):
                planned.append(PlannedRun(self.new_run(handler.id, [ev], now)))
            return planned

        return Sending([failed], plan, now, now + self.settings.redeliver_after)

    def plan_runs(
        self, ev: Event, functions: list[FlowFunction], now: datetime
    ) -> list[PlannedRun]:
        """The runs ``ev`` starts (one per function it triggers), with their waiters."""
        variables = {"event": ev.model_dump()}
        wanted = [fn for fn in functions if fn.wants(ev.name, variables)]
        if wanted:
            wanted = self.unpaused(wanted)
        return [self.plan_for(fn, ev, variables, now) for fn in wanted]

    def unpaused(self, functions: list[FlowFunction]) -> list[FlowFunction]:
        """``functions`` without the paused ones (``celeryflow pause``): an event
        starts no run of a paused function; it is recorded all the same, and wakes
        the runs waiting for it."""
        paused = self.store.paused_function_ids()
        return [fn for fn in functions if fn.id not in paused] if paused else functions

    def plan_for(
        self, fn: FlowFunction, ev: Event, variables: dict[str, Any], now: datetime
    ) -> PlannedRun:
        """A run of ``fn`` for ``ev``: its deadlines, cancel_on waiters, flow control."""
        row = self.new_run(fn.id, [ev], now)
        if row["status"] == RunStatus.SKIPPED.value:  # a concurrency key failed
            return PlannedRun(row, [], Admission(refused=True))
        try:
            admission = fn.control.admission(variables)
        except KeyUnavailable as exc:
            skip(row, exc, now)
            return PlannedRun(row, [], Admission(refused=True))
        if fn.control.concurrency:
            # parked for a slot from birth: the sender rings only the runs first in
            # line (send()), a released slot the next, the reconciler any it missed
            row["due_at"] = None
        timeouts = fn.config.timeouts
        if timeouts is not None:
            row["start_deadline"] = now + timeouts.start if timeouts.start else None
            row["finish_deadline"] = now + timeouts.finish if timeouts.finish else None
            # the reconciler looks at the run no later than its first deadline
            due = [d for d in (row["due_at"], row["start_deadline"], row["finish_deadline"]) if d]
            row["due_at"] = min(due) if due else None
        waits = [{**w, "run_id": row["id"]} for w in fn.cancel_waits(ev, variables, now)]
        return PlannedRun(row, waits, admission if admission else None)

    def _carried(self) -> str | None:
        carried = self.carry() if self.carry is not None else None
        return to_json(carried, "hook context") if carried else None

    def new_run(self, function_id: str, evs: list[Event], now: datetime) -> RunRow:
        """A run row (every column an insert names, so rows batch in one executemany),
        with its concurrency keys and queue position evaluated from its first event.
        A concurrency key that cannot be evaluated makes it the run's skipped record."""
        keys: list[str | None] = [None, None]
        queue_at = now
        refused: KeyUnavailable | None = None
        function = self.functions.get(function_id)
        if function is not None and (function.control.concurrency or function.control.priority):
            variables = {"event": evs[0].model_dump()}
            try:
                for i, key in enumerate(function.control.concurrency_keys(variables)):
                    keys[i] = key
            except KeyUnavailable as exc:
                refused = exc
            queue_at = now - timedelta(seconds=function.control.priority_seconds(variables))
        row = run_row(
            id=new_run_id(),
            function_id=function_id,
            event_id=evs[0].id,
            events=to_json([e.model_dump() for e in evs], "events"),
            due_at=now + self.settings.redeliver_after,
            context=self._carried(),
            concurrency_keys=keys,
            queue_at=queue_at,
            created_at=now,
        )
        if refused is not None:
            skip(row, refused, now)
        return row
