"""The step protocol: how every step kind reaches its run. ``Execution`` (engine.py)
is a ``StepProtocol``; a kind calls ``begin`` (its key and position, the run's
deadline, the previous result written, its recorded row), then ``complete``,
``complete_sending``, one of the parks (``park``: a time, or until resumed;
``park_on_runs``: children; ``park_on_event``: a waiter), or a timeout's
resolution. Rows go to the store as the typed rows of ``store/rows.py``, and the
store holds every transaction."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, NoReturn

from ..durations import parse_datetime, parse_duration, utcnow
from ..errors import (
    Interrupt,
    NestedStepError,
    NondeterminismError,
    NonRetriableError,
    RetryAfterError,
    StepUnexpectedError,
)
from ..events import Event
from ..runs import RunStatus, StepKind, StepStatus
from ..store.rows import Lookback, RunRow, StepRow, StepWrite, WaiterRow, step_row

if TYPE_CHECKING:
    from ..flow import FlowSettings
    from ..functions import FlowFunction
    from ..hooks import Hooks
    from ..planning import Planner
    from ..store import Claim, RunSession, Store
    from ..tasks import CeleryDoorbell

__all__ = ["INTERCHANGEABLE_KINDS", "StepPlan", "StepProtocol"]

# Step kinds one call may replace with another under a recorded id: a legacy task
# invoked as a step ("task") that a deploy turns into a function invoke ("invoke"),
# or back. Both park for an outcome recorded on the step, which either call returns.
INTERCHANGEABLE_KINDS = frozenset({StepKind.INVOKE.value, StepKind.TASK.value})
S = RunStatus


@dataclass
class StepPlan:
    key: str
    name: str
    position: int
    kind: StepKind
    prior_attempts: int = 0
    new: bool = True
    done: bool = False
    value: Any = None
    started_at: datetime = field(default_factory=utcnow)


class StepProtocol:
    """What the step kinds call on a run's execution; the state it works on is set
    up by ``Execution.__init__``."""

    session: RunSession
    store: Store
    doorbell: CeleryDoorbell
    planner: Planner
    hooks: Hooks
    settings: FlowSettings
    function: FlowFunction
    claim: Claim
    run_id: str
    fence: int
    log: logging.Logger
    memo: dict[str, Any]
    branch: int | None
    branch_key: str | None
    in_branch: bool
    _unvisited: set[str]
    _reached_new: bool
    _seen: dict[str, int]
    _position: int
    _in_step: str | None
    _nested: NestedStepError | None
    _pending: list[StepWrite]
    _in_flight: list[StepWrite]
    _last_kind: str | None
    _last_step: str | None

    def take_pending(self) -> list[StepWrite]:
        pending, self._pending = self._pending, []
        self._in_flight = pending
        return pending

    def _flush(self) -> None:
        if self._pending and not self.session.save_steps(self.fence, self.take_pending()):
            raise self.lost()

    # -- the step protocol: every step kind reaches the run through these -----------

    def begin(
        self,
        name: str,
        kind: StepKind,
        *,
        at: tuple[str, int] | None = None,
        settle: bool = True,
    ) -> tuple[StepPlan, Any]:
        """A step's start: its key and position (``at``: taken already), its plan, and
        its recorded row (None the first time it is met). ``settle`` first checks the
        run's deadline and writes the previous step's result; ``run`` does that only
        for new work, ``sleep`` never."""
        key, position = self.next_key(name) if at is None else at
        if settle:
            self.settle()
        plan = StepPlan(key=key, name=name, position=position, kind=kind)
        return plan, self.recorded(key, name, kind, position)

    def record_now(self, write: StepWrite) -> None:
        """Write ``write`` (with any pending result) before going on."""
        self._pending.append(write)
        self._flush()

    def settle(self) -> None:
        """Before a step does new work: the run's deadline holds, and the previous
        step's result is durable."""
        self._check_deadline()
        self._flush()

    def complete(
        self, plan: StepPlan, *, output: str | None = None, wake_at: datetime | None = None
    ) -> None:
        """Record ``plan`` completed; the row rides in the execution's next write."""
        self._pending.append(
            (self.step_row(plan, StepStatus.COMPLETED, output=output, wake_at=wake_at), plan.new)
        )

    def complete_sending(self, plan: StepPlan, events: list[Event], output: str) -> None:
        """Record ``plan`` completed with the ``events`` it sends (and the runs they
        start or resume) in one transaction, so a replay never sends twice."""
        done = self.step_row(plan, StepStatus.COMPLETED, output=output)
        sending = self.planner.sending(events, utcnow())
        recorded = self.session.record_events(
            self.fence, [*self.take_pending(), (done, plan.new)], sending
        )
        if recorded is None:
            raise self.lost()
        self.doorbell.ring([*recorded.created, *recorded.resumed])
        if recorded.cancelled:
            # runs whose cancel_on these events matched: what they started goes too, as
            # after Flow.send (flow.cancel's default), once their cancel has committed
            self.store.cancel_descendants(recorded.cancelled, utcnow())
        self.hooks.announce(events, recorded.planned, recorded.created)

    def time_out_wait(self, timed_out: StepWrite) -> str | None:
        """A wait claimed at its timeout: take its waiter and record ``timed_out``,
        unless an event took it first (that event's JSON is returned)."""
        holds, won = self.session.resolve_timeout(self.fence, self.take_pending(), timed_out)
        if not holds:
            raise self.lost()
        return won

    def time_out_outcome(self, key: str, error: str) -> str | None:
        """A step parked on a child run or a task, claimed at its timeout: fail it
        with ``error``, unless the outcome came first (its status is returned)."""
        holds, won = self.session.fail_timed_out(
            self.fence, self.take_pending(), self.run_id, key, error
        )
        if not holds:
            raise self.lost()
        return won

    def park(
        self,
        status: RunStatus,
        wake: datetime | None,
        step: StepWrite | None = None,
        *,
        due_at_wake: bool = False,
        then: Callable[[], None] | None = None,
    ) -> NoReturn:
        """Leave the worker in ``status`` until ``wake`` (None: until something else
        resumes the run: a child run, a task's callback, the last branch), recording
        the step that parks the run; ``then`` is called once that is written. The
        reconciler looks at ``due_for(wake)``, or at ``wake`` itself (``due_at_wake``)."""
        due = wake if due_at_wake or wake is None else self.due_for(wake)
        if not self.session.move(
            self.run_id,
            self.fence,
            status=status,
            wake_at=wake,
            due_at=due,
            attempt=self.run_attempt,
            writes=[*self.take_pending(), *([step] if step is not None else [])],
        ):
            raise self.lost()
        if then is not None:
            then()
        raise Interrupt(status.value, wake)

    def park_on_runs(
        self, wake: datetime | None, step: StepWrite, children: list[RunRow]
    ) -> NoReturn:
        """Park waiting until the ``children`` (created in the same transaction, all
        of one function) end, or ``wake`` (a timeout)."""
        if not self.session.invoke(
            self.run_id,
            self.fence,
            wake_at=wake,
            attempt=self.run_attempt,
            writes=[*self.take_pending(), step],
            children=children,
        ):
            raise self.lost()
        ids = [str(child["id"]) for child in children]
        self.doorbell.ring(ids, function_id=children[0]["function_id"])
        self.hooks.announce([], children, ids)
        raise Interrupt(S.WAITING.value, wake)

    def park_on_event(
        self,
        wake: datetime,
        step: StepWrite,
        waiter: WaiterRow,
        lookback: Lookback | None,
    ) -> dict[str, Any]:
        """Park waiting until an event the ``waiter`` matches, or ``wake`` (its
        timeout). Returns the event the ``lookback`` found instead (the step is then
        recorded completed and the run goes on)."""
        holds, found = self.session.wait(
            self.run_id,
            self.fence,
            wake_at=wake,
            attempt=self.run_attempt,
            writes=self.take_pending(),
            waiting=step,
            waiter=waiter,
            lookback=lookback,
        )
        if not holds:
            raise self.lost()
        if found is None:
            raise Interrupt(S.WAITING.value, wake)
        return found

    @contextmanager
    def inside_step(self, plan: StepPlan) -> Iterator[None]:
        """While a step's code runs: a step called inside it is refused."""
        self._in_step = plan.name
        try:
            yield
        finally:
            self._in_step = None
        if self._nested is not None:
            raise self._nested  # the step's code caught it even as a BaseException

    # -- helpers the steps call ----------------------------------------------------------

    @property
    def run_attempt(self) -> int:
        return int(self.claim.run["attempt"])

    def _check_deadline(self) -> None:
        finish: datetime | None = self.claim.run["finish_deadline"]
        if finish is not None and utcnow() > finish:
            self._flush()
            self.store_cancel()
            raise Interrupt("cancelled by Timeouts(finish)")

    def store_cancel(self) -> None:
        self.store.cancel(self.run_id, utcnow())

    def next_key(self, name: str) -> tuple[str, int]:
        if not isinstance(name, str) or not name:
            raise NonRetriableError(f"a step id must be a non-empty string, got {name!r}")
        if self._in_step is not None:
            self._nested = NestedStepError(self._in_step, name)
            raise self._nested
        count = self._seen.get(name, 0)
        self._seen[name] = count + 1
        position = self._position
        self._position += 1
        return (name if count == 0 else f"{name}:{count}"), position

    def recorded(self, key: str, name: str, step_kind: StepKind, position: int) -> Any:
        kind = step_kind.value  # compared with the stored row and shown in messages
        row = self.memo.get(key)
        self._unvisited.discard(key)
        self._last_kind, self._last_step = kind, name
        if row is None:
            self._reached_new = True
            if self.branch is not None and not self.in_branch:
                raise StepUnexpectedError(
                    f'found step "{name}" when targeting a different step: it is not in '
                    f"the parent's record before step.parallel({self.branch_key!r}); "
                    "the code changed under a run in flight"
                )
            return None
        if row["kind"] != kind and not {row["kind"], kind} <= INTERCHANGEABLE_KINDS:
            raise NondeterminismError(
                f"step {name!r} was recorded as a {row['kind']!r} step but the function now "
                f"calls it as {kind!r}: the code changed under a run in flight"
            )
        if row["position"] != position:
            self.log.warning(
                "step %r replayed at position %d, recorded at %d", key, position, row["position"]
            )
        return row

    def lost(self) -> Interrupt:
        row = self.session.peek(self.run_id)
        status = row["status"] if row else "missing"
        self.log.info("run left this executor: %s", status)
        return Interrupt("cancelled" if status == S.CANCELLED.value else "lease lost")

    def due_for(self, wake: datetime) -> datetime:
        # A wake within the horizon gets an ETA message; the reconciler only backs it
        # up. A farther one is woken by the reconciler alone, so no message sits in a
        # broker past Redis' visibility timeout or RabbitMQ's consumer_timeout.
        finish: datetime | None = self.claim.run["finish_deadline"]
        if wake - utcnow() <= self.settings.eta_horizon:
            due = wake + self.settings.redeliver_after
        else:
            due = wake
        return min(due, finish) if finish is not None else due

    def retry_delay(
        self, exc: BaseException, attempt: int, fixed: timedelta | None = None
    ) -> timedelta:
        """RetryAfterError's delay; else the step's or the function's fixed
        ``retry_delay``; else exponential back-off with jitter."""
        if isinstance(exc, RetryAfterError):
            if isinstance(exc.delay, datetime):
                return max(timedelta(0), parse_datetime(exc.delay) - utcnow())
            return parse_duration(exc.delay, "RetryAfterError delay")
        if fixed is None:
            fixed = self.function.config.retry_delay
        if fixed is not None:
            return fixed
        base = self.settings.retry_base.total_seconds()
        ceiling = self.settings.retry_max.total_seconds()
        delay = min(ceiling, base * 2 ** (attempt - 1))
        return timedelta(seconds=delay * random.uniform(0.5, 1.0))

    def step_row(
        self,
        plan: StepPlan,
        status: StepStatus,
        *,
        output: str | None = None,
        error: str | None = None,
        wake_at: datetime | None = None,
        attempts: int | None = None,
        ended: bool = True,
    ) -> StepRow:
        """``plan``'s row in ``status``; ``ended=False`` for a step not yet over (it
        parks the run, or will be retried)."""
        return step_row(
            run_id=self.run_id,
            key=plan.key,
            name=plan.name,
            position=plan.position,
            kind=plan.kind,
            status=status,
            output=output,
            error=error,
            attempts=plan.prior_attempts + 1 if attempts is None else attempts,
            wake_at=wake_at,
            started_at=plan.started_at,
            ended_at=utcnow() if ended else None,
        )
