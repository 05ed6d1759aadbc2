"""The one-statement ends on PostgreSQL against the transactions they replaced, paired
in one run (issue 17, targets 3: sleepers and flow control).

    python bench/ends.py                 # 3 rounds of 200 runs each
    python bench/ends.py --rounds 5 --runs 400

Two cases, each timed in this process on ``flow.engine.execute`` (no worker, no broker:
doorbells are collected, not sent), per run, CPU (``time.process_time``) and wall:

* wake-up: a run that sleeps 1 s and then ends. Its wake-up execution claims it,
  reads its steps and ends it with the sleep's step row updated: one statement on
  psycopg's cursor (store/one_statement.py's run_update_with_updated_step), against
  the transaction through SQLAlchemy it replaced (BEGIN, the step's UPDATE, the run's
  UPDATE, COMMIT).
* hand-over: runs of a ``Concurrency(limit=1)`` function with one trivial step, run
  as the engine chains them: each end hands the slot to the run next in line, in one
  statement (run_end_handing_over) against the transaction it replaced
  (RunSession._hand_over: the end, the pick, the claim).

The baseline is the replaced path in the same code, switched back on for its rounds
(the one-statement path refused, as where psycopg 3 is not the driver): rounds
alternate, ratios are per round. Needs PostgreSQL as in tests/services.py.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from celery import Celery

from celeryflow import Concurrency, Event, Flow, event
from celeryflow.store.session import RunSession


def build(url: str) -> tuple[Flow, list[str]]:
    """A flow on ``url`` whose doorbell collects the run ids it would ring."""
    app = Celery("cf-bench-ends", broker="memory://")
    flow = Flow(app, store=url, auto_migrate=True)

    @flow.function(id="napper", trigger=event("bench/nap"))
    def napper(ctx: Any) -> bool:
        ctx.step.sleep("nap", 1.0)
        return True

    @flow.function(id="lined", trigger=event("bench/lined"), concurrency=Concurrency(limit=1))
    def lined(ctx: Any) -> int:
        return int(ctx.step.run("s", lambda: 1))

    rung: list[str] = []

    def collect(run_ids: Any, eta: Any = None, **_: Any) -> None:
        rung.extend(run_ids)

    flow.doorbell.ring = collect  # type: ignore[method-assign]
    return flow, rung


@contextlib.contextmanager
def replaced_paths(on: bool) -> Iterator[None]:
    """With ``on``, the transactions the one-statement ends replaced."""
    if not on:
        yield
        return
    in_one, handing = RunSession._in_one_statement, RunSession._end_handing_over

    def no_updated_step(self: RunSession, status: Any, params: Any, writes: Any) -> Any:
        if len(writes) == 1 and not writes[0][1]:
            return None
        return in_one(self, status, params, writes)

    RunSession._in_one_statement = no_updated_step  # type: ignore[method-assign]
    RunSession._end_handing_over = lambda *_a, **_k: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        RunSession._in_one_statement = in_one  # type: ignore[method-assign]
        RunSession._end_handing_over = handing  # type: ignore[method-assign]


def timed(body: Callable[[], None], runs: int) -> tuple[float, float]:
    """``body``'s CPU and wall per run, in ms."""
    cpu, wall = time.process_time(), time.perf_counter()
    body()
    return (time.process_time() - cpu) * 1e3 / runs, (time.perf_counter() - wall) * 1e3 / runs


def wake_ups(flow: Flow, rung: list[str], runs: int, tag: str) -> tuple[float, float]:
    rung.clear()
    flow.send([Event(name="bench/nap", data={"i": i, "tag": tag}) for i in range(runs)])
    ids = list(rung)
    for run_id in ids:  # the first executions park them
        flow.engine.execute(run_id)
    time.sleep(1.05)

    def wake() -> None:
        for run_id in ids:
            flow.engine.execute(run_id)

    return timed(wake, runs)


def hand_overs(flow: Flow, rung: list[str], runs: int, tag: str) -> tuple[float, float]:
    rung.clear()
    flow.send([Event(name="bench/lined", data={"i": i, "tag": tag}) for i in range(runs)])

    def drain() -> None:
        while rung:  # a chain rings the next in line when it stops
            flow.engine.execute(rung.pop(0))

    return timed(drain, runs)


def check_all_ended(flow: Flow) -> None:
    """A round counts only if every run of it completed (a lost hand-over would leave
    runs queued and make the round look fast)."""
    for function_id in ("napper", "lined"):
        left = flow.store.count_runs(function_id, ["queued", "running", "sleeping"])
        if left:
            raise SystemExit(f"{left} run(s) of {function_id} did not complete")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args(argv)
    print("# python bench/ends.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    for line in common.machine_info():
        print(f"# {line}")
    cases = {"wake-up": wake_ups, "hand-over": hand_overs}
    figures: dict[tuple[str, bool], list[tuple[float, float]]] = {}
    with common.fresh_store("postgresql") as url:
        flow, rung = build(url)
        for case, measure in cases.items():
            measure(flow, rung, 20, "warm-up")
            for n in range(args.rounds):
                for replaced in (False, True) if n % 2 == 0 else (True, False):
                    with replaced_paths(replaced):
                        got = measure(flow, rung, args.runs, f"{case}-{n}-{replaced}")
                    check_all_ended(flow)
                    figures.setdefault((case, replaced), []).append(got)
                    side = "transaction  " if replaced else "one statement"
                    print(
                        f"# {case} round {n + 1}, {side}: {got[0]:.2f} ms CPU, {got[1]:.2f} ms wall"
                    )
        flow.store.engine.dispose()
    print(f"\nPostgreSQL, {args.runs} runs a round, per run (median of {args.rounds} rounds)")
    print("case       one statement (CPU / wall)  transaction (CPU / wall)  ratio CPU  ratio wall")
    for case in cases:
        new, old = figures[case, False], figures[case, True]
        ratios = [(a[0] / b[0], a[1] / b[1]) for a, b in zip(new, old, strict=True)]
        cpu = statistics.median(r[0] for r in ratios)
        wall = statistics.median(r[1] for r in ratios)
        print(
            f"{case:<10} {statistics.median(f[0] for f in new):6.2f} / "
            f"{statistics.median(f[1] for f in new):5.2f} ms"
            f"{'':<14}{statistics.median(f[0] for f in old):6.2f} / "
            f"{statistics.median(f[1] for f in old):5.2f} ms"
            f"{'':<8}{cpu:5.2f}x     {wall:5.2f}x"
        )
    print("  ratio: one statement over transaction, taken within each round (below 1: faster)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
