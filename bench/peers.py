"""celeryflow against its peers (issue 17, part 4), in the same run, on the same machine.

    python bench/peers.py --setup          # once: bench/peers/.venv with the pinned peers
    python bench/peers.py                  # all four workloads, PostgreSQL and SQLite
    python bench/peers.py --quick          # smoke run: 1 round, 200 waiters
    python bench/peers.py --only steps,waiters --stores postgresql --rounds 5

Workloads (bench/peers/protocol.py has the sizes):

* steps      -- one run of 100 trivial steps: from start until the caller sees it done;
* throughput -- 1,000 one-step runs on 2 worker slots: runs per second, first start
                until the last one ended;
* sleepers   -- 200 runs each sleeping 2 s, started together: until all are done;
* waiters    -- N runs (10,000) each waiting for its own event; one event resumes one
                of them: from the send until the caller sees that run done.

Systems, each in its own driver subprocess (bench/peers/*_driver.py, which documents
its configuration): celeryflow, DBOS Transact and pyworkflow-engine (durable default
configuration, on PostgreSQL and on SQLite), plain Celery (chain of 100 tasks; 1,000
tasks; ETA tasks, and on the sleepers a "relay": a task that publishes the ETA task,
two messages per sleeper as in any engine whose wake-up rides the broker; Redis broker,
store-independent), and the raw floors: of the steps workload (100 psycopg
autocommit INSERTs; 100 sqlite3 INSERT+COMMITs with WAL + synchronous=NORMAL, the
store's pragmas, and with synchronous=FULL, as the peers commit); of the sleepers
(plain Celery tasks committing only a sleeper's three writes, its row, its park and
its end, through the bare driver, the wake-up either a second message with an ETA,
"relay", or a timer in the worker's memory, "timer": bench/peers/floor_driver.py).
The peers are pinned in bench/peers/requirements.txt and run from bench/peers/.venv,
so their dependencies never meet the project's.

Each system gets a fresh database of its own (PostgreSQL ``cf_bench_<hex>``, SQLite in a
temp dir, dropped after) and, when it needs a broker, its own db of a private Redis.
All sides of a workload are measured in rounds (one warm-up round, then ``--rounds``),
in an order rotated per round; each ratio is taken within a round, and the table shows
the median and the range over rounds: this 2-core VM is shared with other jobs and its
speed drifts within minutes. Some sides are never idle and would load the others'
rounds: DBOS polls its queue every 10 ms for the throughput workload and, on SQLite,
polls for each of its 10,000 waiters' messages (about one core); pyworkflow's worker
went on working after its 10,000 waiters were parked. So in the long workloads
(throughput, sleepers) every other side's processes (driver, workers) are stopped
(SIGSTOP, then SIGCONT) while one side is measured; and the waiters, whose single
resumes last milliseconds (a process just woken from SIGSTOP answers slower), run in
pairs, celeryflow and one peer on one store with nothing else up.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import psutil  # pytest-celery's dependency, in the dev extras

HERE = Path(__file__).resolve().parent
DRIVERS = HERE / "peers"
PEERS_VENV = DRIVERS / ".venv"
PEERS_PYTHON = PEERS_VENV / "bin" / "python"
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(DRIVERS))

from common import (  # noqa: E402
    Row,
    Table,
    fmt_rate,
    fmt_time,
    fresh_postgres,
    fresh_redis_db,
    fresh_sqlite,
    machine_info,
    median,
    redis_url,
    rounds,
)
from protocol import RUNS, SLEEPERS, SLOTS, WORKLOADS  # noqa: E402

STORE_LABEL = {"postgresql": "PostgreSQL", "sqlite": "SQLite", None: "Redis broker"}


@dataclass(frozen=True)
class Side:
    """One system on one store, as its driver runs it."""

    system: str  # celeryflow, DBOS, pyworkflow, Celery, floor
    store: str | None  # postgresql, sqlite, or None (Celery: the broker only)
    script: str
    peer: bool = False  # runs in bench/peers/.venv
    variant: str = ""
    broker: bool = False
    workloads: tuple[str, ...] = WORKLOADS  # the floors are defined for some only

    @property
    def key(self) -> str:
        return f"{self.system}{'/' + self.variant if self.variant else ''}@{self.store}"

    @property
    def label(self) -> str:
        name = {
            "floor": "floor",
            "pyworkflow": "pyworkflow",
        }.get(self.system, self.system)
        if self.variant:
            name += f" ({self.variant})"
        return name


def groups_for(
    workload: str, sides: list[Side], stores: list[str]
) -> list[tuple[list[Side], list[str]]]:
    """The sides of ``workload`` run together, with their stores: all of them, or for
    the waiters each peer with celeryflow on its store (see the module's docstring)."""
    if workload != "waiters":
        return [(sides, stores)]
    groups = []
    for store in stores:
        ours = [s for s in sides if s.system == "celeryflow" and s.store == store]
        for peer in sides:
            if peer.store == store and peer.system in WAITING_PEERS and not peer.variant:
                groups.append(([*ours, peer], [store]))
    return groups


def sides_for(stores: list[str]) -> list[Side]:
    sides: list[Side] = []
    for store in stores:
        sides += [
            Side("celeryflow", store, "cf_driver.py", broker=True),
            Side("DBOS", store, "dbos_driver.py", peer=True),
            Side("pyworkflow", store, "pyworkflow_driver.py", peer=True, broker=True),
            Side(
                "pyworkflow",
                store,
                "pyworkflow_driver.py",
                peer=True,
                broker=True,
                variant="ONE_THREAD",
            ),
        ]
        steps = ("steps",)
        if store == "postgresql":
            sides.append(Side("floor", store, "floor_driver.py", workloads=steps))
        else:
            sides += [
                Side("floor", store, "floor_driver.py", variant="normal", workloads=steps),
                Side("floor", store, "floor_driver.py", variant="full", workloads=steps),
            ]
        for wake in ("relay", "timer"):
            sides.append(
                Side(
                    "floor",
                    store,
                    "floor_driver.py",
                    variant=wake,
                    broker=True,
                    workloads=("sleepers",),
                )
            )
    sides.append(Side("Celery", None, "celery_driver.py", broker=True))
    sides.append(Side("Celery", None, "celery_driver.py", broker=True, variant="relay"))
    return sides


# ======================================================================================
# Drivers
# ======================================================================================


class DriverError(RuntimeError):
    pass


class Driver:
    """A driver subprocess speaking bench/peers/protocol.py's line protocol."""

    def __init__(self, side: Side, args: list[str], timeout: float) -> None:
        self.side = side
        python = str(PEERS_PYTHON) if side.peer else sys.executable
        self.log = tempfile.TemporaryFile()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if side.peer:  # the project's venv must not leak into the peers'
            env.pop("PYTHONPATH", None)
            env.pop("VIRTUAL_ENV", None)
        self.proc = subprocess.Popen(
            [python, str(DRIVERS / side.script), *args],
            cwd=DRIVERS,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            start_new_session=True,
        )
        try:
            self.hello = self._read(timeout)
        except DriverError:
            self.close()
            raise

    def _read(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.proc.stdout], [], [], max(left, 0))
            if not ready:
                raise DriverError(f"{self.side.key}: no answer in {timeout:.0f} s{self.tail()}")
            line = self.proc.stdout.readline()
            if not line:
                raise DriverError(f"{self.side.key}: driver exited{self.tail()}")
            try:
                message: dict[str, Any] = json.loads(line)
            except ValueError:
                continue
            if "error" in message:
                raise DriverError(f"{self.side.key}: {message['error']}\n{message.get('trace')}")
            return message

    def tail(self) -> str:
        self.log.seek(0)
        text = self.log.read().decode(errors="replace")[-3000:]
        return f"\n--- {self.side.key} driver stderr (tail) ---\n{text}" if text else ""

    def processes(self) -> list[psutil.Process]:
        """The driver and every process under it (its workers, their pool)."""
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        return []

    def measure(self, timeout: float) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()
        return self._read(timeout)["value"]

    def close(self) -> None:
        try:
            if self.proc.poll() is None and self.proc.stdin is not None:
                self.proc.stdin.write(b"quit\n")
                self.proc.stdin.close()
            self.proc.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # the driver's own group
            self.proc.wait(timeout=10)
        self.log.close()


