"""pyworkflow-engine's side of bench/peers.py (bench/peers/.venv).

Durable default configuration: the Celery runtime (``default_runtime="celery"``,
``default_durable=True``) with pyworkflow's own storage on PostgreSQL (asyncpg) or
SQLite (aiosqlite), set through its ``PYWORKFLOW_*`` environment variables for this
process and for its worker ``python -m celery -A pyworkflow.celery.app worker -c 2``
(prefork; all four pyworkflow queues; broker a private Redis db, no result backend).
Steps run on the DISTRIBUTED strategy (each step a Celery task, the workflow replayed
from its event log after each), the default; ``--variant ONE_THREAD`` declares the
workflow ``ONE_THREAD`` (every step inline in the workflow task) for the steps
workload only.

* steps: ``start(hundred)`` until ``storage.get_run`` shows it completed (5 ms polls).
* throughput: 1,000 ``start(one_step)`` until all are completed.
* sleepers: 200 ``start(sleeper, 2)`` (``await sleep("2s")``: a Celery countdown task)
  until all are completed.
* waiters: N runs each in ``await hook("shipped")``; ``resume_hook(token, payload)``
  for a random one, to the commit that completed it (PostgreSQL: protocol.CommitWatch's
  NOTIFY, as for celeryflow) or, on SQLite, the run's ``completed_at`` (pyworkflow's
  worker writes it, ``datetime.now(UTC)``), read once ``storage.get_run`` shows it
  completed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from protocol import RUNS, SLEEP_S, SLEEPERS, CommitWatch, Unsupported, serve  # noqa: E402

POLL = 0.005
QUEUES = "pyworkflow.default,pyworkflow.steps,pyworkflow.workflows,pyworkflow.schedules"


def environment(args: Any) -> dict[str, str]:
    env = {
        "PYWORKFLOW_RUNTIME": "celery",
        "PYWORKFLOW_CELERY_BROKER": args.broker,
        "PYWORKFLOW_DISCOVER": "pyworkflow_apps",
        "PYWORKFLOW_LOG_LEVEL": "WARNING",
    }
    if args.store == "postgresql":
        url = urlsplit(args.url)
        env |= {
            "PYWORKFLOW_STORAGE_TYPE": "postgres",
            "PYWORKFLOW_POSTGRES_HOST": url.hostname or "127.0.0.1",
            "PYWORKFLOW_POSTGRES_PORT": str(url.port or 5432),
            "PYWORKFLOW_POSTGRES_USER": url.username or "postgres",
            "PYWORKFLOW_POSTGRES_PASSWORD": url.password or "",
            "PYWORKFLOW_POSTGRES_DATABASE": url.path.strip("/"),
        }
    else:
        env |= {"PYWORKFLOW_STORAGE_TYPE": "sqlite", "PYWORKFLOW_STORAGE_PATH": args.url}
    return env


@contextlib.contextmanager
def worker(env: dict[str, str]) -> Iterator[None]:
    cmd = [sys.executable, "-m", "celery", "-A", "pyworkflow.celery.app", "worker"]
    cmd += ["-Q", QUEUES, "-c", "2", "--pool", "prefork", "--loglevel", "WARNING"]
    cmd += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    full = {**os.environ, **env, "PYTHONPATH": str(HERE)}
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        cmd, cwd=HERE, env=full, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        yield
    except BaseException:
        log.seek(0)
        sys.stderr.write(log.read().decode(errors="replace")[-4000:])
        raise
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the worker's own group
            proc.wait(timeout=10)
        log.close()


async def create_schema(storage: Any, store: str) -> None:
    """Create pyworkflow's schema before its worker starts.

    pyworkflow-engine 0.4.0 on an empty PostgreSQL database runs its migrations
    before it creates its tables, and migration 5 alters ``stream_subscriptions``,
    which does not exist yet: ``connect()`` fails. Work-around: connect once with the
    migrations skipped (the tables are created at their latest shape), then run them
    (each is ``IF NOT EXISTS``), which records the schema version."""
    if store != "postgresql":
        await storage.connect()
        return
    from pyworkflow.storage import postgres

    runner = postgres.PostgresMigrationRunner
    migrate = runner.run_migrations

    async def skip(self: Any) -> list[Any]:
        return []

    runner.run_migrations = skip  # type: ignore[method-assign]
    try:
        await storage.connect()
    finally:
        runner.run_migrations = migrate  # type: ignore[method-assign]
    await migrate(runner(await storage._get_pool()))


@contextlib.contextmanager
def setup(args: Any) -> Iterator[Any]:
    if args.variant == "ONE_THREAD" and args.workload != "steps":
        raise Unsupported("the ONE_THREAD variant is measured on the steps workload only")
    env = environment(args)
    os.environ.update(env)
    import pyworkflow
    import pyworkflow_apps as wf
    from pyworkflow import resume_hook, start
    from pyworkflow.config import _load_env_storage_config
    from pyworkflow.storage.config import config_to_storage
    from pyworkflow.storage.schemas import RunStatus

    storage = config_to_storage(_load_env_storage_config())
    pyworkflow.configure(
        default_runtime="celery", default_durable=True, storage=storage, celery_broker=args.broker
    )
    loop = asyncio.new_event_loop()
    run = loop.run_until_complete
    run(create_schema(storage, args.store))

    async def done(run_ids: list[str], timeout: float = 600) -> None:
        pending = list(run_ids)
        deadline = time.monotonic() + timeout
        while pending:
            r = await storage.get_run(pending[0])
            if r is not None and r.status == RunStatus.COMPLETED:
                pending.pop(0)
                continue
            if r is not None and r.status in (RunStatus.FAILED, RunStatus.CANCELLED):
                raise RuntimeError(f"run {r.run_id} is {r.status}: {r.error}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(pending)} runs not completed in {timeout:.0f} s")
            await asyncio.sleep(POLL)

    info = {"pyworkflow-engine": metadata.version("pyworkflow-engine")}
    with worker(env):
        if args.workload == "steps":
            func = wf.hundred_one_thread if args.variant == "ONE_THREAD" else wf.hundred

            async def steps() -> float:
                started = time.perf_counter()
                run_id = await start(func)
                await done([run_id])
                took = time.perf_counter() - started
                recorded = await storage.get_events(run_id, event_types=["step.completed"])
                if len(recorded) != wf.STEPS:  # outside the timing: each step did run
                    raise RuntimeError(f"run {run_id} recorded {len(recorded)} steps")
                return took

            yield (lambda: run(steps())), info
        elif args.workload == "throughput":

            async def throughput() -> float:
                started = time.perf_counter()
                ids = [await start(wf.one_step) for _ in range(RUNS)]
                await done(ids)
                return RUNS / (time.perf_counter() - started)

            yield (lambda: run(throughput())), info
        elif args.workload == "sleepers":

            async def sleepers() -> float:
                started = time.perf_counter()
                ids = [await start(wf.sleeper, SLEEP_S) for _ in range(SLEEPERS)]
                await done(ids)
                return time.perf_counter() - started

            yield (lambda: run(sleepers())), info
        else:
            rng = random.Random(4)

            async def park() -> dict[str, str]:
                ids = [await start(wf.waiter) for _ in range(args.waiters)]
                tokens: dict[str, str] = {}
                deadline = time.monotonic() + 1800
                while len(tokens) < len(ids):
                    for run_id in ids:
                        if run_id not in tokens:
                            hooks = await storage.list_hooks(run_id=run_id, limit=1)
                            if hooks:
                                tokens[run_id] = hooks[0].token
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{len(ids) - len(tokens)} waiters not parked")
                    await asyncio.sleep(0.2)
                return tokens

            tokens = run(park())
            pg = args.store == "postgresql"
            watch = CommitWatch(args.url, "workflow_runs", "run_id") if pg else None

            async def resume() -> float:
                run_id = rng.choice(sorted(tokens))
                token = tokens.pop(run_id)
                wall = time.time()
                started = time.perf_counter()
                await resume_hook(token, {"order": run_id})
                if watch is not None:
                    return watch.completed(run_id) - started
                await done([run_id], timeout=120)
                finished = await storage.get_run(run_id)
                if finished is None or finished.completed_at is None:
                    raise RuntimeError(f"run {run_id} is completed without a completed_at")
                return finished.completed_at.timestamp() - wall

            yield (lambda: run(resume())), info
    run(storage.disconnect())


if __name__ == "__main__":
    raise SystemExit(serve(setup))
