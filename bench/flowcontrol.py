"""Flow-control benchmark (issue 5): a concurrency limit costs little and floods nothing.

    python bench/flowcontrol.py                         # PostgreSQL and SQLite stores, 3 reps
    python bench/flowcontrol.py --stores postgresql --reps 1

Target (issue 5): 1,000 runs of one function with ``Concurrency(limit=4)`` on two
workers take at most 1.3x the time of the same 1,000 runs without a limit on 4 worker
slots; the broker's message count does not grow while runs wait for a slot. Issue 17
(target 3) tightens the PostgreSQL bound to 1.2x.

Each run is one ``ctx.step.run("work", ...)`` sleeping 20 ms: 4 slots need >= 5 s.
Baseline: ``free`` (no limit) on ONE worker ``-c 4``; measured: ``limited``
(``Concurrency(limit=4)``) on TWO workers ``-c 4`` each (8 slots, 4 may run); prefork
subprocesses of ``celery -A flowcontrol worker``, private Redis db, fresh queue and
store per case, 16 warm-up runs first. Time: ``flow.send([1,000 events])`` until the
newest ``ended_at`` once all runs are ``completed``. Every 250 ms a sampler records the
broker's messages (``LLEN <queue>`` + ``HLEN unacked``: queued + prefetched) and the
function's runs queued / running in the store.

Needs PostgreSQL and Redis as in tests/services.py (see bench/common.py to override).
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import os
import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from celery import Celery
from celery.signals import task_prerun

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import (  # noqa: E402
    Row,
    Table,
    celery_worker,
    fmt_time,
    fresh_redis_db,
    fresh_store,
    machine_info,
    median,
    redis_client,
    redis_url,
    reset_redis_db,
    wait_until,
)

from celeryflow import Concurrency, Event, Flow, event  # noqa: E402
from celeryflow.store.tables import runs as runs_table  # noqa: E402

LIMIT = 4
WORK = 0.02  # seconds of sleep in each run's one step
WARM = 16
TASKS_KEY = "bench:fc:tasks"  # celeryflow.run messages executed (all worker children)
PARKED_KEY = "bench:fc:parked"  # claims undone for want of a slot
REFUSED_KEY = "bench:fc:refused"  # doorbells that claimed nothing (run held or ended)
INSIDE_KEY = "bench:fc:inside"  # step bodies executing now
MAX_INSIDE_KEY = "bench:fc:max-inside"
SAMPLE_EVERY = 0.25
TARGETS = {"postgresql": 1.2, "sqlite": 1.3}  # limited / no limit (issues 17 and 5)
POLL = 0.1


_ENTER = (
    "local v = redis.call('incr', KEYS[1]) "
    "if v > tonumber(redis.call('get', KEYS[2]) or '0') then redis.call('set', KEYS[2], v) end"
)
_redis: dict[int, Any] = {}


def _client() -> Any:
    """One Redis client (the broker's db) per process: prefork children get their own."""
    import redis

    pid = os.getpid()
    if pid not in _redis:
        _redis.clear()
        _redis[pid] = redis.Redis.from_url(os.environ["CF_BENCH_FC_BROKER"])
    return _redis[pid]


def work() -> int:
    """The step body: 20 ms, counted in and out so the most bodies at once are known."""
    client = _client()
    client.eval(_ENTER, 2, INSIDE_KEY, MAX_INSIDE_KEY)
    try:
        time.sleep(WORK)
    finally:
        client.decr(INSIDE_KEY)
    return 1


def build(broker: str, store: str, queue: str) -> tuple[Celery, Flow]:
    """A Celery app with a Flow and the three benchmark functions."""
    app = Celery(f"cf-bench-fc-{queue}", broker=broker)
    app.conf.update(
        task_default_queue=queue,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    flow = Flow(app, store=store, auto_migrate=True)

    def one_step(ctx: Any) -> int:
        return int(ctx.step.run("work", work))

    for fid, limit in (("free", None), ("limited", Concurrency(limit=LIMIT)), ("warm", None)):
        flow.function(id=fid, trigger=event(f"bench/{fid}"), concurrency=limit)(one_step)
    return app, flow


def _count_in_worker() -> None:
    """Worker side: count executed doorbells, doorbells that claimed nothing and claims
    undone for a slot in Redis."""
    from celeryflow.engine import Engine
    from celeryflow.store.session import RunSession

    def incr(key: str) -> None:
        _client().incr(key)

    def on_prerun(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "name", "") == "celeryflow.run":
            incr(TASKS_KEY)

    task_prerun.connect(on_prerun, weak=False)
    park = getattr(RunSession, "_park_for_slot", None)
    if park is not None:  # profiling only: wraps, does not change, the library

        def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
            incr(PARKED_KEY)
            return park(self, *args, **kwargs)

        setattr(RunSession, "_park_for_slot", counted)  # noqa: B010
    refuse = Engine._not_claimed

    def refused(self: Any, *args: Any, **kwargs: Any) -> Any:
        incr(REFUSED_KEY)
        return refuse(self, *args, **kwargs)

    setattr(Engine, "_not_claimed", refused)  # noqa: B010


# The worker subprocesses import this module (``celery -A flowcontrol``) with these set.
if os.environ.get("CF_BENCH_FC_STORE"):
    app, flow = build(
        os.environ["CF_BENCH_FC_BROKER"],
        os.environ["CF_BENCH_FC_STORE"],
        os.environ["CF_BENCH_FC_QUEUE"],
    )
    _count_in_worker()


# ======================================================================================


@dataclass
class Case:
    label: str
    function_id: str
    workers: list[int]  # prefork children per worker process


BASELINE = Case("no limit, 1 worker -c 4", "free", [4])
LIMITED = Case(f"Concurrency(limit={LIMIT}), 2 workers -c 4", "limited", [4, 4])


@dataclass
class Sample:
    t: float  # seconds since the send began
    llen: int
    unacked: int
    queued: int
    running: int

    @property
    def broker(self) -> int:
        return self.llen + self.unacked


@dataclass
class Result:
    elapsed: float  # send -> newest ended_at
    sent: float  # how long flow.send took
    tasks: int
    refused: int  # doorbells that claimed nothing
    parked: int
    claims: int  # sum of fences: successful claims
    dispatches: int  # reconciler rings
    max_concurrent: int
    samples: list[Sample] = field(default_factory=list)
    run_ms: float = 0.0  # median started_at -> ended_at
    handoff_ms: float = 0.0  # median ended_at of the k-th run -> started_at of the (k+4)-th
    started_by: list[int] = field(default_factory=list)  # runs started 1, 2, 3, 4 s in


def profile(res: Result, spans: list[Any], t0: float) -> None:
    """Run time, slot handoff and early progress, from the store's timestamps
    (started_at: before the claim; ended_at: before the final commit)."""
    starts = sorted(r.started_at.timestamp() - t0 for r in spans)
    ends = sorted(r.ended_at.timestamp() - t0 for r in spans)
    res.run_ms = median([(r.ended_at - r.started_at).total_seconds() * 1000 for r in spans])
    # in the steady state the k-th start fills the slot the (k - LIMIT)-th end freed
    gaps = [starts[k] - ends[k - LIMIT] for k in range(len(spans) // 4, len(spans))]
    res.handoff_ms = median(gaps) * 1000
    res.started_by = [bisect.bisect_right(starts, t) for t in (1, 2, 3, 4)]


def status_counts(engine: sa.Engine, function_id: str) -> dict[str, int]:
    query = (
        sa.select(runs_table.c.status, sa.func.count())
        .where(runs_table.c.function_id == function_id)
        .group_by(runs_table.c.status)
    )
    with engine.connect() as conn:
        return {str(s): int(n) for s, n in conn.execute(query)}


def run_case(case: Case, kind: str, db: int, runs: int, n: int) -> Result:
    broker = redis_url(db)
    rc = redis_client(db)
    reset_redis_db(db, TASKS_KEY, REFUSED_KEY, PARKED_KEY, INSIDE_KEY, MAX_INSIDE_KEY)
    queue = f"cf-bench-{os.getpid()}-fc-{n}"
    with fresh_store(kind) as url, ExitStack() as stack:
        _app, flow = build(broker, url, queue)
        engine = flow.store.engine
        env = {"CF_BENCH_FC_BROKER": broker, "CF_BENCH_FC_STORE": url, "CF_BENCH_FC_QUEUE": queue}
        for i, slots in enumerate(case.workers):
            worker = celery_worker(
                env, queue, module="flowcontrol", concurrency=slots, name=f"w{i + 1}"
            )
            stack.enter_context(worker)
        flow.send([Event(name="bench/warm", data={"i": i}) for i in range(WARM)])
        wait_until(
            lambda: status_counts(engine, "warm").get("completed") == WARM, 90, 0.05, "warm-up"
        )
        rc.delete(TASKS_KEY, REFUSED_KEY, PARKED_KEY, MAX_INSIDE_KEY)
        samples: list[Sample] = []
        stop = threading.Event()
        t0 = 0.0

        def sample() -> None:
            while True:
                pipe = rc.pipeline()
                pipe.llen(queue)
                pipe.hlen("unacked")
                llen, unacked = pipe.execute()
                counts = status_counts(engine, case.function_id)
                q, r = counts.get("queued", 0), counts.get("running", 0)
                samples.append(Sample(time.time() - t0, int(llen), int(unacked), q, r))
                if stop.wait(SAMPLE_EVERY):
                    return

        sampler = threading.Thread(target=sample, daemon=True)
        t0 = time.time()
        sampler.start()
        flow.send([Event(name=f"bench/{case.function_id}", data={"i": i}) for i in range(runs)])
        sent = time.time() - t0
        done = sa.select(sa.func.count(), sa.func.max(runs_table.c.ended_at)).where(
            runs_table.c.function_id == case.function_id, runs_table.c.status == "completed"
        )

        def finished() -> Any:
            with engine.connect() as conn:
                count, last = conn.execute(done).one()
            return last if count == runs else None

        last = wait_until(finished, 180, POLL, f"{runs} runs of {case.function_id}")
        stop.set()
        sampler.join()
        with engine.connect() as conn:
            spans = conn.execute(
                sa.select(runs_table.c.started_at, runs_table.c.ended_at).where(
                    runs_table.c.function_id == case.function_id
                )
            ).all()
            claims, dispatches = conn.execute(
                sa.select(
                    sa.func.sum(runs_table.c.fence), sa.func.sum(runs_table.c.dispatches)
                ).where(runs_table.c.function_id == case.function_id)
            ).one()
        result = Result(
            elapsed=last.timestamp() - t0,
            sent=sent,
            tasks=int(rc.get(TASKS_KEY) or 0),
            refused=int(rc.get(REFUSED_KEY) or 0),
            parked=int(rc.get(PARKED_KEY) or 0),
            claims=int(claims or 0),
            dispatches=int(dispatches or 0),
            max_concurrent=int(rc.get(MAX_INSIDE_KEY) or 0),
            samples=samples,
        )
        profile(result, list(spans), t0)
        engine.dispose()
    return result


def series(samples: list[Sample], count: int = 20) -> str:
    return " ".join(f"{s.t:.2f}s:{s.llen}+{s.unacked}/{s.queued}" for s in samples[:count])


def queue_report(label: str, res: Result, runs: int) -> list[str]:
    after = [s for s in res.samples if s.t >= res.sent]
    peak_q = max(res.samples, key=lambda s: s.queued)
    rises = [b.broker - a.broker for a, b in itertools.pairwise(after)]
    waiting = [b.broker - a.broker for a, b in itertools.pairwise(after) if a.queued > LIMIT]
    top = max(s.broker for s in res.samples)
    top_after = max((s.broker for s in after), default=0)
    lines = [
        f"  {label}: {len(res.samples)} samples; broker messages (LLEN+unacked) max {top}, "
        f"max {top_after} after the send returned ({res.sent:.2f} s); largest rise between "
        f"samples after the send {max(rises, default=0):+d}, while runs waited for a slot "
        f"{max(waiting, default=0):+d}",
        f"    peak queued in the store: {peak_q.queued} at {peak_q.t:.2f} s "
        f"(broker then {peak_q.llen}+{peak_q.unacked}, running {peak_q.running})",
    ]

    # profile: the pace of each slot after the send returned and, if the send's doorbells
    # left the list well before the end, how far the runs had got by then and the pace after
    def pace(ref: Sample) -> str:
        left = ref.queued + ref.running
        per_slot = LIMIT * (res.elapsed - ref.t) / left if left else 0.0
        return (
            f"{runs - left} runs completed by then; after it {left} runs in "
            f"{res.elapsed - ref.t:.2f} s = {per_slot * 1000:.1f} ms per run per slot"
        )

    if after:
        lines.append(f"    send returned at {after[0].t:.2f} s (first sample): {pace(after[0])}")
    drained = next((s for s in after if s.llen == 0), None)
    if drained is not None and drained.t < res.elapsed - 1:
        lines.append(f"    send's doorbells all off the list at {drained.t:.2f} s: {pace(drained)}")
        rest = [s for s in res.samples if s.t >= drained.t]
        lines.append(
            f"    from then on: broker messages max {max(s.broker for s in rest)} while up to "
            f"{max(s.queued for s in rest)} runs waited in the store (queued)"
        )
    lines.append(f"    t:LLEN+unacked/queued  {series(res.samples)}")
    lines.append(f"    last 5                 {series(res.samples[-5:], 5)}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--stores", default="postgresql,sqlite")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--runs", type=int, default=1000)
    args = parser.parse_args(argv)
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]

    began = time.time()
    print(f"# python bench/flowcontrol.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    for line in machine_info():
        print(f"# {line}")
    print(flush=True)
    ideal = args.runs * WORK / LIMIT
    tables: list[Table] = []
    queues: list[str] = []
    n = 0
    with fresh_redis_db() as db:
        for kind in stores:
            got: dict[str, list[Result]] = {BASELINE.label: [], LIMITED.label: []}
            for rep in range(args.reps):
                for case in (BASELINE, LIMITED):  # interleaved, against drift
                    n += 1
                    res = run_case(case, kind, db, args.runs, n)
                    got[case.label].append(res)
                    print(
                        f"# {kind} rep {rep + 1}: {case.label}: {res.elapsed:.2f} s "
                        f"(send {res.sent:.2f} s, {res.tasks} doorbells run, {res.refused} "
                        f"claimed nothing, {res.parked} "
                        f"claims undone for a slot, {res.claims} claims, {res.dispatches} "
                        f"reconciler rings, at most {res.max_concurrent} step bodies at once)\n"
                        f"#   run {res.run_ms:.1f} ms, slot handoff {res.handoff_ms:.1f} ms "
                        f"(medians); runs started by 1/2/3/4 s: "
                        + "/".join(str(x) for x in res.started_by),
                        flush=True,
                    )
            base, lim = got[BASELINE.label], got[LIMITED.label]
            b, m = median([r.elapsed for r in base]), median([r.elapsed for r in lim])
            name = "PostgreSQL" if kind == "postgresql" else "SQLite"
            table = Table(
                f"{name} store: {args.runs:,} one-step runs (20 ms each), send -> all completed "
                f"(median of {args.reps})"
            )
            judged = f"{name}: limit={LIMIT}, 2 workers -c 4 vs no limit, 1 worker -c 4"
            bound = TARGETS[kind]
            table.add(Row(judged, fmt_time(m), f"{fmt_time(b)} no limit", m / b, f"<= {bound}x"))
            table.rows[-1].passed = m / b <= bound
            for what, value in ((f"{name}: limited (info)", m), (f"{name}: no limit (info)", b)):
                ref = f"{fmt_time(ideal)} ideal"
                table.add(Row(what, fmt_time(value), ref, value / ideal))
            tables.append(table)
            mid = sorted(lim, key=lambda r: r.elapsed)[len(lim) // 2]
            midb = sorted(base, key=lambda r: r.elapsed)[len(base) // 2]
            queues.append(f"{name} store, the median rep of each case:")
            queues += queue_report(LIMITED.label, mid, args.runs)
            queues += queue_report(BASELINE.label, midb, args.runs)
    print()
    for table in tables:
        table.notes += [
            f"time: from flow.send([{args.runs:,} events]) (one transaction, then one Celery "
            "message per run) until the newest ended_at once all runs are completed.",
            "baseline: function without a limit on one worker process -c 4 (4 slots); "
            f"measured: Concurrency(limit={LIMIT}) on two worker processes -c 4 each (8 "
            "slots, 4 may run). Both: prefork, default prefetch (4 per child), Redis broker "
            "on a private db, a fresh store and queue per rep, 16 warm-up runs first.",
            f"ideal: {args.runs:,} x 20 ms / {LIMIT} slots = {fmt_time(ideal)}; the (info) rows "
            "compare each case with it.",
            "per rep (lines above): doorbells run = celeryflow.run tasks executed "
            "(task_prerun); claimed nothing = Engine._not_claimed calls (the run was held "
            "by another executor, or had ended); claims undone = RunSession._park_for_slot "
            "calls (both counting wrappers in the bench's workers); claims = sum of fences; "
            "step bodies at once = "
            "a Redis counter around the 20 ms body; run = started_at -> ended_at (claim, "
            "step, body; not the final commit); slot handoff = ended_at of the k-th run to "
            f"started_at of the (k+{LIMIT})-th, over the last 3/4 of the runs.",
        ]
        print(table.render(), end="\n\n")
    print(
        f"Broker queue while runs wait (sampled every {SAMPLE_EVERY * 1000:.0f} ms; "
        "t:LLEN+unacked/runs queued in the store, first 20 samples):"
    )
    print("\n".join(queues), end="\n\n")
    results = [r.passed for t in tables for r in t.rows if r.passed is not None]
    print(
        f"# {sum(1 for r in results if r)} of {len(results)} targets met; "
        f"total {time.time() - began:.0f} s; load average "
        + " ".join(f"{x:.2f}" for x in os.getloadavg())
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
