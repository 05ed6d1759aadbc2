"""The cron tick ledger: one row per (function, slot), so a slot fires once."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import sqlalchemy as sa

from .rows import RunRow
from .tables import cron_ticks, runs

if TYPE_CHECKING:
    from .store import Store

__all__ = ["fire_slot"]


def fire_slot(
    store: Store,
    function_id: str,
    slot: datetime,
    now: datetime,
    run: RunRow | None,
    catch_up: timedelta,
) -> bool:
    """Create ``run`` for ``slot`` unless that slot fired already (by any beat). A
    function with no tick yet records an old slot without firing it; so does a
    paused function (``run`` None), so resuming it does not fire the slots it
    missed. True if the run was created."""
    with store.write_lock(), store.engine.begin() as conn:
        if slot < now - catch_up:
            seen = conn.execute(
                sa.select(cron_ticks.c.function_id)
                .where(cron_ticks.c.function_id == function_id)
                .limit(1)
            ).first()
            if seen is None:  # first sight of this function: a baseline, no run
                baseline = {"scheduled_at": slot, "run_id": None, "fired_at": now}
                store.insert_if_new(conn, cron_ticks, {"function_id": function_id, **baseline})
                return False
        run_id = run["id"] if run is not None else None
        tick = {"function_id": function_id, "scheduled_at": slot, "run_id": run_id}
        if not store.insert_if_new(conn, cron_ticks, {**tick, "fired_at": now}):
            return False
        if run is None:
            return False
        conn.execute(runs.insert(), [run])
        return True
