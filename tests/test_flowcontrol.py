"""Flow control (issue 5) with two worker processes (prefork, -c 4 each) sharing one
broker and one store: the embedded default, Redis + PostgreSQL and RabbitMQ + MariaDB.

The functions live in tests/apps/control_app.py; their steps return wall-clock
times, so overlaps are measured across processes without a shared journal.
"""

from __future__ import annotations

import importlib
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from services import make_stack

from celeryflow import Event, Flow, Run, RunStatus
from celeryflow.testing import wait_for, wait_for_run

APPS = Path(__file__).parent / "apps"
S = RunStatus


@dataclass
class Workers:
    flow: Flow
    logs: list[Path]

    def runs(self, function_id: str, status: str | None = None) -> list[Run]:
        return self.flow.list_runs(function_id=function_id, status=status, limit=1000)

    def settled(self, function_id: str, count: int, timeout: float = 60) -> list[Run]:
        """Wait until ``count`` runs of the function have ended; return them with steps."""
        ended = {s.value for s in (S.COMPLETED, S.FAILED, S.CANCELLED, S.SKIPPED)}

        def probe() -> list[Run] | None:
            done = [r for r in self.runs(function_id) if r.status.value in ended]
            return done if len(done) >= count else None

        done = wait_for(probe, timeout=timeout, interval=0.1, what=f"{count} {function_id} runs")
        return [self.flow.get_run(r.id) for r in done]


