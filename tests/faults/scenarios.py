"""The faults that need no particular server, run the same way on every stack.

Each takes a :class:`Scenario` (its stack already up), inflicts the fault on its
workers or its broker's messages, and returns the :class:`Report`.
"""

from __future__ import annotations

import signal
import time

from five_app import FUNCTION
from harness import Report, Scenario

__all__ = [
    "FROZEN_FOR",
    "LEASE",
    "RECONCILE",
    "REDELIVER",
    "RESUME_TARGET",
    "all_workers_down_while_sleeping",
    "check_resume",
    "duplicate_deliveries",
    "kill_9_under_load",
    "worker_frozen_past_lease",
]

LEASE, RECONCILE, REDELIVER = 5.0, 1.0, 30.0  # the Flow settings the suite's apps use
RESUME_TARGET = LEASE + RECONCILE + 10  # the recovery target after kill -9
# Longer than the recovery target: another worker must take the frozen worker's runs
# over (the lease lapses, the next reconciler pass rings) while it is still frozen.
FROZEN_FOR = RESUME_TARGET + 5


def check_resume(rep: Report) -> None:
    """The recovery target after kill -9, whatever the backlog: every interrupted run
    moves again within lease + reconcile interval + 10 s."""
    assert rep.resume_s is not None, rep.line()
    assert rep.resume_s <= RESUME_TARGET, rep.line()


def kill_9_under_load(sc: Scenario) -> Report:
    """Two workers; one (parent and pool children) is SIGKILLed mid-load and replaced:
    once in the short suite, five times at spaced points in the full one."""
    sc.worker(), sc.worker()
    sc.send()
    kills = 5 if sc.runs >= 100 else 1
    for k in range(kills):
        sc.wait_progress((k + 1) / (kills + 2))
        victim = sc.live_workers()[0]
        sc.fault()
        victim.kill9()
        sc.worker()  # its replacement
    return sc.finish()


def duplicate_deliveries(sc: Scenario, copies: int = 10) -> Report:
    """``copies`` more ``celeryflow.run`` messages for every run, waiting in the queue
    before the workers start, so duplicates race each other."""
    sc.send()
    run_ids = [r.id for r in sc.flow.list_runs(function_id=FUNCTION, limit=10**6)]
    assert len(run_ids) == sc.runs
    sc.fault()
    run_task = sc.app.tasks["celeryflow.run"]
    with sc.app.producer_or_acquire() as producer:
        for run_id in run_ids:
            for _ in range(copies):
                run_task.apply_async((run_id,), producer=producer)
    sc.worker(), sc.worker()
    return sc.finish()


def all_workers_down_while_sleeping(sc: Scenario) -> Report:
    """Every run sleeps; every worker is SIGKILLed; the wake times pass with no worker
    at all; new workers come back. Times are measured from their return."""
    nap = 5 + 0.15 * sc.runs  # long enough for the last run to reach its sleep in time
    sc.worker(), sc.worker()
    sc.send(nap=f"{nap:g}s")
    sc.wait_status("sleeping", sc.runs, timeout=nap)
    for w in sc.live_workers():
        w.kill9()
    time.sleep(nap + 2)  # the fault's length: every wake time passes with no worker
    sc.fault()
    sc.worker(), sc.worker()
    return sc.finish()


def worker_frozen_past_lease(sc: Scenario, frozen_for: float) -> Report:
    """SIGSTOP of a worker (parent, pool children and their lease threads) for
    ``frozen_for`` seconds, then SIGCONT: its stale executions must write nothing and
    run no step another worker finished meanwhile."""
    sc.worker(), sc.worker()
    sc.send()
    # Late in the load, when little is queued: the frozen worker's runs must be taken
    # over while it sleeps, and a re-ring queued behind a long backlog (issue 12
    # item 7) would come after the thaw.
    sc.wait_progress(0.8)
    victim = sc.live_workers()[0]
    sc.fault()
    victim.signal(signal.SIGSTOP)
    time.sleep(frozen_for)  # the fault's length
    victim.signal(signal.SIGCONT)
    return sc.finish()
