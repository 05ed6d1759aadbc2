"""Faults on RabbitMQ + MariaDB (private instances), with prefork workers. All in the
full suite only: a RabbitMQ node takes seconds to boot."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from harness import Scenario, assert_targets, runs_for
from scenarios import LEASE, RECONCILE, check_resume, duplicate_deliveries, kill_9_under_load
from stacks import RabbitMaria

pytestmark = pytest.mark.faults_full


def scenario(name: str, rm: RabbitMaria, tmp_path: Path, short: int) -> Scenario:
    return Scenario(
        name, "rabbitmq+mariadb", rm.broker_url, rm.store_url, tmp_path, runs_for(short),
        lease=f"{LEASE:g}s", reconcile=f"{RECONCILE:g}s",
    )  # fmt: skip


def test_kill_9_of_workers_under_load(rabbit_maria: RabbitMaria, tmp_path: Path) -> None:
    with scenario("kill -9 workers", rabbit_maria, tmp_path, 30) as sc:
        rep = kill_9_under_load(sc)
    assert_targets(rep)
    check_resume(rep)


def test_rabbitmq_killed_and_restarted_with_its_data_lost(
    rabbit_maria: RabbitMaria, tmp_path: Path
) -> None:
    with scenario("rabbitmq killed, data lost", rabbit_maria, tmp_path, 30) as sc:
        sc.worker(), sc.worker()
        sc.send()
        sc.wait_progress(0.3)
        sc.fault()
        rabbit_maria.rabbit.kill()
        rabbit_maria.rabbit.wipe()  # every queue and message gone
        rabbit_maria.rabbit.start()
        rep = sc.finish()
    assert_targets(rep)


def test_mariadb_restarted(rabbit_maria: RabbitMaria, tmp_path: Path) -> None:
    with scenario("mariadb restart", rabbit_maria, tmp_path, 30) as sc:
        sc.worker(), sc.worker()
        sc.send()
        sc.wait_progress(0.3)
        sc.fault()
        rabbit_maria.maria.stop()
        time.sleep(2)  # the fault's length: the database is away
        rabbit_maria.maria.start()
        rep = sc.finish()
    assert_targets(rep)


def test_duplicate_deliveries_x10(rabbit_maria: RabbitMaria, tmp_path: Path) -> None:
    with scenario("duplicate deliveries x10", rabbit_maria, tmp_path, 30) as sc:
        rep = duplicate_deliveries(sc)
    assert rep.extra_bodies == 0, rep.line()
    assert_targets(rep)
