"""How an execution gets its run: a :class:`ClaimingSession` holds the one
connection of the execution (store/session.py's :class:`RunSession` writes on it),
claims the run, reads its recorded steps, and takes or hands over concurrency slots:
a finishing run's slot goes to the run next in line, claimed in the same statement
(PostgreSQL, where the counts do not change) or transaction.

Where the commonest writes are one self-fencing statement (PostgreSQL), the
connection stays in autocommit and switches only around a transaction of several
statements (:meth:`ClaimingSession._transaction`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, Self

import sqlalchemy as sa

from ..runs import RunStatus
from .flowkeys import SlotHandOver, next_in_line, take_slot
from .one_statement import with_step_params
from .rows import Claim, StepWrite
from .session_driver import DriverRefused, DriverWrites, ensure_autocommit
from .tables import runs

if TYPE_CHECKING:
    from .store import Store

__all__ = ["ClaimingSession"]

S = RunStatus


class ClaimingSession:
    """One execution's connection to the store, and its claims."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.sql = store.session_statements()
        self.conn = store.engine.connect()
        # Where the commonest writes are one self-fencing statement each (the claim, a
        # step, the usual finish: PostgreSQL), the connection stays in autocommit and
        # switches only around a transaction of several statements: switching costs
        # two driver calls each way, more than a step's own statement.
        self.autocommit_default = self.sql.single_statement_writes
        if self.autocommit_default:
            self.conn.execution_options(isolation_level="AUTOCOMMIT")
        self.driver = (
            DriverWrites(self.conn, self.sql, store.write_lock) if self.sql.on_driver else None
        )
        # the run the last finish handed its concurrency slot to, claimed (finish())
        self.handed: Claim | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.close()

    def claim(
        self,
        run_id: str,
        owner: str,
        now: datetime,
        lease_until: datetime,
        slot_limits: Callable[[str], list[int]] | None = None,
        limited: Collection[str] = (),
    ) -> Claim | None:
        """Take the run if it may proceed now; None if it may not (finished, parked
        until later, held by a live executor, or, under ``slot_limits(function_id)``
        (its concurrency limits), left queued for a slot). ``limited``: the ids of
        the functions that have concurrency limits."""
        params = {"rid": run_id, "owner": owner, "now": now, "lease_until": lease_until}
        if self.sql.single_statement_writes:
            claim = self._claim_in_one_statement(params, limited)
            if claim is not None or not limited:
                return claim
        if self.driver is not None:
            try:
                return self.driver.claim(params, slot_limits)
            except DriverRefused:
                pass  # SQLAlchemy's path: it claims, takes the slot, or says why not
        with self.store.write_lock(), self._transaction():
            if self.sql.async_claim:
                # The claim needs no flush of its own: it is visible to other sessions at
                # once, and WAL is sequential, so the executor's next durable commit
                # flushes it too. A server crash before that loses only the claim; the
                # run is queued again and the reconciler rings for it.
                self.conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
            if self.sql.update_returning:
                row = self.conn.execute(self.sql.claim, params).mappings().first()
                if row is None:
                    return None
            else:
                if self.conn.execute(self.sql.claim, params).rowcount != 1:
                    return None
                row = self.conn.execute(self.sql.claimed, params).mappings().one()
            fence = int(row["fence"])
            limits = slot_limits(row["function_id"]) if slot_limits else []
            if limits and not take_slot(self.conn, self.store.insert_flow_key(), row, limits, now):
                self._park_for_slot(row, fence)
                return None
            return self._with_memo(row, fence)

    def _with_memo(self, row: sa.RowMapping, fence: int) -> Claim:
        """The claim of ``row`` with its recorded steps (none before its first claim)
        and, for a step.parallel branch, its parent's, read on this connection."""
        claim = Claim(run=row, fence=fence, steps={})
        if not claim.first:
            claim.steps = self._steps_of(row["id"])
        if row["branch"] is not None:
            claim.parent_steps = self._steps_of(row["parent_run_id"])
        return claim

    def _memo_alone(self, row: sa.RowMapping) -> Claim:
        """The claim of ``row``, claimed by a statement of its own, with its steps."""
        if self.driver is not None:
            try:
                return self.driver.memo_alone(row)
            except DriverRefused:
                pass  # the claim stands: its steps are read through SQLAlchemy
        with self._autocommit():  # its reads end there, not in an autobegun transaction
            return self._with_memo(row, int(row["fence"]))

    def _steps_of(self, run_id: str) -> dict[str, sa.RowMapping]:
        rows = self.conn.execute(self.sql.load_steps, {"rid": run_id}).mappings()
        return {r["key"]: r for r in rows}

    @contextmanager
    def _autocommit(self) -> Iterator[None]:
        """Statements here commit one by one, without BEGIN and COMMIT round trips:
        only for writes that are a single, self-fencing statement."""
        if self.autocommit_default:
            ensure_autocommit(self.conn)
            with self.conn.begin():
                yield
            return
        self.conn.execution_options(isolation_level="AUTOCOMMIT")
        try:
            with self.conn.begin():
                yield
        finally:
            self.conn.execution_options(isolation_level=self.conn.default_isolation_level)

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """A transaction of several statements, all or nothing."""
        if not self.autocommit_default:
            with self.conn.begin():
                yield
            return
        self.conn.execution_options(isolation_level=self.conn.default_isolation_level)
        try:
            with self.conn.begin():
                yield
        finally:
            # a lost connection is set again by its next one-statement write
            if not self.conn.invalidated:
                self.conn.execution_options(isolation_level="AUTOCOMMIT")

    def _claim_in_one_statement(
        self, params: dict[str, Any], limited: Collection[str]
    ) -> Claim | None:
        values = {**params, "limited": list(limited)}
        if self.driver is not None:
            try:
                rows = self.driver.claim_alone(values)
            except DriverRefused:
                pass  # SQLAlchemy's path below: the same claim, or the error classified
            else:
                if not rows:
                    return None
                return self._memo_alone(rows[0])
        with self._autocommit():
            row = self.conn.execute(self.sql.claim_in_one_statement, values).mappings().first()
            if row is None:
                return None
            # The steps cannot change while this executor holds the fence (a cancel
            # bumps it and the next write is refused), so they need not be read in
            # the claim's own transaction.
            return self._with_memo(row, int(row["fence"]))

    def _park_for_slot(self, row: sa.RowMapping, fence: int) -> None:
        """Undo the claim: queued, the fence handed back, as if never claimed. Nothing
        is due but its Timeouts (the reconciler cancels it then); a slot's release
        rings it, not the reconciler, so waiting sends no messages."""
        deadlines = [row["finish_deadline"]]
        values: dict[str, Any] = {
            "status": S.QUEUED.value,
            "lease_owner": None,
            "lease_expires_at": None,
            "wake_at": None,
            "fence": runs.c.fence - 1,
        }
        if fence == 1:  # Claim.first: it never started after all
            values["started_at"] = None
            deadlines.append(row["start_deadline"])
        pending = [d for d in deadlines if d is not None]
        values["due_at"] = min(pending) if pending else None
        self.conn.execute(runs.update().where(runs.c.id == row["id"]).values(**values))

    def _end_handing_over(
        self,
        status: RunStatus,
        params: dict[str, Any],
        writes: Sequence[StepWrite],
        hand_over: SlotHandOver,
    ) -> bool | None:
        """PostgreSQL: the run's end (with at most one step) and the claim of the run
        next in line for its slot, where the move changes no count
        (SlotHandOver.count_neutral), as one statement in autocommit; the claimed run
        becomes :attr:`handed`. None where it takes the transaction of
        :meth:`_hand_over`."""
        key, *others = hand_over.keys
        simple = hand_over.count_neutral and key is not None and not any(others)
        if not self.sql.end_handing_over or not simple or len(writes) > 1:
            return None
        step = None if not writes else "new" if writes[0][1] else "updated"
        values = with_step_params(params, writes[0][0]) if writes else dict(params)
        values.update(
            h_function_id=hand_over.function_id,
            h_key=key,
            owner=hand_over.owner,
            lease_until=params["now"] + hand_over.lease,
        )
        rows: list[sa.RowMapping] | None = None
        if self.driver is not None:
            try:
                rows = self.driver.end_handing_over(status, step, values)
            except DriverRefused:
                pass  # SQLAlchemy's path below: the same write, or the error classified
        if rows is None:
            with self._autocommit():
                statement = self.sql.end_handing_over[status, step]
                rows = list(self.conn.execute(statement, values).mappings())
        if not rows:
            return False
        if rows[0]["id"] is not None:
            self.handed = self._memo_alone(rows[0])
        return True

    def _hand_over(self, hand_over: SlotHandOver, now: datetime) -> Claim | None:
        """In the finishing run's transaction, after its end: claim the run next in
        line for the slot it leaves (same function, same keys), if every limit lets
        that run start (with SlotHandOver.count_neutral, it does by construction).
        The slot is never seen free between the two runs, no claim of the next run
        takes it again (a lock, two counts, and often a refusal), and no finisher
        looks it up and rings for it. The end and the claim commit together, so the next run
        starts only once the end it waited for is durable."""
        run_id = next_in_line(self.conn, hand_over, now, self.store.capabilities.skip_locked)
        if run_id is None:
            return None
        params = {
            "rid": run_id,
            "owner": hand_over.owner,
            "now": now,
            "lease_until": now + hand_over.lease,
        }
        if self.sql.update_returning:
            row = self.conn.execute(self.sql.claim, params).mappings().first()
            if row is None:  # claimed meanwhile (a doorbell, another finisher)
                return None
        else:
            if self.conn.execute(self.sql.claim, params).rowcount != 1:
                return None
            row = self.conn.execute(self.sql.claimed, params).mappings().one()
        fence = int(row["fence"])
        limits = list(hand_over.limits)
        if not hand_over.count_neutral and not take_slot(
            self.conn, self.store.insert_flow_key(), row, limits, now
        ):
            # its other key (or an older run of another function on a shared key)
            # holds it back: left queued as before, for the ring after the commit
            self._park_for_slot(row, fence)
            return None
        return self._with_memo(row, fence)
