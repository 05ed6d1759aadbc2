"""What pausing costs ``flow.send``: run planning asks for the paused functions on
every send that triggers a function (issue 14, pause/resume).

    python bench/pause.py                    # SQLite and PostgreSQL
    python bench/pause.py --stores sqlite --sends 500 --rounds 5

For each store, ``--sends`` single-event sends that each start one run, in rounds
(the order of the sides rotated per round, the ratio taken within a round, the
median shown):

* baseline: the paused-set lookup taken out (``flow.planner.unpaused`` returns its input).
* cached: as shipped; the paused set is read at most once per ``PAUSED_TTL`` (1 s).
* uncached: ``PAUSED_TTL = 0``, one extra ``SELECT`` on ``cf_paused_functions`` per
  send: what every send would pay without the cache.

The doorbell is Celery's in-memory transport, so the figures are the store's.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from celery import Celery  # noqa: E402
from common import Row, Table, fmt_time, fresh_store, machine_info, median  # noqa: E402

import celeryflow.store.admin as admin  # noqa: E402
from celeryflow import Event, Flow, event  # noqa: E402
from celeryflow.durations import utcnow  # noqa: E402


def build(url: str) -> Flow:
    flow = Flow(Celery("bench-pause", broker="memory://"), store=url, auto_migrate=True)

    @flow.function(id="bench-go", trigger=event("bench/go"))
    def go(ctx: Any) -> None:
        return None

    flow.store.pause_function("bench-other", utcnow())  # a non-empty paused set
    return flow


def timed(flow: Flow, sends: int) -> float:
    """Seconds per send."""
    start = time.perf_counter()
    for _ in range(sends):
        flow.send(Event(name="bench/go", data={}))
    return (time.perf_counter() - start) / sends


def side(name: str, flow: Flow) -> Callable[[int], float]:
    def run(sends: int) -> float:
        original = admin.PAUSED_TTL
        try:
            if name == "baseline":
                flow.planner.unpaused = lambda functions: functions  # type: ignore[method-assign]
            elif name == "uncached":
                admin.PAUSED_TTL = 0.0
            return timed(flow, sends)
        finally:
            admin.PAUSED_TTL = original
            flow.planner.__dict__.pop("unpaused", None)

    return run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument("--sends", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print("# python bench/pause.py " + " ".join(sys.argv[1:]))
    for line in machine_info():
        print(f"# {line}")
    started = time.perf_counter()
    for kind in args.stores.split(","):
        with fresh_store(kind) as url:
            flow = build(url)
            timed(flow, 20)  # warm: engine, statements, the function's plan
            names = ["baseline", "cached", "uncached"]
            results: dict[str, list[float]] = {n: [] for n in names}
            for r in range(args.rounds):
                order = names[r % 3 :] + names[: r % 3]
                for name in order:
                    results[name].append(side(name, flow)(args.sends))
            table = Table(f"flow.send of one event starting one run: {kind}")
            base = median(results["baseline"])
            for name in ("cached", "uncached"):
                ratios = [
                    value / baseline
                    for value, baseline in zip(results[name], results["baseline"], strict=True)
                ]
                table.add(
                    Row(
                        f"per send, paused set {name}",
                        fmt_time(median(results[name])),
                        fmt_time(base),
                        median(ratios),
                    )
                )
            table.notes.append(f"{args.sends} sends x {args.rounds} rounds; one function paused")
            print()
            print(table.render())
    print(f"\n# total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
