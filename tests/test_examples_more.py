"""The pattern examples (onboarding drip, daily report, order processing, fan-out) run end
to end: each script starts its own real ``celery worker`` (no beat) on the embedded
default, in a directory of its own, with durations shortened through environment
variables."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TIMEOUT = 120  # seconds per example; each takes about 10


def run_example(name: str, workdir: Path, **env: str) -> tuple[str, str]:
    """Run ``examples/<name>.py``; return its stdout and a failure report (its output
    and the end of its worker's log). Fails the test unless it exits 0."""
    environment = {**os.environ, **env, "CELERYFLOW_EXAMPLE_DIR": str(workdir)}
    environment.pop("CELERYFLOW_STORE", None)
    environment.pop("CELERY_BROKER_URL", None)
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLES / f"{name}.py")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
        start_new_session=True,  # its own process group: the example and its worker
    )
    try:
        out, err = process.communicate(timeout=TIMEOUT)
        hung = False
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        hung = True
    log = workdir / "worker.log"
    tail = "\n".join(log.read_text().splitlines()[-60:]) if log.exists() else "(no log)"
    report = f"--- stdout\n{out}\n--- stderr\n{err}\n--- worker log (end)\n{tail}"
    assert not hung, f"{name}.py did not exit in {TIMEOUT} s\n{report}"
    assert process.returncode == 0, f"{name}.py exited {process.returncode}\n{report}"
    return out, report


@pytest.mark.timeout(TIMEOUT + 30)
def test_onboarding_drip_offers_the_upgrade_only_to_who_did_not_upgrade(tmp_path: Path) -> None:
    out, report = run_example("onboarding_drip", tmp_path, ONBOARDING_DAY_SECONDS="0.3")
    assert "ada got the upgrade offer; bob, who upgraded, did not" in out, report
    for template in ("send-welcome", "send-tips", "send-check-in", "send-upgrade-offer"):
        assert re.search(rf"^  ada .*{template}", out, re.M), report
    assert re.search(r"^  bob .*upgraded +-> user/upgraded", out, re.M), report
    assert not re.search(r"^  bob .*send-upgrade-offer", out, re.M), report
    assert re.search(r"^bob: completed .*'upgraded': True", out, re.M), report


@pytest.mark.timeout(TIMEOUT + 30)
def test_daily_report_runs_on_a_seconds_cron_under_a_plain_worker(tmp_path: Path) -> None:
    out, report = run_example(
        "daily_report", tmp_path, DAILY_REPORT_CRON="* * * * * */2", DAILY_REPORT_RUNS="2"
    )
    reports = re.findall(r"^  slot (\S+)  run completed: .*sign-ups", out, re.M)
    assert len(reports) >= 2 and len(set(reports)) == len(reports), report
    assert "each slot fired once" in out, report
    assert re.search(r"^\$ celery -A daily_report worker +\(", out, re.M), report  # no -B
    assert "in production the next slot of '0 9 * * 1-5' (Europe/Berlin)" in out, report


@pytest.mark.timeout(TIMEOUT + 30)
def test_process_order_ships_cancels_and_times_out(tmp_path: Path) -> None:
    out, report = run_example("process_order", tmp_path, ORDER_LABEL_TIMEOUT="3s")
    assert re.search(r"^o-1: completed, .*'status': 'shipped', 'tracking': 'Z1'", out, re.M), report
    assert re.search(r"^o-2: cancelled", out, re.M), report
    assert re.search(r"^o-3: completed, .*'label-overdue'", out, re.M), report
    assert re.search(r"^  o-3  shipping-label +-> timed out", out, re.M), report
    assert not re.search(r"^  o-2  send-shipped", out, re.M), report


@pytest.mark.timeout(TIMEOUT + 30)
def test_fan_out_starts_one_run_per_row(tmp_path: Path) -> None:
    out, report = run_example("fan_out", tmp_path, FAN_OUT_ROWS="6", FAN_OUT_WORK_SECONDS="0.2")
    assert "batch run completed: sent 6 import/row events" in out, report
    assert len(re.findall(r"^  row run \S+  completed", out, re.M)) == 6, report
    assert re.search(r"^6 of 6 row runs completed .*\(limit 3\)", out, re.M), report