@contextlib.contextmanager
def started(side: Side, workload: str, opts: argparse.Namespace) -> Iterator[Driver | str]:
    """The side's driver, ready for ``workload`` on fresh resources; or the reason it
    cannot run it."""
    if side.peer and not PEERS_PYTHON.exists():
        yield "not installed: run python bench/peers.py --setup"
        return
    with ExitStack() as stack:
        args = ["--workload", workload, "--waiters", str(opts.waiters)]
        if side.store == "postgresql":
            _sa, raw = stack.enter_context(fresh_postgres())
            args += ["--store", "postgresql", "--url", raw]
        elif side.store == "sqlite":
            _sa, path = stack.enter_context(fresh_sqlite())
            args += ["--store", "sqlite", "--url", path]
        if side.broker:
            args += ["--broker", redis_url(stack.enter_context(fresh_redis_db()))]
        args += ["--queue", f"cf-peers-{os.getpid()}-{workload}-{side.key}".replace("@", "-")]
        if side.variant:
            args += ["--variant", side.variant]
        try:
            driver = Driver(side, args, timeout=opts.setup_timeout)
        except DriverError as exc:  # reported with the table, the other sides go on
            print(f"# {exc}", file=sys.stderr, flush=True)
            yield f"failed to set up: {str(exc).splitlines()[0]}"
            return
        stack.callback(driver.close)
        if "unsupported" in driver.hello:
            yield str(driver.hello["unsupported"])
        else:
            yield driver


