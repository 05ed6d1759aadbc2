"""The flow controls that decide at the event, as a registry.

Each control is one object: the function's setting (a model of config.py, or the
idempotency expression), its key expression, the rows it keeps in ``cf_flow_keys``
(its ``scope``, and how long one matters: :class:`Keep`, which retention reads), and
:meth:`Control.admit`, its decision for one planned run. The
store's ``flowkeys.admit`` asks them in :data:`ADMISSION_CONTROLS` order, in the
transaction that records the event, through a :class:`Ledger` (the store's locked
rows: this package writes no SQL). Adding a control is a class here, registered in
:data:`ADMISSION_CONTROLS`, its setting model and ``FunctionConfig`` field, and its
test.

Concurrency and priority are not here: they decide at the claim (a slot) and in the
run's queue position, not when the event is recorded (plan.py, store/flowkeys.py).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

from .config import Batch, Debounce, RateLimit, Singleton, Throttle

if TYPE_CHECKING:
    # only the type: the planned run rows are the store's (store/rows.py), which
    # hands them to the controls; this package imports nothing of the store at runtime
    from ..store.rows import RunRow

__all__ = [
    "ADMISSION_CONTROLS",
    "Admitted",
    "BatchControl",
    "Control",
    "DebounceControl",
    "IdempotencyControl",
    "Keep",
    "Ledger",
    "RateLimitControl",
    "SingletonControl",
    "ThrottleControl",
    "skip",
]

IDEMPOTENCY_WINDOW = timedelta(hours=24)
SettingT = TypeVar("SettingT")


@dataclass
class Admitted:
    """What flow control made of a planned run: the row to insert (perhaps as
    ``skipped``), or None when the event joined a debounced or batched run; and runs
    to ring now (a batch that filled up)."""

    row: RunRow | None
    ring: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)  # by Singleton(mode="cancel")


class Ledger(Protocol):
    """What a control may do in the recording transaction (store/flowkeys.py)."""

    now: datetime

    def lock(self, scope: str, key: str) -> Mapping[Any, Any]:
        """The function's ``cf_flow_keys`` row of (scope, key), created if missing,
        locked until the commit."""
        ...

    def set(self, lock: Mapping[Any, Any], **values: Any) -> None:
        """Update a locked row."""
        ...

    def unfinished(self, run_id: str) -> bool: ...

    def cancel(self, run_id: str) -> None:
        """Cancel the run (its descendants follow after the commit)."""
        ...

    def reopen(self, run_id: str, row: RunRow, wake: datetime) -> bool:
        """Give a debounced run still open the newest event and start it at ``wake``."""
        ...

    def join_batch(self, run_id: str, row: RunRow, max_size: int) -> bool | None:
        """Add the event to the open batch: None if it is no longer open, else
        whether the batch is now full (and starts at once)."""
        ...

    def start_at(self, row: RunRow, when: datetime) -> None:
        """The planned run starts no earlier than ``when``."""
        ...


def skip(row: RunRow, now: datetime, reason: str, message: str) -> Admitted:
    """The planned run becomes the skipped record of why."""
    error = {"type": "Skipped", "reason": reason, "message": message}
    row.update(
        {
            "status": "skipped",
            "error": json.dumps(error),
            "ended_at": now,
            "due_at": None,
            "wake_at": None,
        }
    )
    return Admitted(row)


class Keep(enum.Enum):
    """How long a control's ``cf_flow_keys`` row decides anything: past that, retention
    may delete it (store/prune.py)."""

    UNTIL = "until"  # until its time (``until``) has passed
    RUN_UNFINISHED = "run unfinished"  # while the run it names has not ended
    RUN_OPEN = "run open"  # while the run it names still takes events (never claimed)


class Control(Generic[SettingT]):
    """One control of one function, deciding at the event."""

    option: ClassVar[str]  # its FunctionConfig option (a keyword of Flow.function)
    scope: ClassVar[str]  # its rows in cf_flow_keys
    keeps: ClassVar[Keep]  # how long such a row matters

    def __init__(self, setting: SettingT) -> None:
        self.setting = setting

    @property
    def label(self) -> str:
        """The key expression's name in errors and logs."""
        return f"{self.option}.key"

    @property
    def key_source(self) -> str | None:
        """The key expression (CEL over ``event``); None: one key for the function."""
        key = getattr(self.setting, "key", None)
        return key if isinstance(key, str) else None

    def admit(self, ledger: Ledger, row: RunRow, key: str) -> Admitted | None:
        """Decide for the planned run ``row`` under ``key``: an :class:`Admitted`
        ends the decision, None leaves it to the next control."""
        raise NotImplementedError


