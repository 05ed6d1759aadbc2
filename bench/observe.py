"""What the observability plugins cost per step (issue 14): a 100-step function on a
real in-process worker (threads, -c 2), PostgreSQL store and Redis broker, with no
hooks (the baseline) and with PrometheusHook, TracingHook (SDK provider, a span
processor that drops the spans) or both, measured in the same rounds, in rotating
order; the ratio is taken within each round and the median shown.

    python bench/observe.py [--rounds 5] [--runs 3]

Needs PostgreSQL and Redis as in tests/services.py (see bench/common.py to override).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from celery import Celery  # noqa: E402
from common import (  # noqa: E402
    Row,
    Table,
    fmt_time,
    fresh_postgres,
    fresh_redis_db,
    machine_info,
    median,
    redis_url,
    wait_until,
)
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import (  # noqa: E402
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)

from celeryflow import Event, Flow, Hook, event  # noqa: E402
from celeryflow.durations import utcnow  # noqa: E402
from celeryflow.hooks import (  # noqa: E402
    Hooks,
    RunFinished,
    RunStarted,
    StepFinished,
    StepStarted,
)
from celeryflow.metrics import PrometheusHook  # noqa: E402
from celeryflow.tasks import start_test_worker  # noqa: E402
from celeryflow.tracing import TracingHook  # noqa: E402

STEPS = 100


class Dropping(SpanExporter):
    """Every span is built and handed over, then dropped: the plugin's cost, not an
    exporter's network."""

    def export(self, spans: Any) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def variants() -> dict[str, list[Hook]]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Dropping()))
    return {
        "no hooks": [],
        "prometheus": [PrometheusHook()],
        "otel": [TracingHook(tracer_provider=provider)],
        "both": [PrometheusHook(), TracingHook(tracer_provider=provider)],
    }


def direct_cost(hooks: list[Hook], steps: int = 20_000) -> float:
    """Seconds per step of the hooks' own work, called as the engine calls them (a run
    started and finished around every 100 steps), without a store or a worker."""
    dispatcher = Hooks(hooks)
    ev = Event(name="bench/hundred", id="e", ts=0)
    info = {"function_id": "hundred", "run_id": "r", "attempt": 0, "event": ev}
    started = time.perf_counter()
    for i in range(steps):
        if i % STEPS == 0:
            dispatcher.emit("run_started", RunStarted(**info, created_at=utcnow()))
        step = {"function_id": "hundred", "run_id": "r", "step_id": f"s{i}", "key": f"s{i}"}
        dispatcher.emit("step_started", StepStarted(**step, index=i, attempt=1))
        dispatcher.emit("step_finished", StepFinished(**step, index=i, attempt=1, duration=1e-4))
        if i % STEPS == STEPS - 1:
            dispatcher.emit("run_finished", RunFinished(**info, duration=0.1))
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3, help="runs per variant per round")
    args = parser.parse_args()
    hooks = variants()
    times: dict[str, list[float]] = {name: [] for name in hooks}
    ratios: dict[str, list[float]] = {name: [] for name in hooks}
    with fresh_postgres() as (store, _), fresh_redis_db() as db:
        app = Celery("bench-observe", broker=redis_url(db))
        app.conf.broker_connection_retry_on_startup = True
        flow = Flow(app, store=store, auto_migrate=True)

        @flow.function(id="hundred", trigger=event("bench/hundred"))
        def hundred(ctx: Any) -> int:
            for i in range(STEPS):
                ctx.step.run(f"s{i}", lambda i=i: i)
            return STEPS

        def one_run() -> float:
            started = time.perf_counter()
            [event_id] = flow.send(Event(name="bench/hundred"))

            def done() -> bool:
                runs = flow.list_runs(event_id=event_id)
                return bool(runs) and runs[0].status.value == "completed"

            wait_until(done, timeout=120, interval=0.005, what="the run")
            return time.perf_counter() - started

        names = list(hooks)
        with start_test_worker(app, pool="threads", concurrency=2):
            one_run()  # warm: connections, imports
            for r in range(args.rounds):
                order = names[r % len(names) :] + names[: r % len(names)]
                this_round: dict[str, float] = {}
                for name in order:
                    # the Hooks object the engine and planner hold, given other hooks
                    flow.hooks._hooks[:] = hooks[name]
                    this_round[name] = median([one_run() for _ in range(args.runs)])
                    times[name].append(this_round[name])
                for name in names:
                    ratios[name].append(this_round[name] / this_round["no hooks"])
        flow.hooks._hooks[:] = []
    table = Table(f"Observability plugins: a {STEPS}-step run, per step (PostgreSQL, Redis)")
    base = median(times["no hooks"]) / STEPS
    for name in names[1:]:
        table.add(
            Row(
                what=f"per step, {name}",
                value=fmt_time(median(times[name]) / STEPS),
                baseline=fmt_time(base),
                ratio=median(ratios[name]),
            )
        )
    table.notes.append(
        f"{args.rounds} rounds x {args.runs} runs per variant; baseline: the same run, no hooks"
    )
    direct = Table("The hooks' own work per step, called directly (no store, no worker)")
    costs = {
        name: median([direct_cost(h) for _ in range(args.rounds)]) for name, h in hooks.items()
    }
    for name in names[1:]:
        added = costs[name] - costs["no hooks"]
        direct.add(
            Row(
                what=f"added per step, {name}",
                value=fmt_time(added),
                baseline=fmt_time(base),
                ratio=added / base,
            )
        )
    direct.notes.append(
        "added: the hooks' calls minus the same calls with no hooks "
        f"({fmt_time(costs['no hooks'])}); baseline: a step of the run without hooks above"
    )
    print("\n".join(machine_info()))
    print()
    print(table.render())
    print()
    print(direct.render())


if __name__ == "__main__":
    main()
