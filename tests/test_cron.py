"""Cron triggers: DST, config errors, the once-per-slot ledger, and two real beats."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from itertools import pairwise
from pathlib import Path

import pytest
from celery import Celery
from services import Stack

from celeryflow import ConfigError, Flow, cron, event
from celeryflow.testing import wait_for

APPS = Path(__file__).parent / "apps"


def test_slots_follow_dst_in_the_triggers_time_zone() -> None:
    nine = cron("0 9 * * *", tz="Europe/Berlin")
    # Berlin switches to summer time on 2026-03-29: 09:00 is 08:00 UTC before, 07:00 after
    assert nine.next_slot(datetime(2026, 3, 28, 0, 0, tzinfo=timezone.utc)) == datetime(
        2026, 3, 28, 8, 0, tzinfo=timezone.utc
    )
    assert nine.next_slot(datetime(2026, 3, 29, 0, 0, tzinfo=timezone.utc)) == datetime(
        2026, 3, 29, 7, 0, tzinfo=timezone.utc
    )
    assert nine.latest_slot(datetime(2026, 3, 30, 6, 59, tzinfo=timezone.utc)) == datetime(
        2026, 3, 29, 7, 0, tzinfo=timezone.utc
    )


def test_invalid_cron_or_time_zone_fails_at_decoration(tmp_path: Path) -> None:
    flow = Flow(Celery("c", broker="memory://"), store=f"sqlite:///{tmp_path}/s.db")
    with pytest.raises(ConfigError, match=r"'bad-cron'.*invalid cron expression"):
        flow.function(id="bad-cron", trigger=cron("61 * * * *"))(lambda ctx: None)
    with pytest.raises(ConfigError, match=r"'bad-tz'.*unknown time zone"):
        flow.function(id="bad-tz", trigger=cron("0 9 * * *", tz="Mars/Olympus"))(lambda ctx: None)
    mixed = flow.function(id="mixed", trigger=[cron("0 9 * * 1-5"), event("report/requested")])(
        lambda ctx: None
    )
    assert len(mixed.crons) == 1 and mixed.wants("report/requested", {"event": {}})


def test_each_slot_fires_once_and_a_missed_slot_once_after_downtime(store_url: str) -> None:
    flow = Flow(Celery("c", broker="memory://"), store=store_url, auto_migrate=True)
    flow.doorbell.ring = lambda run_ids, eta=None, **_: None  # type: ignore[method-assign]

    @flow.function(id="hourly", trigger=cron("0 * * * *"))
    def hourly(ctx):  # type: ignore[no-untyped-def]
        pass

    t0 = datetime(2030, 1, 1, 9, 0, 20, tzinfo=timezone.utc)
    first = flow.tick(t0)
    assert len(first) == 1  # the 09:00 slot, 20 s ago
    assert flow.tick(t0) == [] and flow.tick(t0 + timedelta(seconds=1)) == []  # two beats
    # down from 09:30 to 13:30: 10:00..13:00 were missed; only 13:00 fires
    assert len(flow.tick(datetime(2030, 1, 1, 13, 30, tzinfo=timezone.utc))) == 1
    runs = flow.list_runs(function_id="hourly")
    assert sorted(r.events[0].data["scheduled_at"] for r in runs) == [
        "2030-01-01T09:00:00+00:00",
        "2030-01-01T13:00:00+00:00",
    ]
    assert runs[0].events[0].name == "celeryflow/scheduled.timer"

    @flow.function(id="daily", trigger=cron("0 9 * * *"))
    def daily(ctx):  # type: ignore[no-untyped-def]
        pass

    # first seen at 15:00: the 09:00 slot is history, not a run to start now
    flow.tick(datetime(2030, 1, 1, 15, 0, tzinfo=timezone.utc))
    assert flow.list_runs(function_id="daily") == []
    flow.tick(datetime(2030, 1, 2, 9, 0, 5, tzinfo=timezone.utc))
    assert len(flow.list_runs(function_id="daily")) == 1


@pytest.mark.parametrize("stack", ["embedded", "redis-postgres"], indirect=True)
def test_two_beats_fire_each_slot_once(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {"CF_BROKER": stack.broker_url, "CF_STORE": stack.store_url, "CF_QUEUE": stack.queue}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.syspath_prepend(str(APPS))
    sys.modules.pop("cron_app", None)
    flow: Flow = importlib.import_module("cron_app").flow
    flow.store.migrate()
    child_env = {
        **os.environ,
        **env,
        "PYTHONPATH": f"{APPS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    commands = [
        [
            "worker",
            "--pool",
            "threads",
            "-c",
            "2",
            "-n",
            "w@%h",
            "--without-mingle",
            "--without-gossip",
        ],
        ["beat", "-s", str(tmp_path / "beat-1"), "--pidfile", str(tmp_path / "beat-1.pid")],
        ["beat", "-s", str(tmp_path / "beat-2"), "--pidfile", str(tmp_path / "beat-2.pid")],
    ]
    procs = []
    logs = [tmp_path / f"p{i}.log" for i in range(len(commands))]
    try:
        for command, log in zip(commands, logs, strict=True):
            with open(log, "wb") as out:
                procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "celery",
                            "-A",
                            "cron_app",
                            *command,
                            "--loglevel",
                            "INFO",
                        ],
                        env=child_env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )
        done = wait_for(
            lambda: (
                (rs := flow.list_runs(function_id="every-two-seconds", status="completed"))
                and len(rs) >= 4
                and rs
            ),
            timeout=60,
            interval=0.2,
            what="4 cron runs",
        )
        time.sleep(0.5)
    except BaseException:
        for log in logs:
            print(f"--- {log.name} ---\n{log.read_text()[-3000:]}")
        raise
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
    sys.modules.pop("cron_app", None)

    runs = flow.list_runs(function_id="every-two-seconds", limit=1000)
    slots = sorted(datetime.fromisoformat(r.events[0].data["scheduled_at"]) for r in runs)
    assert len(slots) == len(set(slots)) >= len(done)  # two beats, no slot twice
    gaps = {(b - a).total_seconds() for a, b in pairwise(slots)}
    assert gaps == {2.0}, slots  # consecutive slots, none skipped or doubled