# ======================================================================================
# Tables
# ======================================================================================


class PeerTable(Table):
    HEADER: ClassVar[tuple[str, ...]] = (  # type: ignore[misc]
        "workload / system",
        "celeryflow",
        "peer",
        "peer / celeryflow",
        "range over rounds",
        "",
    )


WHAT = {
    "steps": "100-step run, start -> done",
    "throughput": f"{RUNS:,} one-step runs, {SLOTS} slots",
    "sleepers": f"{SLEEPERS} runs sleeping 2 s, all done",
    "waiters": "1 event resumes 1 of N waiters, send -> done",
}
RATE = {"throughput"}


def fmt(workload: str, value: float) -> str:
    return fmt_rate(value) if workload in RATE else fmt_time(value)


def compare(
    table: Table, workload: str, got: dict[str, list[float]], sides: list[Side], stores: list[str]
) -> None:
    for store in stores:
        base_key = Side("celeryflow", store, "").key
        ours = got.get(base_key)
        if not ours:
            continue
        compared = False
        for side in sides:
            if side.system == "celeryflow" or side.key not in got:
                continue
            if side.store not in (store, None):
                continue
            theirs = got[side.key]
            ratios = [t / o for t, o in zip(theirs, ours, strict=True)]
            compared = True
            table.add(
                Row(
                    f"{STORE_LABEL[store]}: {side.label}"
                    + (" (broker)" if side.store is None else ""),
                    fmt(workload, median(ours)),
                    fmt(workload, median(theirs)),
                    median(ratios),
                    f"{min(ratios):.2f}-{max(ratios):.2f}",
                )
            )
        if not compared:  # no peer ran here (not set up, or left out): our figure alone
            table.add(
                Row(
                    f"{STORE_LABEL[store]}: celeryflow alone",
                    fmt(workload, median(ours)),
                    "",
                    None,
                    f"{fmt(workload, min(ours))}-{fmt(workload, max(ours))}",
                )
            )


CATCH_UP = 0.5  # seconds a side runs alone before it is measured
PAUSE_OTHERS = {"throughput", "sleepers"}  # measured with every other side stopped
# the peers that can wait for an event (Celery cannot; see each driver's UNSUPPORTED)
WAITING_PEERS = ("DBOS", "pyworkflow")


def alone(driver: Driver, drivers: Iterable[Driver], timeout: float) -> Any:
    """``driver``'s measurement with every other driver's processes stopped."""
    others = [p for d in drivers if d is not driver for p in d.processes()]
    stopped = []
    try:
        for process in others:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.suspend()
                stopped.append(process)
        # ``driver`` itself was stopped until the last measurement ended: its timers and
        # pollers catch up first
        time.sleep(CATCH_UP)
        return driver.measure(timeout)
    finally:
        for process in stopped:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.resume()


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot (Linux /proc/stat)."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return sum(fields) - idle, sum(fields)


def settle(quiet: float = 0.15, timeout: float = 60.0) -> str:
    """Wait until the machine is quiet: a set-up leaves work behind (a peer's worker
    still taking 10,000 parked runs in, autovacuum of the rows just written) that
    would load whichever side a round measures first. Quiet: under ``quiet`` of the
    CPUs busy over one second. A side that is never idle (DBOS's queue, polled every
    10 ms for the throughput workload, keeps about a quarter of this machine busy)
    ends the wait at ``timeout``. Returns what it saw."""
    started = time.monotonic()
    busy = 1.0
    while time.monotonic() - started < timeout:
        b0, t0 = _cpu_times()
        time.sleep(1.0)
        b1, t1 = _cpu_times()
        busy = (b1 - b0) / max(t1 - t0, 1)
        if busy < quiet:
            return f"machine quiet ({busy:.0%} busy) after {time.monotonic() - started:.0f} s"
    return f"machine still {busy:.0%} busy after {timeout:.0f} s; measured anyway"


