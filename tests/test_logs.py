"""Logs a person can read: housekeeping at DEBUG, alembic quiet, ctx.logger logs each
line once per run, every record in a run carries it, and run messages are named
after their function."""

from __future__ import annotations

import importlib
import logging
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from celery import Celery
from celery.signals import before_task_publish
from celery.utils.saferepr import saferepr
from flowkit import APPS, apps_env, worker_process

from celeryflow import Event, Flow, RunStatus, event
from celeryflow.logs import NO_RUN, RunLogger, run_context
from celeryflow.testing import wait_for, wait_for_run, worker

NOISE = ("reconcil", "alembic", "Context impl", "Will assume", "setup plugin", "Running upgrade")


@contextmanager
def logs_worker(store_url: str, cwd: Path) -> Iterator[Path]:
    """``celery -A logs_app worker -B --loglevel INFO`` (beat sends the
    ``celeryflow.reconcile`` entry every second), its log in ``cwd``."""
    log = cwd / "worker.log"
    env = apps_env(CF_STORE=store_url)
    command = [sys.executable, "-m", "celery", "-A", "logs_app", "worker", "-B"]
    command += ["-s", str(cwd / "beat-schedule"), "--pool", "threads", "-c", "2"]
    command += ["--loglevel", "INFO", "--without-mingle", "--without-gossip"]
    with worker_process(command, env, cwd, log, tail=6000):
        yield log


def records(log: Path) -> list[str]:
    """The log's records (a traceback's lines belong to the record before them)."""
    return [line for line in log.read_text().splitlines() if line.startswith("[")]


def test_a_worker_log_reads_well(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    monkeypatch.setenv("CF_STORE", url)
    monkeypatch.syspath_prepend(str(APPS))
    sys.modules.pop("logs_app", None)
    flow: Flow = importlib.import_module("logs_app").flow
    flow.list_runs()  # the store exists: the worker only checks its schema revision
    with logs_worker(url, tmp_path) as log:
        wait_for(lambda: " ready." in log.read_text(), timeout=60, what="worker ready")
        quiet_from = len(records(log))
        time.sleep(10)  # measured: what an idle worker (with -B) logs in 10 s
        quiet = records(log)[quiet_from:]

        runs = {}
        for tag in ("a", "b"):
            [event_id] = flow.send(Event(name="logs/chatty", data={"tag": tag}))
            runs[tag] = wait_for_run(flow, event_id=event_id, timeout=60).id
        wait_for(
            lambda: sum("succeeded" in line for line in records(log)) >= 4,
            timeout=30,
            what="the runs' task lines",
        )
    sys.modules.pop("logs_app", None)

    assert len(quiet) <= 2, quiet
    lines = records(log)
    assert not [line for line in lines if any(word in line for word in NOISE)], lines
    for tag, run_id in runs.items():
        mine = f"run={run_id} fn=chatty]"
        # each ctx.logger line once, though the run executed twice (before and after
        # the nap); the user's own logger inside a step carries the run too
        for text in (f"before the nap {tag}", f"after the nap {tag}", f"inside the step {tag}"):
            found = [line for line in lines if line.endswith(text)]
            assert len(found) == 1 and mine in found[0], (text, found)
    # run messages are named after their function, in Celery's own lines
    received = [
        line for line in lines if re.search(r"Task celeryflow\.run:chatty\[.+\] received", line)
    ]
    assert len(received) >= 4, lines  # two executions per run
    assert not [line for line in lines if "Task celeryflow.run[" in line], lines
    # records outside any run show the default
    assert any(f"run={NO_RUN} fn={NO_RUN}]" in line for line in lines)


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, text: str) -> list[logging.LogRecord]:
        return [r for r in self.records if r.getMessage() == text]


