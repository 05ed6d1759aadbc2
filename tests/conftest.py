"""Shared pytest configuration. Keep each concern in its own section."""

import os

import pytest

# --- Real services: reachability (skip locally / fail with CI=true), isolated resources ---
# tests/services.py documents the fixtures; importing them here makes them global.
from services import (  # noqa: F401
    mariadb_store_url,
    postgres_store_url,
    private_redis_lifetime,
    rabbitmq_broker,
    redis_broker_url,
    sqlite_store_url,
    stack,
    store_url,
)

# --- Parallel run (pytest-xdist): pyproject's addopts say `-n auto --dist loadfile` ---
# The suite mostly waits (real workers, brokers, polled deadlines), so it runs in more
# processes than there are cores. Each xdist worker is a session of its own: its own
# private redis-server, tmp_path root and uniquely named databases and queues. A test
# file runs whole in one process (loadfile), as before: module-scoped fixtures (e.g.
# test_flowcontrol's worker processes per stack) are built once, not once per process.
# (Not loadgroup: with pytest 9, xdist 3.8's xdist_group marks have no effect.)
#: Processes for the whole suite, whatever the cores (CI has 2; load stays low).
PARALLEL_WORKERS = 3


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """How many processes ``-n auto`` means here (``-n N``/``-n0`` on the command line
    win): none (a plain in-process run) when the command names single tests
    (``tests/test_x.py::test_y``), else PARALLEL_WORKERS; ``PYTEST_XDIST_AUTO_NUM_WORKERS``
    set: xdist's own reading of it."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None
    named = config.option.file_or_dir or []
    if named and all("::" in arg for arg in named):
        return 0
    return PARALLEL_WORKERS
