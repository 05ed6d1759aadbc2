"""The operators' commands (issue 14 part 1): send, runs, run, events, functions,
pause/resume, cancel/replay by filter, doctor. One test drives the installed
``celeryflow`` script against a real ``celery worker`` subprocess; the others call
the command in-process through click's CliRunner."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from flowkit import APPS, apps_env, worker_process
from services import Stack, embedded_broker_url, fresh_sqlite_url, unique_name

from celeryflow import Event, Flow
from celeryflow.cli import main
from celeryflow.durations import utcnow
from celeryflow.runs import RunStatus
from celeryflow.store.health import beat
from celeryflow.testing import wait_for

CLI = str(Path(sys.executable).with_name("celeryflow"))


def ops_env(stack: Stack) -> dict[str, str]:
    clean = {k: v for k, v in apps_env().items() if k not in ("CELERYFLOW_STORE", "CELERY_APP")}
    return {
        **clean,
        "CF_BROKER": stack.broker_url,
        "CF_STORE": stack.store_url,
        "CF_QUEUE": stack.queue,
    }


def cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, "-A", "ops_app", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.stdout, result.stderr)
    return result.stdout


def load_app(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Flow:
    """Import ops_app afresh in this process, as ``-A ops_app`` does, with ``env``."""
    monkeypatch.syspath_prepend(str(APPS))
    for name in ("CF_BROKER", "CF_STORE", "CF_QUEUE"):
        monkeypatch.setenv(name, env[name])
    monkeypatch.delenv("CELERY_APP", raising=False)
    monkeypatch.delenv("CELERYFLOW_STORE", raising=False)
    sys.modules.pop("ops_app", None)
    import ops_app

    flow: Flow = ops_app.flow
    return flow


def invoke(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


def app_ok(*args: str) -> str:
    result = invoke("-A", "ops_app", *args)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result.stdout


@pytest.mark.timeout(1200)  # a few subprocesses; each imports Celery (slow on a busy host)
@pytest.mark.parametrize("stack", ["embedded", "redis-postgres"], indirect=True)
def test_the_cli_against_a_real_worker(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = ops_env(stack)
    command = [sys.executable, "-m", "celery", "-A", "ops_app", "worker", "--pool", "threads"]
    command += ["-c", "2", "-n", f"ops-{unique_name('w')}@%h", "--loglevel", "INFO"]
    command += ["--without-mingle", "--without-gossip", "--without-heartbeat"]
    flow = load_app(monkeypatch, env)
    with worker_process(command, env, tmp_path, tmp_path / "worker.log"):
        # the installed script, in its own process
        sent = ok(cli(env, tmp_path, "send", "ops/greet", "--data", '{"name": "ann"}'))
        [event_line, run_line] = sent.splitlines()
        event_id, run_id = event_line.split()[1], run_line.split()[1]
        assert run_line.split()[2] == "ops-greet"
        wait_for(lambda: flow.get_run(run_id).status == RunStatus.COMPLETED, what="greet runs")

        data = tmp_path / "fail.json"
        data.write_text('{"n": 7}')
        failed = json.loads(app_ok("send", "ops/fail", "--data", f"@{data}", "--json"))
        [fail_run] = [r["id"] for r in failed["runs"]]
        wait_for(lambda: flow.get_run(fail_run).status == RunStatus.FAILED, what="fail fails")

        [header, *rows] = ok(cli(env, tmp_path, "runs")).splitlines()
        assert header.split() == "RUN FUNCTION STATUS EVENT CREATED DURATION ERROR".split()
        assert rows[0].split()[:4] == [fail_run, "ops-fail", "failed", "ops/fail"]
        assert rows[0].endswith("ValueError: boom 7")
        assert rows[1].split()[:4] == [run_id, "ops-greet", "completed", "ops/greet"]

        trace = app_ok("run", run_id[:12])
        assert f"run:      {run_id}" in trace and f"event:    ops/greet {event_id}" in trace
        [step_row] = [line for line in trace.splitlines() if " hello " in f" {line} "]
        assert step_row.split()[:5] == ["0", "hello", "run", "completed", "1"]
        assert json.loads(app_ok("run", run_id, "--json"))["output"] == "hi ann"

        events = app_ok("events", "--name", "ops/greet").splitlines()
        assert events[1].split()[:2] == [event_id, "ops/greet"]
        assert f"{run_id} ops-greet completed" in events[1]

        replayed = app_ok("replay", "--function", "ops-fail", "--yes")
        assert replayed.strip() == "replayed 1 run(s) of 'ops-fail'"
        wait_for(
            lambda: len(flow.list_runs(function_id="ops-fail", status="failed")) == 2,
            what="the replay fails too",
        )
        replay = flow.list_runs(function_id="ops-fail")[0]
        assert replay.id != fail_run and replay.events[0].data == {"n": 7}

        # the worker answers the broadcast, its reconciler stamps its heartbeat and
        # recorded the cron function's baseline slot: every check passes
        def healthy() -> Result | None:
            result = invoke("-A", "ops_app", "doctor", "--timeout", "3")
            return result if result.exit_code == 0 else None

        report = wait_for(healthy, timeout=120, what="doctor passes").stdout
        assert "FAIL" not in report
        assert "4 function(s)" in report and "ops-yearly: last slot" in report

        assert app_ok("pause", "ops-greet").startswith("paused ops-greet")
        listed = app_ok("functions").splitlines()
        [greet_row] = [line for line in listed if line.startswith("ops-greet ")]
        assert "since" in greet_row
        [yearly_row] = [line for line in listed if line.startswith("ops-yearly ")]
        assert (
            "cron '0 0 1 1 *'" in yearly_row
            and "concurrency(limit=2, scope=function)" in yearly_row
        )
        idle = app_ok("send", "ops/greet", "--data", '{"name": "bob"}')
        assert "started no run" in idle
        assert app_ok("resume", "ops-greet").strip() == "resumed ops-greet"

    # The resume went through the CLI's own store; the app's Flow (this process's,
    # as -A loads it) reads the paused set at most PAUSED_TTL ago, as an app process
    # does when the CLI runs elsewhere.
    wait_for(
        lambda: "ops-greet" not in flow.store.paused_function_ids(),
        timeout=10,
        what="the resume to reach the app's paused-set cache",
    )
    # no worker now: a run queued for long enough is reported, and doctor fails
    queued = app_ok("send", "ops/greet", "--data", '{"name": "cy"}')
    assert "started no run" not in queued, queued
    down = cli(env, tmp_path, "doctor", "--timeout", "1", "--stuck-after", "0s")
    assert down.returncode == 1, down.stdout
    assert "FAIL  workers     none answered" in down.stdout
    # (the send's answer and the runs, should this ever fail: it did once in CI)
    shown = (queued, app_ok("runs", "--function", "ops-greet"))
    assert "ops-greet: 1 run(s) queued since" in down.stdout, shown


# -- in-process, through click's CliRunner -------------------------------------------


@pytest.fixture
def ops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Flow, str]]:
    """The ops_app module's Flow on a fresh SQLite store (imported afresh)."""
    store = fresh_sqlite_url(tmp_path)
    env = {"CF_BROKER": embedded_broker_url(tmp_path), "CF_STORE": store, "CF_QUEUE": "ops"}
    yield load_app(monkeypatch, env), store
    sys.modules.pop("ops_app", None)


