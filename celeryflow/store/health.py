"""What ``celeryflow doctor`` reads from the store: the reconcilers' heartbeats (each
pass stamps its row in ``cf_heartbeats``), the newest cron tick of each function,
and the runs queued for longer than they should be."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import sqlalchemy as sa

from ..runs import RunStatus
from .tables import cron_ticks, heartbeats, runs

if TYPE_CHECKING:
    from .store import Store

__all__ = ["HEARTBEAT_KEPT", "Heartbeat", "StuckQueued", "beat", "last_ticks", "seen", "stuck"]

# a heartbeat row older than this is removed by the next beat of anyone (a worker
# process that ended leaves its row behind)
HEARTBEAT_KEPT = timedelta(days=1)


@dataclass(frozen=True)
class Heartbeat:
    owner: str
    host: str
    seen_at: datetime


@dataclass(frozen=True)
class StuckQueued:
    """Runs of one function queued (and not held back by a retry back-off) since
    before the doctor's threshold; ``for_slot``: how many wait for a concurrency slot."""

    function_id: str
    count: int
    oldest: datetime
    for_slot: int


def beat(store: Store, kind: str, owner: str, host: str, now: datetime) -> None:
    """Stamp ``owner``'s heartbeat of ``kind`` (one small row, updated in place)."""
    with store.write_lock(), store.engine.begin() as conn:
        updated = conn.execute(
            heartbeats.update()
            .where(heartbeats.c.kind == kind, heartbeats.c.owner == owner)
            .values(seen_at=now, host=host)
        ).rowcount
        if updated != 1:
            row = {"kind": kind, "owner": owner, "host": host[:255], "seen_at": now}
            store.insert_if_new(conn, heartbeats, row)
            conn.execute(heartbeats.delete().where(heartbeats.c.seen_at < now - HEARTBEAT_KEPT))


def seen(store: Store, kind: str) -> list[Heartbeat]:
    """The heartbeats of ``kind``, newest first (a small table: one row per process)."""
    query = sa.select(heartbeats).where(heartbeats.c.kind == kind)
    with store.engine.connect() as conn:
        rows = conn.execute(query.order_by(heartbeats.c.seen_at.desc())).mappings().all()
    return [Heartbeat(str(r["owner"]), str(r["host"]), r["seen_at"]) for r in rows]


def last_ticks(store: Store, function_ids: Iterable[str]) -> dict[str, datetime | None]:
    """The newest recorded cron slot of each function (fired, or skipped while
    paused); one primary-key lookup each."""
    found: dict[str, datetime | None] = {}
    with store.engine.connect() as conn:
        for function_id in function_ids:
            found[function_id] = conn.execute(
                sa.select(sa.func.max(cron_ticks.c.scheduled_at)).where(
                    cron_ticks.c.function_id == function_id
                )
            ).scalar()
    return found


def stuck(store: Store, queued_before: datetime, now: datetime) -> list[StuckQueued]:
    """Per function, the runs queued since before ``queued_before`` whose wake time
    (if any) has come: a range of ``ix_cf_runs_status_created``."""
    slot = sa.func.count(runs.c.concurrency_key1) + sa.func.count(runs.c.concurrency_key2)
    query = (
        sa.select(
            runs.c.function_id, sa.func.count(), sa.func.min(runs.c.created_at), slot.label("slot")
        )
        .where(
            runs.c.status == RunStatus.QUEUED.value,
            runs.c.created_at < queued_before,
            sa.or_(runs.c.wake_at.is_(None), runs.c.wake_at <= now),
        )
        .group_by(runs.c.function_id)
        .order_by(runs.c.function_id)
    )
    with store.engine.connect() as conn:
        return [
            StuckQueued(str(fid), int(count), oldest, int(for_slot or 0))
            for fid, count, oldest, for_slot in conn.execute(query)
        ]
