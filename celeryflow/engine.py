"""Executes one run: claim it, replay recorded steps from the memo, do the next
steps in-process, and leave the worker only when the run must wait.

Each step is keyed by its id (``id:N`` for the N-th repeat of an id in one run, as
Inngest does) and records its position; a replay that asks for a different kind of
step under a recorded key is nondeterministic and fails the run (as DBOS does),
except an invoke of a legacy task turned into an invoke of a function (or back): the
recorded outcome is returned either way. A step found at another position only logs a
warning, so adding a step to a deployed function does not break the runs in flight.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .codec import from_json, to_json
from .durations import utcnow
from .errors import (
    BranchFinished,
    Interrupt,
    NestedStepError,
    NonRetriableError,
    SerializationError,
    StepError,
    StepUnexpectedError,
    Unavailable,
    error_info,
)
from .events import FAILED_EVENT, Event
from .functions import FlowFunction, Registry
from .hooks import (
    Hooks,
    MemoLoaded,
    RunFinished,
    RunInfo,
    RunParked,
    RunStarted,
    RunWoken,
    StepOutputs,
    carried_context,
)
from .infra import guarded, release_after
from .leases import LeaseKeeper
from .logs import RunLogger, run_context
from .logs import install as install_log_context
from .planning import Planner
from .runs import RunStatus, StepStatus
from .steps import AsyncContext, AsyncSteps, Context, Failure, Steps
from .steps.protocol import StepPlan, StepProtocol
from .store import Claim, RunSession, SlotHandOver
from .store.rows import StepWrite
from .unregistered import release_unregistered

if TYPE_CHECKING:
    from sqlalchemy import RowMapping

    from .flow import FlowSettings
    from .store import Store
    from .tasks import CeleryDoorbell

__all__ = ["Engine", "Execution", "StepPlan"]

SLOT_HANDOVERS = 16  # runs executed in a row by one task message, handing a slot on

log = logging.getLogger("celeryflow.engine")
S = RunStatus


class Engine:
    """Runs claimed runs for one Flow, with what it is given: the ``store``, the
    ``doorbell`` (tasks.py's; the engine holds no Celery objects), the ``registry``
    of functions, the ``settings``, the ``planner`` (events a run sends, children it
    starts) and the ``hooks``."""

    def __init__(
        self,
        *,
        store: Store,
        doorbell: CeleryDoorbell,
        registry: Registry,
        settings: FlowSettings,
        planner: Planner,
        hooks: Hooks,
    ) -> None:
        self.store = store
        self.doorbell = doorbell
        self.registry = registry
        self.settings = settings
        self.planner = planner
        self.hooks = hooks
        self.leases = LeaseKeeper(store, settings.lease)
        self._host = socket.gethostname()
        self.sleeps_elapse = False  # testing.sleeps_elapse: a sleep ends at once
        install_log_context()

    def owner(self) -> str:
        return f"{self._host}:{os.getpid()}:{threading.get_ident()}"

    def execute(self, run_id: str) -> datetime | None:
        """Run ``run_id`` as far as it goes now. Returns when the doorbell should
        ring again (a short sleep or retry), or None.

        A run that leaves a concurrency slot hands it on in this process: a run that
        ends gives it, in its finishing transaction, to the run first in line, claimed
        there and executed here next; a run that parks (or whose hand-over found no
        run that may start) looks up who may start, executes the first here and rings
        the others. Up to ``SLOT_HANDOVERS`` in a row. That saves a broker round trip
        per slot, and a broker queue full of refused runs cannot delay the one that
        may go."""
        heads: list[str] = []
        handed: list[Claim] = []
        wake = self._execute_guarded(run_id, heads, handed, SLOT_HANDOVERS > 0)
        for turn in range(SLOT_HANDOVERS):
            following: str | Claim
            if handed:
                following = handed.pop()
            elif heads:
                following, rest = heads[0], heads[1:]
                self.doorbell.ring(rest)
            else:
                return wake
            heads = []
            # the last one in a row rings for its slot instead of claiming the next
            later = self._execute_guarded(following, heads, handed, turn < SLOT_HANDOVERS - 1)
            if later is not None and later - utcnow() <= self.settings.eta_horizon:
                ring = following.run["id"] if isinstance(following, Claim) else following
                self.doorbell.ring([ring], eta=later)
        self.doorbell.ring(heads)
        return wake

    def _execute_guarded(
        self, run: str | Claim, heads: list[str], handed: list[Claim], hand_over: bool
    ) -> datetime | None:
        try:
            return self._execute_one(run, heads, handed, hand_over)
        except Unavailable as exc:
            # before a claim, or after the run was released: the store keeps it due
            run_id = run.run["id"] if isinstance(run, Claim) else run
            log.warning("run %s: %s; the reconciler rings it again", run_id, exc)
            return None

    def _execute_one(
        self, run: str | Claim, heads: list[str], handed: list[Claim], hand_over: bool
    ) -> datetime | None:
        """One run (``run``: its id, or its claim when a finishing run handed it its
        slot). The run its end hands the slot to is added to ``handed``; else the
        runs first in line for the slot it left are added to ``heads``."""
        settings = self.settings
        now = utcnow()
        patience = settings.lease / 2
        with guarded(self.store, "store", patience).session() as held:
            session = guarded(held, "store", patience)
            if isinstance(run, Claim):
                claim: Claim | None = run
                run_id: str = run.run["id"]
            else:
                run_id = run
                claim = session.claim(
                    run_id,
                    self.owner(),
                    now,
                    now + settings.lease,
                    slot_limits=self._slot_limits,
                    limited=self.registry.limited,
                )
            if claim is None:
                return self._not_claimed(session, run_id, now, heads)
            function = self.registry.get(claim.run["function_id"])
            if function is None:
                # A rolling deploy: this worker lacks the function; another may have it.
                release_unregistered(session, claim, now, settings.redeliver_after)
                return None
            if self._past_deadline(claim, now):
                log.info("run %s: cancelled by its Timeouts", run_id)
                self.store.cancel(run_id, now)
                return None
            self.leases.hold(run_id, claim.fence)
            execution = Execution(self, function, claim, session)
            if hand_over and function.control.concurrency:
                execution.hand_over = self._hand_over(function, claim)
            try:
                with run_context(run_id, function.id):
                    return execution.drive()
            finally:
                self.leases.release(run_id)
                if session.handed is not None:
                    handed.append(session.handed)
                elif function.control.concurrency:
                    heads += self._next_for_slot(function, claim.run)

    def _hand_over(self, function: FlowFunction, claim: Claim) -> SlotHandOver:
        return SlotHandOver(
            function.id,
            [claim.run["concurrency_key1"], claim.run["concurrency_key2"]],
            [c.limit for c in function.control.concurrency],
            self.owner(),
            self.settings.lease,
        )

    def _slot_limits(self, function_id: str) -> list[int]:
        function = self.registry.get(function_id)
        return [c.limit for c in function.control.concurrency] if function else []

    def _next_for_slot(self, function: FlowFunction, run: RowMapping) -> list[str]:
        """The run left its slot (parked, ended, or lost): who is next in line."""
        keys = [run["concurrency_key1"], run["concurrency_key2"]]
        limits = [c.limit for c in function.control.concurrency]
        try:
            return self.store.next_for_slots(function.id, keys, limits, utcnow())
        except Exception:  # the reconciler's slot pass rings them instead
            log.exception("run %s: finding the next run for its slot failed", run["id"])
            return []

    @staticmethod
    def _past_deadline(claim: Claim, now: datetime) -> bool:
        start: datetime | None = claim.run["start_deadline"]
        finish: datetime | None = claim.run["finish_deadline"]
        if start is not None and claim.first and start < now:
            return True  # never started, and waited too long to
        return finish is not None and finish < now

    def _not_claimed(
        self, session: RunSession, run_id: str, now: datetime, heads: list[str]
    ) -> datetime | None:
        row = session.peek(run_id)
        if row is None:
            log.warning("run %s does not exist; message dropped", run_id)
            return None
        wake: datetime | None = row["wake_at"]
        parked = (S.QUEUED.value, S.SLEEPING.value, S.WAITING.value)
        if row["status"] in parked and wake is not None and wake > now:
            return wake  # an early doorbell (ETA restored early, reconciler look-ahead)
        function = self.registry.get(row["function_id"])
        if row["status"] != S.QUEUED.value and function and function.control.concurrency:
            # Finished, or held by another executor: a duplicate delivery, or a slot's
            # doorbell whose run another run's end took first (hand-overs take the run
            # first in line). The slot it was rung for may still be free: ring who is
            # next, one run for the one doorbell, so no slot idles until the reconciler.
            heads += self._next_for_slot(function, row)[:1]
        return None


class Execution(StepProtocol):
    """One pass of one run through its function."""

    def __init__(
        self, engine: Engine, function: FlowFunction, claim: Claim, session: RunSession
    ) -> None:
        self.engine = engine
        # set by the engine for a concurrency-limited run: its end hands its slot on
        self.hand_over: SlotHandOver | None = None
        self.settings: FlowSettings = engine.settings
        self.registry = engine.registry
        self.planner = engine.planner
        # The store and the broker as the run's code reaches them: their failures are
        # infrastructure, never an attempt of the user's code (celeryflow/infra.py).
        self.session = session
        self.store = guarded(engine.store, "store", engine.settings.lease / 2)
        self.doorbell = guarded(engine.doorbell, "broker")
        self.function = function
        self.claim = claim
        self.run_id: str = claim.run["id"]
        self.fence = claim.fence
        # A step.parallel branch (steps/parallel.py) replays its parent's memo up
        # to the parallel step, then records its own steps on its own run.
        self.branch: int | None = claim.run["branch"]
        self.branch_key: str | None = claim.run["parent_step"] if self.branch is not None else None
        self.in_branch = False
        # What user code sees as ctx.run_id: a branch is an implementation detail of
        # its parent's parallel step, so it shows the parent's id. Store writes keep
        # using run_id, the branch's own row.
        self.public_run_id: str = (
            claim.run["parent_run_id"] if self.branch is not None else self.run_id
        )
        self.memo = self._branch_prefix(claim) if self.branch is not None else {}
        self.memo.update(claim.steps)
        # Replaying until the function reaches a step no earlier execution reached
        # (or has passed every recorded one): ctx.logger is quiet meanwhile.
        self._unvisited = set(self.memo)
        self._retrying = frozenset(
            k for k, row in self.memo.items() if row["status"] == StepStatus.RETRYING
        )
        self._reached_new = False
        self.log = logging.getLogger("celeryflow.run")
        self._seen: dict[str, int] = {}
        self._position = 0
        self._in_step: str | None = None  # the step whose code is running, if any
        self._nested: NestedStepError | None = None
        # The newest step result not yet written: it rides in the execution's next
        # write (the next step's, a park or the finish), which always comes before
        # any other step does work, so at-least-once per step holds unchanged.
        self._pending: list[StepWrite] = []
        self._in_flight: list[StepWrite] = []  # the writes last handed to the store
        events = [Event.model_validate(e) for e in from_json(claim.run["events"])]
        self.trigger = events[0]  # the run's own first event, whatever ctx.event shows
        events, failure = self._handler_view(events)
        context = dict(
            run_id=self.public_run_id,
            function_id=function.id,
            events=events,
            failure=failure,
            attempt=self._resume_attempt(),
            logger=RunLogger(self.log, lambda: self.replaying, lambda: self.replaying_settled),
        )
        self.ctx: Context | AsyncContext = (
            AsyncContext(step=AsyncSteps(self), **context)
            if function.is_async
            else Context(step=Steps(self), **context)
        )
        self.hooks = engine.hooks
        self._last_kind: str | None = None  # the kind of the step met last: why it parks
        self._last_step: str | None = None
        self._ended: RunParked | RunFinished | None = None  # what the hooks are told
        self._began = time.monotonic()

    def _handler_view(self, events: list[Event]) -> tuple[list[Event], Failure | None]:
        """A function's ``on_failure`` handler sees the failed run's event as
        ``ctx.event`` and the failure as ``ctx.failure``. Functions triggered by
        the ``celeryflow/function.failed`` name itself see that event as it is."""
        first = events[0]
        if first.name != FAILED_EVENT:
            return events, None
        data = first.data
        failed = self.registry.get(str(data.get("function_id")))
        if failed is None or failed.config.on_failure != self.function.id:
            return events, None
        failure = Failure(
            run_id=str(data.get("run_id")),
            function_id=failed.id,
            error=dict(data.get("error") or {}),
            event=first,
        )
        return [Event.model_validate(data["event"])], failure

    def _branch_prefix(self, claim: Claim) -> dict[str, Any]:
        parallel = claim.parent_steps.get(str(self.branch_key))
        limit = parallel["position"] if parallel is not None else 0
        return {k: row for k, row in claim.parent_steps.items() if row["position"] < limit}

    @property
    def replaying(self) -> bool:
        """Whether the function is re-running code an earlier execution ran: before
        its last recorded step, or (a parallel branch) before its branch begins."""
        if self.branch is not None and not self.in_branch:
            return True
        return bool(self._unvisited) and not self._reached_new

    @property
    def replaying_settled(self) -> bool:
        """As :attr:`replaying`, counting only settled steps: a step that is being
        retried is new work (the Inngest SDK's rule, for its facade's logger)."""
        if self.branch is not None and not self.in_branch:
            return True
        return bool(self._unvisited - self._retrying) and not self._reached_new

    def _resume_attempt(self) -> int:
        for row in self.memo.values():
            if row["status"] == StepStatus.RETRYING:
                return int(row["attempts"])
        return int(self.claim.run["attempt"])

    # -- the function -----------------------------------------------------------------

    def run_info(self) -> RunInfo:
        run = self.claim.run
        return RunInfo(
            self.function.id,
            self.run_id,
            self.run_attempt,
            self.trigger,
            context=carried_context(run["context"]),
            parent_run_id=run["parent_run_id"],
            created_at=run["created_at"],
        )

    def drive(self) -> datetime | None:
        if self.hooks:
            info = vars(self.run_info())
            first = self.claim.first
            if not first:
                self.hooks.emit("run_woken", RunWoken(**info))
            self.hooks.emit("run_started", RunStarted(**info, first=first))
            self.hooks.emit("memo_loaded", MemoLoaded(**info, outputs=StepOutputs(self.memo)))
        try:
            wake = self._drive()
        except Unavailable as exc:
            wake = release_after(self, exc, self._in_flight, self._pending)
            self._parked("released", wake)
        if self.hooks and self._ended is not None:
            name = "run_finished" if isinstance(self._ended, RunFinished) else "run_parked"
            self.hooks.emit(name, self._ended)
        return wake

    def _elapsed(self) -> float:
        return time.monotonic() - self._began

    def _parked(self, reason: str, wake: datetime | None) -> None:
        if self._ended is None:
            step = None if reason in ("lost", "released") else self._last_step
            self._ended = RunParked(
                **vars(self.run_info()),
                reason=reason,
                step_id=step,
                wake_at=wake,
                duration=self._elapsed(),
            )

    def _finished(self, status: RunStatus, failure: BaseException | None = None) -> None:
        if self._ended is None:
            error = str(error_info(failure)["type"]) if failure is not None else None
            self._ended = RunFinished(
                **vars(self.run_info()),
                status=status.value,
                error=error,
                duration=self._elapsed(),
            )

    def _interrupted(self, signal: Interrupt) -> None:
        """Why the execution left the worker, for the hooks."""
        if signal.reason.startswith("cancelled"):
            # the cancel's mark: whoever clears it tells the hooks (hooks.py)
            if self.store.report_cancelled(self.run_id):
                self._finished(S.CANCELLED)
            else:
                self._parked("lost", None)
        elif signal.reason == "lease lost":
            self._parked("lost", None)
        elif signal.reason == S.QUEUED.value:
            self._parked("retry", signal.wake_at)
        else:
            self._parked(self._last_kind or signal.reason, signal.wake_at)

    def _drive(self) -> datetime | None:
        try:
            if self.function.is_async:
                output = asyncio.run(self.function.fn(self.ctx))
            else:
                output = self.function.fn(self.ctx)
        except Unavailable:
            raise
        except Interrupt as signal:
            self._interrupted(signal)
            return signal.wake_at
        except NestedStepError as nested:
            self._fail_run(nested)
            return None
        except BranchFinished as finished:
            if finished.error is not None:
                return self._raised(finished.error)
            output = finished.value
        except Exception as exc:
            return self._raised(exc)
        if self.branch is not None and not self.in_branch:
            # a branch whose callable was gone, or whose parallel step was never
            # reached: its output is not a branch result
            self._fail_run(
                StepUnexpectedError(
                    f"the function returned while looking for step.parallel"
                    f"({self.branch_key!r}) branch {self.branch}: the code changed under a "
                    "run in flight"
                )
            )
            return None
        try:
            text = to_json(output, f"function {self.function.id!r} output")
        except SerializationError as exc:
            self._fail_run(exc)
            return None
        self._finish(S.COMPLETED, output=text)
        return None

    def _raised(self, exc: Exception) -> datetime | None:
        if isinstance(exc, (StepError, NonRetriableError)):
            self._fail_run(exc)
            return None
        return self._retry_or_fail_run(exc)

    def _finish(
        self,
        status: RunStatus,
        *,
        output: str | None = None,
        error: str | None = None,
        failure: BaseException | None = None,
    ) -> None:
        """End the run; resume its parent (invoke) and, on failure, send
        ``celeryflow/function.failed`` — all in the finishing transaction."""
        now = utcnow()
        run = self.claim.run
        parent = None
        if run["parent_run_id"]:
            parent = (run["parent_run_id"], run["parent_step"], self.branch)
        sending = None
        # a failed branch fails its parent's step; the parent's failure is the one sent
        if failure is not None and self.trigger.name != FAILED_EVENT and self.branch is None:
            sending = self.planner.failure_sending(
                self.run_id, self.function, self.ctx.event, failure, now
            )
        held, resumed = self.session.finish(
            self.run_id,
            self.fence,
            status=status,
            now=now,
            output=output,
            error=error,
            writes=self.take_pending(),
            clear_waits=bool(self.function.config.cancel_on),
            parent=parent,
            resume_due=now + self.settings.redeliver_after,
            sending=sending,
            hand_over=self.hand_over,
        )
        if not held:
            log.warning("run %s: %s, but it was cancelled or taken over", self.run_id, status)
            self._parked("lost", None)
            return
        self._finished(status, failure)
        ring = [parent[0]] if parent and resumed else []
        recorded = sending.recorded if sending is not None else None
        if recorded is not None:
            ring += [*recorded.created, *recorded.resumed]
        self.doorbell.ring(ring)
        if recorded is not None and recorded.cancelled:
            # the failure event cancelled runs (cancel_on): theirs go too
            self.store.cancel_descendants(recorded.cancelled, now)
        if sending is not None and recorded is not None:
            self.hooks.announce(sending.events, recorded.planned, recorded.created)
        if parent and resumed and self.branch is not None:
            # the step is settled: branches still out (a lost race, a failure) stop
            self.store.cancel_branches(parent[0], parent[1], now)

    def _fail_run(self, exc: BaseException) -> None:
        self._finish(S.FAILED, error=to_json(error_info(exc), "error"), failure=exc)

    def _retry_or_fail_run(self, exc: Exception) -> datetime | None:
        attempt = int(self.claim.run["attempt"]) + 1
        if attempt > self.function.config.retries:
            self._fail_run(exc)
            return None
        wake = utcnow() + self.retry_delay(exc, attempt)
        self.log.warning("function raised %r; retry %d at %s", exc, attempt, wake)
        if not self.session.move(
            self.run_id,
            self.fence,
            status=S.QUEUED,
            wake_at=wake,
            due_at=self.due_for(wake),
            attempt=attempt,
            writes=self.take_pending(),
        ):
            self._parked("lost", None)
            return None
        self._parked("retry", wake)
        return wake