def test_bulk_cancel_counts_asks_and_shows_progress(ops: tuple[Flow, str]) -> None:
    flow, store = ops
    flow.send([Event(name="ops/greet", data={"name": str(n)}) for n in range(5)])
    flow.send([Event(name="ops/fail", data={"n": n}) for n in range(2)])

    dry = invoke("--store", store, "cancel", "--function", "ops-greet", "--dry-run")
    assert dry.exit_code == 0 and dry.stdout == "5 run(s) of 'ops-greet' match; none cancelled\n"
    declined = invoke("--store", store, "cancel", "--function", "ops-greet", input="n\n")
    assert declined.exit_code == 1 and "Aborted" in declined.stderr
    assert len(flow.list_runs(status="queued")) == 7

    done = invoke("--store", store, "cancel", "--function", "ops-greet", "--status", "queued")
    assert done.exit_code == 1  # no tty answer: the confirmation aborts
    done = invoke("--store", store, "cancel", "--function", "ops-greet", input="y\n")
    assert done.stdout.endswith("cancelled 5 run(s) of 'ops-greet'\n")
    assert "cancelling" in done.stderr  # the progress bar, on stderr
    assert {r.function_id for r in flow.list_runs(status="cancelled")} == {"ops-greet"}

    bad = invoke("--store", store, "cancel", "--since", "1h", "--status", "completed")
    assert bad.exit_code == 2 and "cancelled only from" in bad.stderr
    assert invoke("--store", store, "cancel", "--since", "soon").exit_code == 2
    both = invoke("--store", store, "cancel", "abc", "--function", "ops-greet")
    assert both.exit_code == 2 and "a RUN_ID or a filter" in both.stderr


