"""celeryflow's pytest plugin (loaded by pytest through the ``pytest11`` entry point
once celeryflow-engine is installed): tests get their own store, never the
developer's, and a real worker on demand. Every name starts with ``celeryflow_``.

* ``celeryflow_store``: a fresh SQLite store URL in the test's ``tmp_path``.
* ``celeryflow_isolate(flow, store=None)``: ``flow`` (e.g. your module-level Flow)
  uses a fresh store (``celeryflow_store``, or ``store``) for this test; its own
  store is back afterwards. An ``autouse`` fixture in your conftest.py calling it
  gives every test an empty store.
* ``celeryflow_worker(flow)``: a real Celery worker for ``flow`` in a thread until the
  test ends (eager mode off meanwhile), with Celery's ``celery_worker_pool`` and
  ``celery_worker_parameters`` fixtures (``celery.contrib.pytest``) when defined.
* With pytest-django: a store made by ``celeryflow.django.store_url(alias)`` follows
  pytest-django's test database. Before the first test, every such Flow is moved to
  the test database of its alias (``test_<NAME>``, created by pytest-django then, even
  if that test does not ask for the database: the store must never be the
  development one), migrated, and emptied after each test (Django's rollback or flush
  does not cover celeryflow's tables); its connections are closed before
  pytest-django drops the database.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from .flow import Flow
from .testing import worker

__all__ = [
    "celeryflow_django_databases",
    "celeryflow_isolate",
    "celeryflow_store",
    "celeryflow_worker",
]


@pytest.fixture
def celeryflow_store(tmp_path: Path) -> str:
    """A fresh SQLite store URL for this test (created on first use)."""
    return f"sqlite:///{tmp_path / 'celeryflow-test.db'}"


@pytest.fixture
def celeryflow_isolate(celeryflow_store: str) -> Iterator[Callable[..., Flow]]:
    """``celeryflow_isolate(flow, store=None)``: ``flow`` uses a fresh store for this
    test, then its own again."""
    moved: list[tuple[Flow, str, bool]] = []

    def isolate(flow: Flow, store: str | None = None) -> Flow:
        moved.append((flow, flow.store.url, flow.store.auto_migrate))
        flow.store.reopen(store or celeryflow_store, auto_migrate=True)
        return flow

    yield isolate
    for flow, url, auto_migrate in reversed(moved):
        flow.store.reopen(url, auto_migrate=auto_migrate)


@pytest.fixture
def celeryflow_worker(request: pytest.FixtureRequest) -> Iterator[Callable[..., Any]]:
    """``celeryflow_worker(flow, **options)``: a real worker for ``flow`` in a thread
    until the test ends; returns Celery's WorkController."""
    options: dict[str, Any] = {}
    for name, key in (("celery_worker_pool", "pool"), ("celery_worker_parameters", None)):
        try:
            value = request.getfixturevalue(name)
        except pytest.FixtureLookupError:
            continue
        if key is None:
            options.update(value)
        elif value != "solo":  # Celery's default; a flow worker needs a pool of threads
            options[key] = value
    with ExitStack() as stack:

        def start(flow: Flow, **overrides: Any) -> Any:
            return stack.enter_context(worker(flow, **{**options, **overrides}))

        yield start


@pytest.fixture(scope="session")
def celeryflow_django_databases(request: pytest.FixtureRequest) -> Iterator[list[Flow]]:
    """Moves each Flow whose store is a Django database to its test database (after
    pytest-django made it), and closes the store's connections before it is dropped."""
    request.getfixturevalue("django_db_setup")
    # imported by whoever made a store with store_url(); if nobody did, none follows
    django_module = sys.modules.get("celeryflow.django")
    if django_module is None:
        yield []
        return
    moved = django_module.follow_test_databases()
    yield [flow for flow, _, _ in moved]
    django_module.restore_databases(moved)


@pytest.fixture(autouse=True)
def _celeryflow_django_store(request: pytest.FixtureRequest) -> Iterator[None]:
    # Every test, not only those using Django's database: a store made by store_url
    # is the development database until moved, and celeryflow's connections are not
    # ones pytest-django blocks.
    django_module = sys.modules.get("celeryflow.django")
    if (
        django_module is None
        or not django_module.django_flows()
        or not request.config.pluginmanager.hasplugin("django")
    ):
        yield
        return
    moved = request.getfixturevalue("celeryflow_django_databases")
    yield
    for flow in moved:
        flow.store.clear()