@pytest.fixture(scope="module", params=["embedded", "redis-postgres", "rabbitmq-mariadb"])
def workers(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Workers]:
    tmp = tmp_path_factory.mktemp(f"control-{request.param}")
    with make_stack(request.param, tmp) as stack:
        env = {"CF_BROKER": stack.broker_url, "CF_STORE": stack.store_url, "CF_QUEUE": stack.queue}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        sys.path.insert(0, str(APPS))
        sys.modules.pop("control_app", None)
        try:
            flow: Flow = importlib.import_module("control_app").flow
            flow.store.migrate()  # before two workers race to first use
            child_env = {
                **os.environ,
                "PYTHONPATH": f"{APPS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            }
            logs = [tmp / f"w{i}.log" for i in range(2)]
            procs = []
            for i, log in enumerate(logs):
                with open(log, "wb") as out:
                    procs.append(
                        subprocess.Popen(
                            [
                                sys.executable,
                                "-m",
                                "celery",
                                "-A",
                                "control_app",
                                "worker",
                                "-c",
                                "4",
                                "--pool",
                                "prefork",
                                "-n",
                                f"w{i}@%h",
                                "--without-mingle",
                                "--without-gossip",
                                "--loglevel",
                                "INFO",
                            ],
                            env=child_env,
                            stdout=out,
                            stderr=subprocess.STDOUT,
                        )
                    )
            try:
                # A test's deadline is for its runs, not for two workers booting on a
                # loaded machine: wait for both to say they consume.
                def ready() -> bool:
                    exited = [p.args for p in procs if p.poll() is not None]
                    if exited:
                        raise RuntimeError(f"a control_app worker exited at start: {exited}")
                    return all("ready." in log.read_text(errors="replace") for log in logs)

                try:
                    wait_for(ready, timeout=180, interval=0.2, what="both workers ready")
                except BaseException:
                    for log in logs:
                        print(f"--- {log.name} ---\n{log.read_text(errors='replace')[-4000:]}")
                    raise
                yield Workers(flow, logs)
            finally:
                for proc in procs:
                    proc.send_signal(signal.SIGTERM)
                for proc in procs:
                    try:
                        proc.wait(30)
                    except subprocess.TimeoutExpired:
                        proc.kill()
        finally:
            sys.path.remove(str(APPS))
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


@pytest.fixture(autouse=True)
def _show_worker_logs_on_failure(
    request: pytest.FixtureRequest, workers: Workers
) -> Iterator[None]:
    failed_before = request.session.testsfailed
    yield
    if request.session.testsfailed > failed_before:
        for log in workers.logs:
            print(f"--- {log.name} ---\n{log.read_text()[-3000:]}")


def max_overlap(spans: list[dict[str, Any]]) -> int:
    """The largest number of spans open at one instant."""
    edges = sorted(
        itertools.chain.from_iterable(((s["start"], 1), (s["end"], -1)) for s in spans),
        key=lambda e: (e[0], e[1]),  # an end before a start at the same instant
    )
    best = current = 0
    for _, delta in edges:
        current += delta
        best = max(best, current)
    return best


def test_concurrency_by_key_never_exceeds_its_limits(workers: Workers) -> None:
    customers = ["a"] * 6 + ["b"] * 6 + ["c"] * 2
    workers.flow.send([Event(name="t/limited", data={"customer": c}) for c in customers])
    runs = workers.settled("limited", len(customers))

    assert {r.status for r in runs} == {S.COMPLETED}
    spans = {c: [r.output for r in runs if r.events[0].data["customer"] == c] for c in "abc"}
    per_key = {c: max_overlap(s) for c, s in spans.items()}
    overall = max_overlap([s for group in spans.values() for s in group])
    assert max(per_key.values()) <= 2, per_key
    assert overall <= 3, overall
    # the limits were reached (8 worker slots were free), so queued runs did start on release
    assert overall == 3 and max(per_key.values()) == 2, (per_key, overall)
    assert len({s["pid"] for group in spans.values() for s in group}) >= 2


def test_a_sleeping_run_frees_its_slot(workers: Workers) -> None:
    workers.flow.send([Event(name="t/sleepy", data={"n": n}) for n in range(3)])
    runs = workers.settled("sleepy", 3, timeout=60)

    assert {r.status for r in runs} == {S.COMPLETED}
    befores = [r.output["before"] for r in runs]
    afters = [r.output["after"] for r in runs]
    # with a limit of 1, every run's first step ran while the others slept
    assert max(b["end"] for b in befores) < min(a["start"] for a in afters)
    assert max_overlap(befores + afters) == 1


def test_throttle_spreads_starts_and_loses_none(workers: Workers) -> None:
    sent = time.time()
    workers.flow.send([Event(name="t/throttled", data={"n": n}) for n in range(5)])
    runs = workers.settled("throttled", 5, timeout=60)

    assert {r.status for r in runs} == {S.COMPLETED}
    starts = sorted(float(r.output) for r in runs)
    # 2 per 2 s with burst 1: one start per second. A start can come late (a busy
    # worker) but never before its slot, so the k-th is at least k seconds after send.
    early = [(k, round(t - sent, 2)) for k, t in enumerate(starts) if t - sent < k * 1.0 - 0.05]
    assert not early, early


def test_rate_limit_skips_and_says_why(workers: Workers) -> None:
    events = [Event(name="t/rate-limited", data={"user": "u1", "n": n}) for n in range(4)]
    events.append(Event(name="t/rate-limited", data={"user": "u2", "n": 9}))
    workers.flow.send(events)
    runs = workers.settled("rate-limited", 5)

    by_user = {
        u: sorted(r.status.value for r in runs if r.events[0].data["user"] == u)
        for u in ("u1", "u2")
    }
    assert by_user == {"u1": ["completed", "completed", "skipped", "skipped"], "u2": ["completed"]}
    skipped = next(r for r in runs if r.status == S.SKIPPED)
    assert skipped.error is not None and skipped.error["reason"] == "rate_limit"


def test_debounce_keeps_the_last_event(workers: Workers) -> None:
    for n in range(1, 4):
        workers.flow.send(Event(name="t/debounced", data={"user": "d1", "n": n}))
        time.sleep(0.2)
    workers.flow.send(Event(name="t/debounced", data={"user": "d2", "n": 7}))
    runs = workers.settled("debounced", 2)
    time.sleep(1.5)  # a quiet period more: nothing else may start
    runs = [workers.flow.get_run(r.id) for r in workers.runs("debounced")]

    assert sorted(r.output for r in runs) == [3, 7]


def test_debounce_timeout_caps_the_delay(workers: Workers) -> None:
    deadline = time.monotonic() + 3.2
    n = 0
    while time.monotonic() < deadline:  # never quiet for the 1 s period
        workers.flow.send(Event(name="t/debounce-capped", data={"n": n}))
        n += 1
        time.sleep(0.25)
    first = wait_for(
        lambda: [r for r in workers.runs("debounce-capped", "completed")],
        timeout=10,
        what="a capped debounce run",
    )
    # without the 1.5 s cap, no run could have started while events kept coming
    started = [r for r in workers.runs("debounce-capped") if r.started_at is not None]
    assert first and len(started) >= 2


def test_batches_by_size_and_by_timeout(workers: Workers) -> None:
    workers.flow.send([Event(name="t/batched", data={"n": n}) for n in range(7)])
    runs = workers.settled("batched", 3)

    assert sorted(len(r.output) for r in runs) == [1, 3, 3]
    assert sorted(n for r in runs for n in r.output) == list(range(7))


def test_priority_orders_the_runs_queued_for_a_slot(workers: Workers) -> None:
    flow = workers.flow
    [blocker] = flow.send(Event(name="t/prioritized", data={"blocker": True, "n": 0}))
    wait_for_run(flow, event_id=blocker, status="running", timeout=20)
    for n, vip in ((1, False), (2, False), (3, True), (4, False)):
        flow.send(Event(name="t/prioritized", data={"vip": vip, "n": n}))
    runs = workers.settled("prioritized", 5)

    order = [r.events[0].data["n"] for r in sorted(runs, key=lambda r: r.output["start"])]
    assert order == [0, 3, 1, 2, 4]


def test_idempotency_starts_one_run_per_key(workers: Workers) -> None:
    orders = ["o1", "o1", "o2", "o1"]
    workers.flow.send([Event(name="t/idempotent", data={"order": o}) for o in orders])
    runs = workers.settled("idempotent", 4)

    completed = sorted(r.output for r in runs if r.status == S.COMPLETED)
    assert completed == ["o1", "o2"]
    skipped = [r for r in runs if r.status == S.SKIPPED]
    assert len(skipped) == 2 and {r.error["reason"] for r in skipped if r.error} == {"idempotency"}


def test_singleton_skip_and_cancel(workers: Workers) -> None:
    flow = workers.flow
    [first] = flow.send(Event(name="t/single-skip", data={"user": "s", "n": 1}))
    wait_for_run(flow, event_id=first, status="sleeping", timeout=20)
    [second] = flow.send(Event(name="t/single-skip", data={"user": "s", "n": 2}))
    [other] = flow.send(Event(name="t/single-skip", data={"user": "t", "n": 3}))
    assert wait_for_run(flow, event_id=second).status == S.SKIPPED
    assert wait_for_run(flow, event_id=first).output == 1
    assert wait_for_run(flow, event_id=other).output == 3
    [third] = flow.send(Event(name="t/single-skip", data={"user": "s", "n": 4}))
    assert wait_for_run(flow, event_id=third, timeout=20).output == 4  # the key is free again

    [held] = flow.send(Event(name="t/single-cancel", data={"hold": True, "n": 1}))
    wait_for_run(flow, event_id=held, status="sleeping", timeout=20)
    [newer] = flow.send(Event(name="t/single-cancel", data={"hold": False, "n": 2}))
    assert wait_for_run(flow, event_id=newer).output == 2
    assert wait_for_run(flow, event_id=held).status == S.CANCELLED


def test_a_run_queued_for_a_slot_is_still_cancelled_by_its_start_timeout(
    workers: Workers,
) -> None:
    flow = workers.flow
    [holder] = flow.send(Event(name="t/slot-timeout", data={"hold": 4.0}))
    wait_for_run(flow, event_id=holder, status="running", timeout=20)
    [queued] = flow.send(Event(name="t/slot-timeout", data={"hold": 0.0}))
    late = wait_for_run(flow, event_id=queued, status="cancelled", timeout=10)

    assert late.started_at is None  # it never ran
    assert flow.get_run(flow.list_runs(event_id=holder)[0].id).status == S.RUNNING
    assert wait_for_run(flow, event_id=holder, timeout=20).status == S.COMPLETED