def test_runs_pages_filters_and_json(ops: tuple[Flow, str]) -> None:
    flow, store = ops
    flow.send([Event(name="ops/greet", data={"name": str(n)}) for n in range(5)])
    flow.send([Event(name="ops/fail", data={"n": n}) for n in range(3)])
    newest_first = [r.id for r in flow.list_runs()]

    first = json.loads(invoke("--store", store, "runs", "--json", "--limit", "3").stdout)
    assert [r["id"] for r in first["runs"]] == newest_first[:3] and first["next"]
    rest = invoke("--store", store, "runs", "--json", "--limit", "10", "--after", first["next"])
    assert [r["id"] for r in json.loads(rest.stdout)["runs"]] == newest_first[3:]
    paged = invoke("--store", store, "runs", "--limit", "3")
    assert f"more: --after {first['next']}" in paged.stderr

    by_event = invoke("--store", store, "runs", "--event", "ops/fail", "--json").stdout
    assert {r["event_name"] for r in json.loads(by_event)["runs"]} == {"ops/fail"}
    assert len(json.loads(by_event)["runs"]) == 3
    later = invoke("--store", store, "runs", "--since", (utcnow() + timedelta(hours=1)).isoformat())
    assert later.stdout.splitlines()[1:] == []
    bad = invoke("--store", store, "runs", "--status", "queued,done")
    assert bad.exit_code == 2 and "--status 'done' is not a run state" in bad.stderr


def test_replay_send_functions_need_the_app(ops: tuple[Flow, str]) -> None:
    flow, store = ops
    [event_id] = flow.send(Event(name="ops/fail", data={"n": 1}))
    [old] = flow.list_runs(event_id=event_id)
    for args in (["replay", old.id], ["send", "ops/fail"], ["functions"]):
        result = invoke("--store", store, *args)
        assert result.exit_code == 2 and "needs -A/--app" in result.stderr, args

    dry = invoke("-A", "ops_app", "replay", "--event", "ops/fail", "--dry-run")
    assert dry.stdout == "1 run(s) from 'ops/fail' events match; none replayed\n"
    one = invoke("-A", "ops_app", "replay", old.id[:10])
    new_id = one.stdout.split()[-1]
    assert one.stdout == f"replayed run {old.id} as {new_id}\n"
    new = flow.get_run(new_id)
    assert (new.function_id, new.events, new.status) == ("ops-fail", old.events, "queued")

    bad = invoke("-A", "ops_app", "send", "ops/x", "--data", "[1]")
    assert bad.exit_code == 2 and "a JSON object, not list" in bad.stderr
    assert invoke("-A", "ops_app", "send", "ops/x", "--data", "{").exit_code == 2
    unknown = invoke("-A", "ops_app", "pause", "ops-nope")
    assert unknown.exit_code == 1 and "no function 'ops-nope'" in unknown.stderr


def test_pause_without_the_app_and_functions_json(ops: tuple[Flow, str]) -> None:
    flow, store = ops
    flow.store.migrate()
    assert invoke("--store", store, "pause", "ops-wait").exit_code == 0
    again = invoke("--store", store, "pause", "ops-wait")
    assert again.stdout.startswith("ops-wait was already paused (since ")
    listed: dict[str, Any] = json.loads(invoke("-A", "ops_app", "functions", "--json").stdout)
    by_id = {f["id"]: f for f in listed["functions"]}
    assert by_id["ops-wait"]["paused_at"] and by_id["ops-greet"]["paused_at"] is None
    assert len(by_id["ops-yearly"]["next_slots"]) == 3
    assert by_id["ops-yearly"]["flow_control"] == {"concurrency": "(limit=2, scope=function)"}
    assert invoke("--store", store, "resume", "ops-wait").stdout == "resumed ops-wait\n"
    assert invoke("--store", store, "resume", "ops-wait").stdout == "ops-wait was not paused\n"


def test_doctor_without_a_worker_fails_and_says_why(ops: tuple[Flow, str]) -> None:
    flow, store = ops
    missing = invoke("--store", store, "doctor")
    assert missing.exit_code == 1 and missing.stdout.startswith("FAIL  store       no celeryflow")
    flow.store.migrate()
    only_store = invoke("--store", store, "doctor")
    assert only_store.exit_code == 1
    lines = only_store.stdout.splitlines()
    assert lines[0].startswith("OK    store")
    assert any(line.startswith("FAIL  reconciler  no pass recorded") for line in lines)

    beat(flow.store, "reconciler", "host:1", utcnow())
    flow.store.pause_function("ops-wait", utcnow())
    passing = invoke("--store", store, "doctor")
    assert passing.exit_code == 0, passing.stdout
    assert "OK    reconciler  last pass" in passing.stdout
    assert "WARN  paused      ops-wait" in passing.stdout
    assert "WARN  broker      not checked" in passing.stdout