@pytest.fixture
def captured() -> Iterator[Capture]:
    handler = Capture()
    loggers = [logging.getLogger(name) for name in ("myapp", "celeryflow")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    yield handler
    for logger, level in zip(loggers, levels, strict=True):
        logger.removeHandler(handler)
        logger.setLevel(level)


def embedded_flow(tmp_path: Path) -> Flow:
    app = Celery("logs-inproc")  # no broker: the embedded one beside the store
    app.conf.worker_hijack_root_logger = False
    return Flow(
        app,
        store=f"sqlite:///{tmp_path}/store.db",
        retry_base="50ms",
        reconcile_interval="1s",
        redeliver_after="5s",
    )


def test_ctx_logger_logs_each_line_once_across_replays_retries_and_branches(
    tmp_path: Path, captured: Capture
) -> None:
    flow = embedded_flow(tmp_path)
    myapp = logging.getLogger("myapp")
    attempts: list[int] = []

    def flaky() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("first try fails")
        myapp.info("flaky worked")
        return "ok"

    def branch_work(tag: str) -> str:
        myapp.info("branch %s", tag)
        return tag

    @flow.function(id="replayed", trigger=event("t/replayed"))
    def replayed(ctx):  # type: ignore[no-untyped-def]
        ctx.logger.info("start")
        ctx.step.run("one", myapp.info, "step one")
        ctx.logger.info("between")
        ctx.step.sleep("nap", "200ms")  # a second execution replays "one"
        ctx.logger.info("after the nap")
        ctx.step.run("flaky", flaky)  # a retry: a third execution
        ctx.logger.info("before the branches")
        ctx.step.parallel(  # each branch replays everything above, then the parent
            "fan",
            [
                lambda: ctx.step.run("a", branch_work, "a"),
                lambda: ctx.step.run("b", branch_work, "b"),
            ],
        )
        ctx.logger.info("done")

    with worker(flow):
        [event_id] = flow.send(Event(name="t/replayed"))
        run = wait_for_run(flow, event_id=event_id, timeout=60)
    assert run.status == RunStatus.COMPLETED, run.error
    branches = {r.id for r in flow.list_runs(function_id="replayed")} - {run.id}
    assert len(branches) == 2

    for text in ("start", "between", "after the nap", "before the branches", "done"):
        [record] = captured.messages(text)  # exactly once
        assert (record.run_id, record.function_id) == (run.id, "replayed")  # type: ignore[attr-defined]
        # the record names the function's line, not the proxy's
        assert (record.funcName, record.pathname) == ("replayed", __file__)
    # the user's own logger, in a step and in the branches' steps, and the engine's
    for text in ("step one", "flaky worked"):
        [record] = captured.messages(text)
        assert (record.run_id, record.function_id) == (run.id, "replayed")  # type: ignore[attr-defined]
    for tag in ("a", "b"):
        [record] = captured.messages(f"branch {tag}")
        assert record.run_id in branches and record.function_id == "replayed"  # type: ignore[attr-defined]
    [retry] = [r for r in captured.records if "attempt 1 failed" in r.getMessage()]
    assert retry.name == "celeryflow.run" and retry.run_id == run.id  # type: ignore[attr-defined]


def test_records_outside_a_run_show_the_default(tmp_path: Path, captured: Capture) -> None:
    embedded_flow(tmp_path)  # the first Flow installs the record factory
    myapp = logging.getLogger("myapp")
    myapp.info("outside")
    with run_context("r-1", "fn-1"):
        myapp.info("inside")
    myapp.info("after")
    got = {r.getMessage(): (r.run_id, r.function_id) for r in captured.records}  # type: ignore[attr-defined]
    assert got == {
        "outside": (NO_RUN, NO_RUN),
        "inside": ("r-1", "fn-1"),
        "after": (NO_RUN, NO_RUN),
    }


def test_run_logger_calls_the_wrapped_loggers_own_methods(captured: Capture) -> None:
    class Shouting(logging.Logger):
        def info(self, msg: object, *args: object, **kwargs: object) -> None:
            super().info(f"shouting: {msg}", *args, **kwargs)  # type: ignore[arg-type]

    user = Shouting("myapp.shouting")
    user.addHandler(captured)
    replaying = [True]
    logger = RunLogger(user, lambda: replaying[0])
    logger.info("quiet %s", 1)
    replaying[0] = False
    logger.info("loud %s", 2)
    assert [r.getMessage() for r in captured.records] == ["shouting: loud 2"]


def test_alembic_is_quiet_and_a_migration_says_what_it_applied(tmp_path: Path) -> None:
    handler = Capture()
    loggers = [logging.getLogger(name) for name in ("alembic", "celeryflow.store")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        url = f"sqlite:///{tmp_path}/fresh.db"
        Flow(Celery("first", broker="memory://"), store=url).list_runs()  # creates it
        created = list(handler.records)
        Flow(Celery("second", broker="memory://"), store=url).list_runs()  # checks it
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)
    [line] = [r.getMessage() for r in created]
    assert re.fullmatch(
        r"celeryflow store sqlite:///\S+/fresh.db: applied migration\(s\) 0001, .+ "
        r"\(schema empty -> \d+\)",
        line,
    ), line
    assert handler.records == created  # the second process logs nothing


def test_a_run_message_shows_its_arguments_as_celery_would(tmp_path: Path) -> None:
    # Flower and `celery inspect` show a message's argsrepr and kwargsrepr; the
    # doorbell passes them precomputed (Celery's saferepr costs a tenth of a publish)
    flow = embedded_flow(tmp_path)
    published: list[dict[str, object]] = []

    @flow.function(id="shown", trigger=event("logs/shown"))
    def shown(ctx):  # type: ignore[no-untyped-def]
        ctx.step.sleep("nap", 0.1)  # a second message, rung with an ETA
        return "ok"

    def on_publish(headers: dict[str, object], **_: object) -> None:
        published.append(headers)

    before_task_publish.connect(on_publish, weak=False)
    try:
        with worker(flow):
            [event_id] = flow.send(Event(name="logs/shown"))
            run = wait_for_run(flow, event_id=event_id, timeout=30)
    finally:
        before_task_publish.disconnect(on_publish)

    assert run.status == RunStatus.COMPLETED
    rings = [h for h in published if h.get("shadow") == "celeryflow.run:shown"]
    assert len(rings) >= 2 and any(h.get("eta") for h in rings), published
    for headers in rings:
        assert headers["argsrepr"] == saferepr((run.id,)) and headers["kwargsrepr"] == "{}"
