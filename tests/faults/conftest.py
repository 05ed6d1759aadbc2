"""The fault suite: private servers, real workers, real faults (issue 12).

Every test here is marked ``faults``. The short version (small run counts, the most
telling scenarios) runs with the normal ``python -m pytest``; tests marked
``faults_full`` run only in the full suite, ``CF_FAULTS_FULL=1`` (``python
bench/faults.py`` sets it, with 300 runs per scenario).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "apps"))

from harness import FULL
from instances import MariaDBInstance, PostgresInstance, RabbitMQInstance, RedisInstance
from stacks import RabbitMaria, RedisPostgres


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "faults: the fault suite (tests/faults)")
    config.addinivalue_line(
        "markers", "faults_full: long fault scenarios, run only with CF_FAULTS_FULL=1"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.faults)
    if FULL:
        return
    keep, drop = [], []
    for item in items:
        (drop if item.get_closest_marker("faults_full") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture
def redis_pg(tmp_path: Path) -> Iterator[RedisPostgres]:
    """A private Redis and a private PostgreSQL (with one database), for one test."""
    with (
        RedisInstance(tmp_path) as redis,
        PostgresInstance() as pg,
    ):  # /tmp: pytest's tmp is 0700, postgres must enter
        assert isinstance(redis, RedisInstance) and isinstance(pg, PostgresInstance)
        yield RedisPostgres(redis, pg, pg.create_database())


@pytest.fixture
def rabbit_maria(tmp_path: Path) -> Iterator[RabbitMaria]:
    """A private RabbitMQ node and a private MariaDB (with one database), for one test."""
    with RabbitMQInstance(tmp_path) as rabbit, MariaDBInstance(tmp_path) as maria:
        assert isinstance(rabbit, RabbitMQInstance) and isinstance(maria, MariaDBInstance)
        yield RabbitMaria(rabbit, maria, maria.create_database())
