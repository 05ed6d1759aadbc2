"""The fault suite's harness: worker subprocesses, the ledger, and the scenario report.

A :class:`Scenario` owns one stack (a broker URL and a store URL on private instances),
starts real ``celery -A five_app worker`` subprocesses (prefork, ``-c 2``), sends runs
of the 5-step function, and after the fault waits for every run to end. Its
:class:`Report` counts:

* ``completed`` / ``failed`` / ``lost`` (not ended by the deadline, or never created);
* ``finished_rerun``: step bodies that *started after* their step was recorded
  completed (``ended_at``): a finished step run again. The interrupted step itself
  may run again (steps are at-least-once); that shows in ``extra_bodies`` only;
* ``recover_s``: from the (last) fault to the moment the last run ended;
* ``resume_s``: from each fault to the first step body after it of every run that was
  in flight at that moment (had started, had not ended), the worst of them: how long
  an interrupted run waits, whatever the backlog behind it (10**6 if one never moved).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from five_app import EVENT, FUNCTION, STEPS, build

from celeryflow import Event, Run

__all__ = ["FULL", "Report", "Scenario", "Worker", "assert_targets", "runs_for"]

APPS = Path(__file__).parent / "apps"
FULL = os.environ.get("CF_FAULTS_FULL") == "1"
FINAL = {"completed", "failed", "cancelled", "skipped"}


def runs_for(short: int) -> int:
    """Run count of a scenario: ``short`` in CI, CF_FAULTS_RUNS (300) in the full suite."""
    return int(os.environ.get("CF_FAULTS_RUNS", "300")) if FULL else short


class Worker:
    """A ``celery -A five_app worker`` subprocess in its own process group."""

    def __init__(self, name: str, env: dict[str, str], log: Path, concurrency: int = 2) -> None:
        self.name = name
        self.env = env
        self.log = log
        self.concurrency = concurrency
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        command = [
            sys.executable, "-m", "celery", "-A", "five_app", "worker", "--pool", "prefork",
            "-c", str(self.concurrency), "-n", f"{self.name}@%h", "--loglevel", "INFO",
            "--without-mingle", "--without-gossip", "--without-heartbeat",
        ]  # fmt: skip
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                command, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        return self

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the worker and its pool children at once."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def kill9(self) -> None:
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.signal(signal.SIGKILL)  # pool children of a killed parent, if any
            return
        self.signal(signal.SIGCONT)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            pass
        self.signal(signal.SIGKILL)
        self.proc.wait(10)


@dataclass
class Report:
    scenario: str
    stack: str
    runs: int
    completed: int = 0
    failed: int = 0
    lost: int = 0
    finished_rerun: int = 0
    extra_bodies: int = 0
    recover_s: float | None = None
    resume_s: float | None = None
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        return json.dumps(asdict(self))


def _ts(value: datetime | None) -> float | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.timestamp()


class Scenario:
    """One fault scenario on one stack; use as a context manager (stops its workers)."""

    def __init__(
        self,
        name: str,
        stack: str,
        broker: str,
        store: str,
        tmp: Path,
        runs: int,
        *,
        step_seconds: float = 0.05,
        lease: str = "5s",
        reconcile: str = "1s",
        worker_store: str | None = None,
        timeout: str | None = None,
    ) -> None:
        self.name = name
        self.stack = stack
        self.tmp = tmp
        self.runs = runs
        self.queue = f"cf-faults-{os.getpid()}-{int(time.time() * 1000) % 10**8}"
        self.ledger = tmp / "ledger.txt"
        self.ledger.touch()
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(APPS), os.environ.get("PYTHONPATH", "")]),
            "CF_FAULTS_BROKER": broker,
            "CF_FAULTS_STORE": worker_store or store,
            "CF_FAULTS_QUEUE": self.queue,
            "CF_FAULTS_LEDGER": str(self.ledger),
            "CF_FAULTS_STEP_SECONDS": str(step_seconds),
            "CF_FAULTS_LEASE": lease,
            "CF_FAULTS_RECONCILE": reconcile,
            "CF_FAULTS_STATEMENT_TIMEOUT": timeout or "",
        }
        self.app, self.flow = build(
            broker, store, self.queue, str(self.ledger), lease=lease, reconcile=reconcile,
            timeout=timeout,
        )  # fmt: skip
        self.workers: list[Worker] = []
        self.faults: list[float] = []
        self.report = Report(name, stack, runs)

    # -- workers ------------------------------------------------------------------------

    def worker(self) -> Worker:
        name = f"w{len(self.workers)}"
        w = Worker(name, self.env, self.tmp / f"{name}.log").start()
        self.workers.append(w)
        return w

    def live_workers(self) -> list[Worker]:
        return [w for w in self.workers if w.proc is not None and w.proc.poll() is None]

    # -- load ---------------------------------------------------------------------------

    def send(self, nap: str | None = None) -> list[str]:
        data: dict[str, Any] = {"nap": nap} if nap else {}
        events = [Event(name=EVENT, data=data) for _ in range(self.runs)]
        ids: list[str] = []
        for i in range(0, len(events), 100):
            ids += self.flow.send(events[i : i + 100])
        return ids

    def ledger_lines(self) -> list[tuple[str, str, float, int]]:
        lines = []
        for raw in self.ledger.read_text().splitlines():
            run_id, step, ts, pid = raw.split()
            lines.append((run_id, step, float(ts), int(pid)))
        return lines

    def wait_progress(self, fraction: float, timeout: float = 120) -> None:
        """Until ``fraction`` of all step bodies have started."""
        target = int(self.runs * len(STEPS) * fraction)
        self._poll(lambda: len(self.ledger_lines()) >= target, timeout, f"{target} bodies")

    def wait_status(self, status: str, count: int, timeout: float = 120) -> None:
        def probe() -> bool:
            return len(self.flow.list_runs(function_id=FUNCTION, status=status, limit=10**6)) >= (
                count
            )

        self._poll(probe, timeout, f"{count} runs {status}")

    def _poll(self, probe: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(Exception):  # the store may be the thing at fault
                if probe():
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: no {what} after {timeout} s")
            time.sleep(0.2)

    def fault(self) -> float:
        """Mark the moment of a fault (call right before inflicting it)."""
        now = time.time()
        self.faults.append(now)
        return now

    # -- the outcome --------------------------------------------------------------------

    def finish(self, timeout: float | None = None) -> Report:
        """Wait until every run ended (or the deadline), then count."""
        timeout = timeout if timeout is not None else 120 + self.runs * 0.5
        deadline = time.monotonic() + timeout
        runs: list[Run] = []
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                runs = self.flow.list_runs(function_id=FUNCTION, limit=10**6)
                if len(runs) >= self.runs and all(r.status.value in FINAL for r in runs):
                    break
            time.sleep(0.5)
        return self._count(runs)

    def _count(self, runs: list[Run]) -> Report:
        rep = self.report
        rep.completed = sum(r.status.value == "completed" for r in runs)
        rep.failed = sum(r.status.value == "failed" for r in runs)
        rep.lost = self.runs - rep.completed - rep.failed
        for r in runs:
            if r.status.value == "failed" and len(rep.notes) < 3:
                rep.notes.append(f"failed {r.id}: {(r.error or {}).get('message', '')[:200]}")
        bodies: dict[tuple[str, str], list[float]] = defaultdict(list)
        by_run: dict[str, list[float]] = defaultdict(list)
        for run_id, step, ts, _pid in self.ledger_lines():
            bodies[(run_id, step)].append(ts)
            by_run[run_id].append(ts)
        rep.extra_bodies = sum(len(v) for v in bodies.values()) - len(bodies)
        for r in runs:
            if r.status.value != "completed":
                continue
            full = self.flow.get_run(r.id)
            for s in full.steps:
                ended = _ts(s.ended_at)
                if s.kind == "run" and ended is not None:
                    rerun = [t for t in bodies[(r.id, s.id)] if t > ended]
                    if rerun and len(rep.notes) < 6:
                        rep.notes.append(f"rerun {r.id}/{s.id}: {len(rerun)} after {ended}")
                    rep.finished_rerun += len(rerun)
        ends = [_ts(r.ended_at) for r in runs if r.ended_at is not None]
        if self.faults and ends and rep.lost == 0:
            rep.recover_s = round(max(0.0, max(e for e in ends if e) - self.faults[-1]), 1)
        ended = {r.id: _ts(r.ended_at) for r in runs}
        worst = None
        for at in self.faults:
            for run_id, times in by_run.items():
                end = ended.get(run_id)
                if not any(t < at for t in times) or (end is not None and end < at):
                    continue  # not in flight at the fault
                # It moved again at its next step body, or at its end (its last body
                # had started before the fault); never, if it did neither.
                moves = [t for t in times if t >= at] + ([end] if end is not None else [])
                wait = min(moves) - at if moves else 10**6
                worst = wait if worst is None else max(worst, wait)
        rep.resume_s = None if worst is None else round(worst, 1)
        results = os.environ.get("CF_FAULTS_RESULTS")
        if results:
            with open(results, "a") as out:
                out.write(rep.line() + "\n")
        print(rep.line())
        return rep

    def dump_logs(self) -> None:
        for w in self.workers:
            if w.log.exists():
                print(f"--- {w.log.name} ---\n{w.log.read_text(errors='replace')[-3000:]}")

    def __enter__(self) -> Scenario:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.dump_logs()
        for w in self.workers:
            with contextlib.suppress(Exception):
                w.stop()
        with contextlib.suppress(Exception):
            self.flow.store.engine.dispose()


def assert_targets(rep: Report, *, resume_within: float | None = None) -> None:
    """The issue's targets: nothing lost, no finished step run again, nothing failed."""
    assert rep.lost == 0, rep.line()
    assert rep.failed == 0, rep.line()
    assert rep.finished_rerun == 0, rep.line()
    if resume_within is not None and rep.resume_s is not None:
        assert rep.resume_s <= resume_within, rep.line()
