"""Per-function statistics over a window of runs, for the dashboard's functions page.

* Counts by (function, status) of the runs created in the window: a range of
  ``ix_cf_runs_created``, which holds both columns (migration 0009), so PostgreSQL
  counts from the index alone. Still O(runs in the window): ~60 ms for a day of
  172,800 runs, ~260 ms for a week of a million (bench/RESULTS.md "Dashboard"), so
  a dashboard asks for hours or a day, not months.
* p50/p95 of the durations of the newest ``sample`` ended runs of each function: a
  backward walk of ``ix_cf_runs_function_created`` per function that stops at
  ``sample`` rows, whatever the window holds.
"""

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
STATS_FUNCTIONS_PER_QUERY = 50


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


def _seconds(dialect: str) -> sa.ColumnElement[Any]:
    """A run's duration (its end minus its first start, or its creation) in seconds,
    computed by the database: decoding three timestamps a row in Python was most of
    the functions page's time (10,000 sampled rows)."""
    end, start = runs.c.ended_at, sa.func.coalesce(runs.c.started_at, runs.c.created_at)
    if dialect == "postgresql":
        return sa.extract("epoch", end - start)
    if dialect in ("mysql", "mariadb"):
        return sa.func.timestampdiff(sa.text("MICROSECOND"), start, end) / 1_000_000.0
    return (sa.func.julianday(end) - sa.func.julianday(start)) * 86_400.0


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
        # the newest `sample` ended runs of each function, each a backward walk of
        # ix_cf_runs_function_created that stops at `sample` rows, so the cost is
        # functions x sample whatever the window holds; UNION ALL of a few
        # functions a round trip (SQLite wants each LIMIT in a subquery)
        collected: dict[str, list[float]] = defaultdict(list)
        names = sorted(counts)
        took = _seconds(store.engine.dialect.name).label("took")
        for first in range(0, len(names), STATS_FUNCTIONS_PER_QUERY):
            parts = [
                sa.select(
                    sa.select(runs.c.function_id, took)
                    .where(
                        *window,
                        runs.c.function_id == fid,
                        runs.c.status.in_(ended),
                        runs.c.ended_at.is_not(None),
                    )
                    .order_by(runs.c.created_at.desc())
                    .limit(sample)
                    .subquery()
                )
                for fid in names[first : first + STATS_FUNCTIONS_PER_QUERY]
            ]
            timing = parts[0] if len(parts) == 1 else sa.union_all(*parts)
            for fid, seconds in conn.execute(timing):
                collected[str(fid)].append(float(seconds))
        durations = {
            fid: [timedelta(seconds=v) for v in sorted(values)] for fid, values in collected.items()
        }
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
