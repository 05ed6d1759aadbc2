"""Per-function statistics over a window of runs, for the dashboard's functions page
and the CLI (see :func:`function_stats`)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from ..runs import RunStatus
from .tables import runs

if TYPE_CHECKING:
    from .store import Store

__all__ = ["STATS_SAMPLE", "FunctionStats", "function_stats"]

STATS_SAMPLE = 10_000


@dataclass(frozen=True)
class FunctionStats:
    function_id: str
    counts: dict[str, int]  # runs created in the window, by status
    failure_rate: float | None  # failed / (completed + failed); None if none ended
    p50: timedelta | None  # durations of the newest ended runs (at most the sample)
    p95: timedelta | None
    sampled: int

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_json(self) -> dict[str, Any]:
        return {
            "function_id": self.function_id,
            "counts": self.counts,
            "total": self.total,
            "failure_rate": self.failure_rate,
            "p50_s": self.p50.total_seconds() if self.p50 is not None else None,
            "p95_s": self.p95.total_seconds() if self.p95 is not None else None,
            "sampled": self.sampled,
        }


def _percentile(sorted_values: list[timedelta], q: float) -> timedelta | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def function_stats(
    store: Store,
    *,
    since: datetime,
    until: datetime | None = None,
    function_id: str | None = None,
    sample: int = STATS_SAMPLE,
) -> list[FunctionStats]:
    """Per function, the runs created in [since, until): counts by status, failure
    rate, and p50/p95 of the durations of (at most ``sample``) newest ended ones."""
    window = [runs.c.created_at >= since]
    if until is not None:
        window.append(runs.c.created_at < until)
    of_function = [runs.c.function_id == function_id] if function_id is not None else []
    counting = (
        sa.select(runs.c.function_id, runs.c.status, sa.func.count())
        .where(*window, *of_function)
        .group_by(runs.c.function_id, runs.c.status)
    )
    ended = [RunStatus.COMPLETED.value, RunStatus.FAILED.value]
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    durations: dict[str, list[timedelta]] = {}
    with store.engine.connect() as conn:
        for fid, status, count in conn.execute(counting):
            counts[str(fid)][str(status)] = int(count)
        # one round trip for every function: the newest `sample` ended runs of each
        # (ROW_NUMBER: PostgreSQL, SQLite >= 3.25 and MariaDB >= 10.2 all have it)
        newest = sa.func.row_number().over(
            partition_by=runs.c.function_id, order_by=runs.c.created_at.desc()
        )
        ranked = (
            sa.select(
                runs.c.function_id,
                runs.c.created_at,
                runs.c.started_at,
                runs.c.ended_at,
                newest.label("n"),
            )
            .where(*window, *of_function, runs.c.status.in_(ended))
            .subquery()
        )
        timing = sa.select(ranked).where(ranked.c.n <= sample)
        collected: dict[str, list[timedelta]] = defaultdict(list)
        for row in conn.execute(timing):
            if row.ended_at is not None:
                started = row.started_at or row.created_at
                collected[str(row.function_id)].append(row.ended_at - started)
        durations = {fid: sorted(values) for fid, values in collected.items()}
    result = []
    for fid in sorted(counts):
        by_status = counts[fid]
        done = by_status.get("completed", 0) + by_status.get("failed", 0)
        taken = durations.get(fid, [])
        result.append(
            FunctionStats(
                function_id=fid,
                counts=dict(sorted(by_status.items())),
                failure_rate=by_status.get("failed", 0) / done if done else None,
                p50=_percentile(taken, 0.5),
                p95=_percentile(taken, 0.95),
                sampled=len(taken),
            )
        )
    return result
