"""Broken setups fail fast, once, with the fix: a bad store URL at Flow(...), a worker
whose store is unmigrated or unreachable, a reconciler pass that meets a store error."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from netkit import ClosingServer, closed_port
from services import embedded_broker_url

from celeryflow import ConfigError, Flow
from celeryflow.reconciler import ReconcilerThread
from celeryflow.testing import wait_for

EX_CONFIG = 78


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("postgres://u:secret@db/shop", "use postgresql+psycopg://u:***@db/shop"),
        ("postgresql://u@db/shop", "use postgresql+psycopg://u@db/shop"),
        ("mysql://root@db/shop", "use mysql+pymysql://root@db/shop"),
        ("mariadb://root@db/shop", "use mariadb+pymysql://root@db/shop"),
        ("sqlite://file.db", "use sqlite:///file.db"),
        ("not a url", "cannot be parsed"),
        ("oracel://db/shop", "unknown database or driver 'oracel'"),
        ("postgresql+psycopg2://db/shop", "needs the driver module 'psycopg2'"),
    ],
)
def test_flow_refuses_a_bad_store_url_at_construction(
    url: str, says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        Flow(Celery("bad-url"), store=url)
    message = str(caught.value)
    assert says in message
    assert "\n" not in message
    assert "secret" not in message
    assert list(tmp_path.iterdir()) == []  # nothing created on the way


@pytest.mark.parametrize(
    ("module", "url", "extra"),
    [
        ("psycopg", "postgresql+psycopg://db/shop", "postgres"),
        ("pymysql", "mysql+pymysql://root@db/shop", "mysql"),
    ],
)
def test_a_missing_driver_names_the_extra_to_install(module: str, url: str, extra: str) -> None:
    # a fresh interpreter in which the driver cannot be imported, as if not installed
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules[{module!r}] = None
        from celery import Celery
        from celeryflow import ConfigError, Flow
        try:
            Flow(Celery("no-driver"), store={url!r})
        except ConfigError as exc:
            print(exc)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert f"needs the driver module {module!r}" in out.stdout
    assert f"pip install 'celeryflow-engine[{extra}]'" in out.stdout


def test_flow_construction_does_not_connect(tmp_path: Path) -> None:
    started = time.monotonic()
    flow = Flow(
        Celery("cheap", broker=embedded_broker_url(tmp_path)),
        store=f"postgresql+psycopg://u@127.0.0.1:{closed_port()}/shop",
    )
    assert time.monotonic() - started < 2
    assert flow.store._engine is None


APP = """
import os
from celery import Celery
from celeryflow import Flow

app = Celery("setup_app", broker=os.environ["CF_BROKER"])
flow = Flow(app, store=os.environ["CF_STORE"], connect_timeout="2s")
"""


@pytest.fixture
def worker_log(tmp_path: Path) -> Path:
    (tmp_path / "setup_app.py").write_text(APP)
    return tmp_path / "worker.log"


@pytest.fixture
def start_worker(tmp_path: Path, worker_log: Path) -> Iterator[object]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(store: str) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "CF_BROKER": embedded_broker_url(tmp_path),
            "CF_STORE": store,
            "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        }
        with open(worker_log, "wb") as out:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "setup_app",
                    "worker",
                    "--pool",
                    "prefork",
                    "-c",
                    "1",
                    "-l",
                    "INFO",
                    "--without-mingle",
                    "--without-gossip",
                ],
                cwd=tmp_path,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def log_records(log: Path) -> list[str]:
    """The worker's log lines at WARNING and above (Celery's format: "[<time>: LEVEL/")."""
    return [
        line
        for line in log.read_text(errors="replace").splitlines()
        if re.match(r"\[\d{4}-.*?: (WARNING|ERROR|CRITICAL)/", line)
    ]


def test_worker_on_an_unmigrated_store_says_so_once_and_exits(
    postgres_store_url: str, start_worker: object, worker_log: Path
) -> None:
    proc = start_worker(postgres_store_url)  # type: ignore[operator]
    code = proc.wait(timeout=60)
    text = worker_log.read_text(errors="replace")
    records = log_records(worker_log)
    assert code == EX_CONFIG, text
    assert len(records) == 1, text
    assert "CRITICAL" in records[0]
    assert "celeryflow migrate --store" in records[0]
    assert "Traceback" not in text
    assert " ready." not in text


def test_worker_on_an_unreachable_store_retries_with_back_off_one_line_each(
    start_worker: object, worker_log: Path
) -> None:
    store = f"postgresql+psycopg://postgres@127.0.0.1:{closed_port()}/shop"
    proc = start_worker(store)  # type: ignore[operator]
    began = time.monotonic()
    wait_for(
        lambda: sum("Trying again" in line for line in log_records(worker_log)) >= 3,
        timeout=60,
        interval=0.2,
        what="three connection attempts",
    )
    elapsed = time.monotonic() - began
    text = worker_log.read_text(errors="replace")
    records = log_records(worker_log)
    # back-off 2 s, then 4 s: the third attempt comes 6 s after the first at the earliest
    assert elapsed >= 5.5, text
    assert len(records) <= 4, text
    assert "Trying again in 2.00 seconds... (1/100)" in records[0], text
    assert "cannot connect to the celeryflow store" in records[0]
    assert "Traceback" not in text
    assert " ready." not in text
    # checked before the pool forks: a stop signal to the whole process group (systemd,
    # Ctrl-C) finds no child holding a pool lock
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    assert children == []
    proc.send_signal(signal.SIGTERM)  # a shutdown ends the waiting
    proc.wait(timeout=30)


def test_reconciler_logs_a_store_error_once_and_backs_off(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with ClosingServer() as server:
        flow = Flow(
            Celery("reconcile-down", broker=embedded_broker_url(tmp_path)),
            store=f"postgresql+psycopg://postgres@127.0.0.1:{server.port}/shop",
            reconcile_interval=0.02,
        )
        thread = ReconcilerThread(flow)
        with caplog.at_level(logging.INFO, logger="celeryflow.reconciler"):
            thread.start()
            try:
                # each pass connects (at least once): several passes have failed
                wait_for(lambda: server.accepted >= 6, timeout=30, what="failed passes")
            finally:
                thread.stop()
                thread.join(timeout=10)
    failed = [r for r in caplog.records if "reconciler pass failed" in r.getMessage()]
    assert len(failed) == 1, [r.getMessage() for r in failed]
    assert failed[0].exc_info is None
    assert "cannot connect to the celeryflow store" in failed[0].getMessage()
