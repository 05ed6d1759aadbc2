"""The executor's side of the store: everything one execution of a run writes.

A :class:`RunSession` holds one connection for the whole execution (no pool
checkout per step) and uses statements built once per store (no SQL construction
on the hot path). Every write is *fenced*: it names the fence the executor got at
claim time and lands only while the fence still holds (DESIGN principle 3).

A step's result may ride in the next write of the execution (the next step's, the
park, or the finish), so a run of N steps costs N write transactions plus its claim.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from ..codec import to_json
from ..events import condition_holds
from ..runs import RunStatus, StepStatus
from .flowkeys import SlotHandOver
from .one_statement import with_step_params
from .rows import Claim, Lookback, RunRow, Sending, StepWrite, WaiterRow
from .session_claims import ClaimingSession
from .session_driver import DriverRefused
from .session_sql import UNREGISTERED, update_step_params
from .tables import runs, steps, waits
from .waits import (
    find_recent_event,
    lock_wait_field,
    register_wait,
    resolve_parent,
    resolve_timed_out_step,
)

if TYPE_CHECKING:
    from .store import Recorded

__all__ = ["Claim", "RunSession", "StepWrite", "never_started"]

S = RunStatus


def never_started(run: Any) -> bool:
    """The one definition of "never started" (``Timeouts(start=)``, the line of runs
    still in the broker): no claim has set its ``started_at``. Of a claim, it is
    :attr:`Claim.first`."""
    return run.started_at is None


def datetime_now() -> datetime:
    return datetime.now(timezone.utc)


class _Refused(Exception):
    """Rolls a fenced transaction back when the fence no longer holds."""


class RunSession(ClaimingSession):
    """One execution's connection to the store (its claims: store/session_claims.py)
    and its writes. Use as a context manager."""

    def _write_step(self, fence: int, values: Mapping[str, Any], new: bool) -> bool:
        if new:
            params = {c.name: values.get(c.name) for c in steps.c}
            params["fence"] = fence
            result = self.conn.execute(self.sql.insert_step, params)
            if self.sql.insert_returning:
                return result.first() is not None
            return bool(result.rowcount == 1)
        params = update_step_params(fence, values)
        return bool(self.conn.execute(self.sql.update_step, params).rowcount == 1)

    def _write_steps(self, fence: int, writes: Sequence[StepWrite]) -> None:
        for values, new in writes:
            if not self._write_step(fence, values, new):
                raise _Refused

    def _fenced(
        self,
        fence: int,
        writes: Sequence[StepWrite],
        run_update: sa.Update | None = None,
        params: dict[str, Any] | None = None,
        also: Callable[[sa.Connection], None] | None = None,
    ) -> bool:
        """Write the steps, update the run and do ``also``, all or nothing; False if
        this executor no longer holds the run."""
        try:
            with self.store.write_lock(), self._transaction():
                self._write_steps(fence, writes)
                if run_update is not None and self.conn.execute(run_update, params).rowcount != 1:
                    raise _Refused
                if also is not None:
                    also(self.conn)
        except _Refused:
            return False
        return True

    def save_steps(self, fence: int, writes: Sequence[StepWrite]) -> bool:
        """Record step outcomes."""
        if self.sql.single_statement_writes and len(writes) == 1:
            # one INSERT ... SELECT (or UPDATE ... WHERE EXISTS) that checks the fence
            # itself: atomic alone
            values, new = writes[0]
            if self.driver is not None:
                try:
                    if new:
                        return self.driver.insert_step_alone(fence, values)
                    return self.driver.update_step_alone(update_step_params(fence, values))
                except DriverRefused:
                    pass  # the same write through SQLAlchemy: it succeeds or says why not
            with self._autocommit():
                return self._write_step(fence, *writes[0])
        if self.driver is not None:
            try:
                return self.driver.fenced(fence, writes)
            except DriverRefused:
                pass  # the same write through SQLAlchemy: it succeeds or says why not
        return self._fenced(fence, writes)

    def move(
        self,
        run_id: str,
        fence: int,
        *,
        status: RunStatus,
        wake_at: datetime | None,
        due_at: datetime | None,
        attempt: int,
        writes: Sequence[StepWrite] = (),
    ) -> bool:
        """Release the run into a parked ``status`` with the steps that led there."""
        params = {
            "rid": run_id,
            "p_fence": fence,
            "p_wake_at": wake_at,
            "p_due_at": due_at,
            "p_attempt": attempt,
        }
        one = self._in_one_statement(status, params, writes)
        if one is not None:
            return one
        if self.driver is not None:
            try:
                return self.driver.fenced(fence, writes, status, params)
            except DriverRefused:
                pass  # the same write through SQLAlchemy: it succeeds or says why not
        return self._fenced(fence, writes, self.sql.move[status], params)

    def _in_one_statement(
        self, status: RunStatus, params: dict[str, Any], writes: Sequence[StepWrite]
    ) -> bool | None:
        """PostgreSQL: the run's move to ``status`` (its end or a park) with no step, or
        with one step (new: a sleep that parks it, the last step's result; updated: a
        sleep that ended, a step that succeeded on a later attempt), as one
        self-fencing statement in autocommit; None where it takes a transaction."""
        if not self.sql.single_statement_writes:
            return None
        if not writes:
            if self.driver is not None:
                try:
                    return self.driver.run_update_alone(status, params)
                except DriverRefused:
                    pass  # SQLAlchemy's path below: the same write, or the error classified
            with self._autocommit():
                return bool(self.conn.execute(self.sql.run_update[status], params).rowcount == 1)
        if len(writes) == 1:
            return self._with_step(status, params, *writes[0])
        return None

    def _with_step(
        self, status: RunStatus, params: dict[str, Any], step: Mapping[str, Any], new: bool
    ) -> bool:
        """One step (``new``, or updated) and the run's move to ``status`` (its end or
        a park) as one self-fencing statement; False if the fence no longer holds."""
        values = with_step_params(params, step)
        if self.driver is not None:
            try:
                return self.driver.with_step_alone(status, values, new)
            except DriverRefused:
                pass  # SQLAlchemy's path below: the same write, or the error classified
        statement = (self.sql.with_step if new else self.sql.with_updated_step)[status]
        with self._autocommit():
            return self.conn.execute(statement, values).first() is not None

    def release(
        self,
        run_id: str,
        fence: int,
        *,
        wake_at: datetime,
        due_at: datetime,
        writes: Sequence[StepWrite] = (),
    ) -> bool:
        """Give a running run back, queued until ``wake_at``, after the store or the
        broker failed under it (its attempt is not counted). False if it is no longer
        running under this fence: the write that seemed to fail did commit."""
        params = {"rid": run_id, "p_fence": fence, "p_wake_at": wake_at, "p_due_at": due_at}
        return self._fenced(fence, writes, self.sql.release, params)

    def release_unregistered(
        self, run_id: str, fence: int, *, message: str, due_at: datetime
    ) -> bool:
        """Put back a run whose function this worker does not have: queued (a worker
        that has it may take it), with ``message`` noted in its ``error`` as
        ``{"type": "FunctionNotRegistered", ...}`` until a claim clears it."""
        note = to_json({"type": UNREGISTERED, "message": message}, "note")
        update = (
            runs.update()
            .where(runs.c.id == run_id, runs.c.fence == fence, runs.c.status == S.RUNNING.value)
            .values(
                status=S.QUEUED.value,
                error=note,
                wake_at=None,
                due_at=due_at,
                lease_owner=None,
                lease_expires_at=None,
            )
        )
        return self._fenced(fence, (), update, {})

    def finish(
        self,
        run_id: str,
        fence: int,
        *,
        status: RunStatus,
        now: datetime,
        output: str | None = None,
        error: str | None = None,
        writes: Sequence[StepWrite] = (),
        clear_waits: bool = False,
        parent: tuple[str, str, int | None] | None = None,
        resume_due: datetime | None = None,
        sending: Sending | None = None,
        hand_over: SlotHandOver | None = None,
    ) -> tuple[bool, bool]:
        """End the run in ``status`` with the steps not yet written. ``clear_waits``
        drops its cancel_on waiters; ``parent`` (run id, step key, branch) is the
        invoke or parallel step this run's outcome resolves; ``sending`` (events the
        run sends) is recorded in the same transaction; with ``hand_over`` the run's
        concurrency slot goes, in the same transaction, to the run next in line,
        claimed for this executor (:attr:`handed`). Returns (still held the run, the
        parent was resumed)."""
        self.handed = None
        params = {
            "rid": run_id,
            "p_fence": fence,
            "p_output": output,
            "p_error": error,
            "now": now,
        }
        resumed: list[bool] = []
        if not clear_waits and parent is None and sending is None and hand_over is not None:
            # the commonest end under a concurrency limit: the slot goes to the next run
            one = self._end_handing_over(status, params, writes, hand_over)
            if one is not None:
                return one, False
        elif not clear_waits and parent is None and sending is None:
            # the commonest ends: the last step's result (or none) and the run's end
            one = self._in_one_statement(status, params, writes)
            if one is not None:
                return one, False
            if self.driver is not None:
                try:
                    return self.driver.fenced(fence, writes, status, params), False
                except DriverRefused:
                    pass  # SQLAlchemy's path below: the same write, or the error classified

        def after(conn: sa.Connection) -> None:
            if clear_waits:
                conn.execute(waits.delete().where(waits.c.run_id == run_id))
            if parent is not None:
                resumed.append(
                    resolve_parent(
                        conn,
                        parent[0],
                        parent[1],
                        branch=parent[2],
                        output=output,
                        error=error,
                        now=now,
                        resume_due=resume_due or now,
                    )
                )
            if sending is not None:
                self._send(conn, sending)
            if hand_over is not None:
                self.handed = self._hand_over(hand_over, now)

        held = self._fenced(fence, writes, self.sql.finish[status], params, after)
        if not held:
            self.handed = None
        return held, bool(resumed and resumed[0])

    def invoke(
        self,
        run_id: str,
        fence: int,
        *,
        wake_at: datetime | None,
        attempt: int,
        writes: Sequence[StepWrite],
        children: list[RunRow],
    ) -> bool:
        """Park the run on child runs (created here, in the same transaction)."""
        params = {
            "rid": run_id,
            "p_fence": fence,
            "p_wake_at": wake_at,
            "p_due_at": wake_at,
            "p_attempt": attempt,
        }

        def add_children(conn: sa.Connection) -> None:
            conn.execute(runs.insert(), children)
            # Timeouts(finish=) still holds while the run waits on its children: the
            # reconciler cancels it (and them) then, as it does a sleeping run
            deadline = runs.c.finish_deadline
            conn.execute(
                runs.update()
                .where(
                    runs.c.id == run_id,
                    deadline.is_not(None),
                    sa.or_(runs.c.due_at.is_(None), runs.c.due_at > deadline),
                )
                .values(due_at=deadline)
            )

        return self._fenced(fence, writes, self.sql.move[S.WAITING], params, add_children)

    def fail_timed_out(
        self, fence: int, writes: Sequence[StepWrite], run_id: str, key: str, error: str
    ) -> tuple[bool, str | None]:
        """At an invoke's timeout: fail its step unless the child resolved it first.
        Returns (still holds the run, the step's status if the child won)."""
        outcome: list[str | None] = []

        def take(conn: sa.Connection) -> None:
            outcome.append(resolve_timed_out_step(conn, run_id, key, error, datetime_now()))

        holds = self._fenced(fence, writes, also=take)
        return holds, (outcome[0] if outcome else None)

    def wait(
        self,
        run_id: str,
        fence: int,
        *,
        wake_at: datetime,
        attempt: int,
        writes: Sequence[StepWrite],
        waiting: StepWrite,
        waiter: WaiterRow,
        lookback: Lookback | None = None,
    ) -> tuple[bool, dict[str, Any] | None]:
        """Park the run until an event (``waiter``) or ``wake_at`` (its timeout).

        With ``lookback``, first take the waiter's correlation lock and search the
        window: an event found there completes the step at once (returned), and an
        event committed concurrently is ordered before or after this transaction
        (the sender reads the same lock row), so none slips between the two.
        Returns (still holds the run, the event taken from the lookback window).
        """
        params = {
            "rid": run_id,
            "p_fence": fence,
            "p_wake_at": wake_at,
            "p_due_at": wake_at,
            "p_attempt": attempt,
        }
        try:
            with self.store.write_lock(), self._transaction():
                self._write_steps(fence, writes)
                if lookback is not None:
                    lock_wait_field(self.conn, self.store.insert_wait_field(), waiter)
                    event = find_recent_event(
                        self.conn, lookback.event_name, lookback.since, lookback.accepts
                    )
                    if event is not None:
                        values = waiting[0].copy()
                        values["status"] = StepStatus.COMPLETED.value
                        values["wake_at"] = None
                        values["ended_at"] = datetime_now()
                        values["output"] = to_json(event, "event")
                        self._write_steps(fence, [(values, waiting[1])])
                        return True, event
                if self.conn.execute(self.sql.move[S.WAITING], params).rowcount != 1:
                    raise _Refused
                self._write_steps(fence, [waiting])
                register_wait(self.conn, self.store.insert_wait_field(), waiter)
        except _Refused:
            return False, None
        return True, None

    def resolve_timeout(
        self, fence: int, writes: Sequence[StepWrite], timed_out: StepWrite
    ) -> tuple[bool, str | None]:
        """At a wait's timeout: take the waiter and record ``timed_out``, unless an
        event took it first. Returns (still holds the run, the event's JSON or None)."""
        values = timed_out[0]
        won_by_event: list[str | None] = []

        def take(conn: sa.Connection) -> None:
            gone = conn.execute(
                waits.delete().where(
                    waits.c.run_id == values["run_id"], waits.c.key == values["key"]
                )
            ).rowcount
            if gone == 1:
                self._write_steps(fence, [timed_out])
                return
            won_by_event.append(
                conn.execute(
                    sa.select(steps.c.output).where(
                        steps.c.run_id == values["run_id"], steps.c.key == values["key"]
                    )
                ).scalar()
            )

        holds = self._fenced(fence, writes, also=take)
        return holds, (won_by_event[0] if won_by_event else None)

    def record_events(
        self, fence: int, writes: Sequence[StepWrite], sending: Sending
    ) -> Recorded | None:
        """``step.send_event``: its events and its step in one fenced transaction, so
        a replay never sends twice. None if this executor no longer holds the run."""
        if not self._fenced(fence, writes, also=lambda conn: self._send(conn, sending)):
            return None
        return sending.recorded

    def _send(self, conn: sa.Connection, sending: Sending) -> None:
        # each try of the transaction (a lost connection retries it) records anew
        sending.recorded = self.store.record_events_on(
            conn,
            sending.events,
            sending.plan,
            sending.now,
            resume_due=sending.resume_due,
            condition_holds=condition_holds,
        )

    def peek(self, run_id: str) -> sa.RowMapping | None:
        return self.store.peek(run_id)  # a read: no write lock, no held transaction