class RateLimitControl(Control[RateLimit]):
    """GCRA, as Inngest: ``until`` holds the theoretical arrival time; each admitted
    run moves it one emission interval (period / limit). Beyond it: skipped."""

    option = "rate_limit"
    scope = "rate_limit"
    keeps = Keep.UNTIL

    def admit(self, ledger: Ledger, row: RunRow, key: str) -> Admitted | None:
        limit, now = self.setting, ledger.now
        k = ledger.lock(self.scope, key)
        interval = limit.period / limit.limit
        tat = max(k["until"] or now, now)
        if tat - now > limit.period - interval:
            return skip(row, now, "rate_limit", f"rate limit of {limit.limit} per {limit.period}")
        ledger.set(k, until=tat + interval)
        return None


class IdempotencyControl(Control[str]):
    """One run per key value per 24 h; the setting is the key expression itself."""

    option = "idempotency"
    scope = "idempotency"
    keeps = Keep.UNTIL

    @property
    def label(self) -> str:
        return self.option

    @property
    def key_source(self) -> str | None:
        return self.setting

    def admit(self, ledger: Ledger, row: RunRow, key: str) -> Admitted | None:
        now = ledger.now
        k = ledger.lock(self.scope, key)
        if k["until"] is not None and k["until"] > now:
            return skip(row, now, "idempotency", f"run {k['run_id']} has the same key")
        ledger.set(k, run_id=row["id"], until=now + IDEMPOTENCY_WINDOW)
        return None


class SingletonControl(Control[Singleton]):
    """At most one unfinished run per key: skip the new one or cancel the old one."""

    option = "singleton"
    scope = "singleton"
    keeps = Keep.RUN_UNFINISHED

    def admit(self, ledger: Ledger, row: RunRow, key: str) -> Admitted | None:
        now = ledger.now
        k = ledger.lock(self.scope, key)
        holder = k["run_id"]
        if holder is not None and ledger.unfinished(holder):
            if self.setting.mode == "skip":
                return skip(row, now, "singleton", f"run {holder} is still in flight")
            ledger.cancel(holder)
        ledger.set(k, run_id=row["id"], since=now)
        return None


class DebounceControl(Control[Debounce]):
    """One run, pushed back by each event, carrying the newest."""

    option = "debounce"
    scope = "debounce"
    keeps = Keep.RUN_OPEN

    def admit(self, ledger: Ledger, row: RunRow, key: str) -> Admitted | None:
        debounce, now = self.setting, ledger.now
        k = ledger.lock(self.scope, key)
        wake = now + debounce.period
        if k["run_id"] is not None:
            if debounce.timeout is not None and k["since"] is not None:
                wake = min(wake, k["since"] + debounce.timeout)
            if ledger.reopen(k["run_id"], row, wake):
                return Admitted(None)
        ledger.start_at(row, wake)
        ledger.set(k, run_id=row["id"], since=now)
        return None


class BatchControl(Control[Batch]):
    """One run collecting events until it is full or its timeout comes."""

    option = "batch_events"
    scope = "batch"
    keeps = Keep.RUN_OPEN

    def admit(self, ledger: Ledger, row: RunRow, key: str) -> Admitted | None:
        batch, now = self.setting, ledger.now
        k = ledger.lock(self.scope, key)
        if k["run_id"] is not None:
            joined = ledger.join_batch(k["run_id"], row, batch.max_size)
            if joined is not None:
                if joined:
                    ledger.set(k, run_id=None)
                    return Admitted(None, [k["run_id"]])
                return Admitted(None)
        if batch.max_size > 1:
            ledger.start_at(row, now + batch.timeout)
            ledger.set(k, run_id=row["id"], since=now)
        return None


class ThrottleControl(Control[Throttle]):
    """GCRA like the rate limit, but a run beyond the rate starts later: none dropped."""

    option = "throttle"
    scope = "throttle"
    keeps = Keep.UNTIL

    def admit(self, ledger: Ledger, row: RunRow, key: str) -> Admitted | None:
        throttle, now = self.setting, ledger.now
        k = ledger.lock(self.scope, key)
        interval = throttle.period / throttle.limit
        tat = max(k["until"] or now, now)
        start = max(now, tat - interval * (throttle.burst - 1))
        ledger.set(k, until=tat + interval)
        wake = row["wake_at"]
        if start > now and (wake is None or wake < start):
            ledger.start_at(row, start)
        return None


# The order of the decision: a skipped event consumes nothing further down.
ADMISSION_CONTROLS: tuple[type[Control[Any]], ...] = (
    RateLimitControl,
    IdempotencyControl,
    SingletonControl,
    DebounceControl,
    BatchControl,
    ThrottleControl,
)