def run_workload(
    workload: str, sides: list[Side], stores: list[str], opts: argparse.Namespace
) -> Table:
    n_rounds = opts.rounds * (3 if workload == "waiters" else 1)  # resumes are cheap
    # 1,000 runs of the slowest peer take minutes: no warm-up round (each driver's
    # worker has started and the peers' schemas exist), one round fewer
    warm_up = workload != "throughput"
    if not warm_up:
        n_rounds = max(1, n_rounds - 1)
    table = PeerTable(
        f"{workload}: {WHAT[workload]} (median of {n_rounds} rotating rounds"
        + (f", N={opts.waiters:,}" if workload == "waiters" else "")
        + ")"
    )
    unsupported: list[str] = []
    with ExitStack() as stack:
        drivers: dict[str, Driver] = {}
        for side in sides:
            t0 = time.time()
            got = stack.enter_context(started(side, workload, opts))
            if isinstance(got, str):
                unsupported.append(f"{side.label} on {STORE_LABEL[side.store]}: {got}")
                print(f"#   {workload}: {side.key}: {got}", flush=True)
                continue
            drivers[side.key] = got
            print(f"#   {workload}: {side.key} ready in {time.time() - t0:.0f} s", flush=True)
        settled = settle()
        print(f"#   {workload}: {settled}", flush=True)
        if workload in PAUSE_OTHERS:
            measures = {
                key: lambda d=driver: alone(d, drivers.values(), opts.measure_timeout)
                for key, driver in drivers.items()
            }
        else:
            measures = {
                key: lambda d=driver: d.measure(opts.measure_timeout)
                for key, driver in drivers.items()
            }
        results = rounds(n_rounds, measures, warm_up=warm_up)
    compare(table, workload, results, sides, stores)
    table.notes.append(f"before the first round: {settled}")
    table.notes += [f"cannot: {line}" for line in unsupported]
    if not warm_up:
        table.notes.append("no warm-up round (each round is 1,000 runs per side)")
    table.notes.append(
        "ratio: the peer's figure over celeryflow's on the same store, taken within each "
        "round; "
        + (
            "a rate: above 1 the peer is faster"
            if workload in RATE
            else "a time: above 1 the peer is slower"
        )
    )
    return table


# ======================================================================================


def setup_venv() -> int:
    """Create bench/peers/.venv with the pinned peers."""
    subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
    pip = [str(PEERS_PYTHON), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "-r", str(DRIVERS / "requirements.txt")], check=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--setup", action="store_true", help="create bench/peers/.venv")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round, 200 waiters")
    parser.add_argument("--only", default=",".join(WORKLOADS), help=",".join(WORKLOADS))
    parser.add_argument("--stores", default="postgresql,sqlite")
    parser.add_argument("--systems", default="", help="only these (celeryflow always runs)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per workload")
    parser.add_argument("--waiters", type=int, default=10_000, help="N for the waiters")
    parser.add_argument("--setup-timeout", type=float, default=900.0)
    parser.add_argument("--measure-timeout", type=float, default=900.0)
    opts = parser.parse_args(argv)
    if opts.setup:
        return setup_venv()
    if opts.quick:
        opts.rounds, opts.waiters = 1, 200
    workloads = [w.strip() for w in opts.only.split(",") if w.strip()]
    stores = [s.strip() for s in opts.stores.split(",") if s.strip()]
    for w in workloads:
        if w not in WORKLOADS:
            parser.error(f"unknown workload {w!r}; choose from {', '.join(WORKLOADS)}")
    for s in stores:
        if s not in ("postgresql", "sqlite"):
            parser.error(f"unknown store {s!r}; choose from postgresql, sqlite")
    sides = sides_for(stores)
    if opts.systems:
        known = {s.system.lower() for s in sides}
        keep = {"celeryflow", *(s.strip().lower() for s in opts.systems.split(",") if s.strip())}
        unknown = sorted(keep - known)
        if unknown:
            parser.error(
                f"unknown system(s) {', '.join(unknown)}; choose from {', '.join(sorted(known))}"
            )
        sides = [s for s in sides if s.system.lower() in keep]

    began = time.time()
    print(f"# python bench/peers.py {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip())
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    for line in machine_info():
        print(f"# {line}")
    if PEERS_PYTHON.exists():
        pins = subprocess.run(
            [str(PEERS_PYTHON), "-m", "pip", "freeze"], capture_output=True, text=True, check=False
        ).stdout.split()
        wanted = ("dbos==", "pyworkflow-engine==", "celery==", "psycopg==", "sqlalchemy==")
        print("# peers venv: " + ", ".join(p for p in pins if p.lower().startswith(wanted)))
    print(flush=True)
    for workload in workloads:
        # A waiter population stays parked for the whole workload, and DBOS's on SQLite
        # polls (10,000 workflows querying their database): it loaded the PostgreSQL
        # rounds too (celeryflow 17.4 ms, DBOS 16.6 ms, against 6.8 and 7.2 ms without
        # it). So each store's waiters run by themselves.
        here = [s for s in sides if workload in s.workloads]
        for chosen, group in groups_for(workload, here, stores):
            t0 = time.time()
            table = run_workload(workload, chosen, group, opts)
            table.notes.append(f"workload took {time.time() - t0:.0f} s")
            print(table.render(), end="\n\n", flush=True)
    print(
        f"# total {time.time() - began:.0f} s; load average "
        + " ".join(f"{x:.2f}" for x in os.getloadavg())
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
