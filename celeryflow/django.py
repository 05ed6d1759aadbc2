"""Django, first class: the store in a database of ``settings.DATABASES``, and sends
that join the caller's transaction.

    # proj/celery.py
    from celeryflow import Flow
    from celeryflow.django import store_url

    app = Celery("proj")
    app.config_from_object("django.conf:settings", namespace="CELERY")
    flow = Flow(app, store=store_url("default"))

    # a view
    with transaction.atomic():
        order = Order.objects.create(...)
        flow.send(Event(name="order/placed", data={"id": order.pk}), on_commit=True)

Importing this module makes ``on_commit=True`` mean Django's ``transaction.on_commit``.
Under pytest, ``celeryflow.pytest_plugin`` moves a store made by :func:`store_url` to
pytest-django's test database (see its docstring).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from django.conf import settings
from django.db import transaction

from . import oncommit
from .errors import ConfigError
from .events import Event
from .flow import Flow
from .tasks import all_flows

__all__ = [
    "Moved",
    "django_flows",
    "follow_test_databases",
    "restore_databases",
    "send_on_commit",
    "store_url",
]

# backend module suffix -> SQLAlchemy driver
DRIVERS = {
    "postgresql": "postgresql+psycopg",
    "postgis": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "sqlite3": "sqlite",
    "spatialite": "sqlite",
}
# OPTIONS that are Django's own, not the driver's connection parameters
DJANGO_OPTIONS = {
    "isolation_level",
    "server_side_binding",
    "assume_role",
    "pool",
    "transaction_mode",
}

# every URL store_url() returned, with its alias: the stores that follow Django's
# databases (the pytest plugin moves them to the test database)
_issued: dict[str, str] = {}


def store_url(alias: str = "default") -> str:
    """The SQLAlchemy URL of ``settings.DATABASES[alias]``, read now: ENGINE picks the
    driver (postgresql -> ``postgresql+psycopg``, mysql -> ``mysql+pymysql``, sqlite3
    -> ``sqlite:///NAME``), with NAME, USER, PASSWORD, HOST, PORT, and OPTIONS that
    are connection parameters (``sslmode``, ``charset``...) as query parameters."""
    databases: dict[str, dict[str, Any]] = settings.DATABASES
    if alias not in databases:
        raise ConfigError(
            f"celeryflow store: no database {alias!r} in settings.DATABASES "
            f"(have: {', '.join(sorted(databases)) or 'none'})"
        )
    db = databases[alias]
    engine = str(db.get("ENGINE", ""))
    driver = DRIVERS.get(engine.rsplit(".", 1)[-1])
    if driver is None:
        raise ConfigError(
            f"celeryflow store: DATABASES[{alias!r}] ENGINE {engine!r} is not supported; "
            "use PostgreSQL, MySQL/MariaDB or SQLite, or pass Flow(store=URL)"
        )
    name = str(db.get("NAME") or "")
    if driver == "sqlite":
        if not name or name == ":memory:" or name.startswith("file:"):
            raise ConfigError(
                f"celeryflow store: DATABASES[{alias!r}] NAME {name!r} is not a file; "
                "the store and its workers need one (for tests, set "
                f"DATABASES[{alias!r}]['TEST']['NAME'] to a file path)"
            )
        url = sa.URL.create("sqlite", database=name)
    else:
        options = db.get("OPTIONS") or {}
        query = {
            str(k): str(v)
            for k, v in options.items()
            if k not in DJANGO_OPTIONS and isinstance(v, str | int | float)
        }
        if driver.startswith("mysql"):
            query.setdefault("charset", "utf8mb4")
        port = db.get("PORT")
        url = sa.URL.create(
            driver,
            username=db.get("USER") or None,
            password=db.get("PASSWORD") or None,
            host=db.get("HOST") or None,
            port=int(port) if port else None,
            database=name or None,
            query=query,
        )
    text = url.render_as_string(hide_password=False)
    _issued[_key(text)] = alias
    return text


def _key(url: str) -> str:
    """A URL as SQLAlchemy renders it, so the same database compares equal."""
    return sa.make_url(url).render_as_string(hide_password=False)


Moved = list[tuple[Flow, str, bool]]  # a Flow, its store's URL and auto_migrate before


def django_flows() -> list[Flow]:
    """The Flows whose store :func:`store_url` made."""
    return [flow for flow in all_flows() if _key(flow.store.url) in _issued]


def follow_test_databases() -> Moved:
    """Point every Flow whose store :func:`store_url` made at the database its alias
    names now: call it once the test databases exist (settings then name
    ``test_<NAME>``), e.g. in a DiscoverRunner's ``setup_databases``; the pytest plugin
    does it for pytest-django. The store is migrated and emptied. Returns what
    :func:`restore_databases` needs."""
    moved: Moved = []
    for flow in django_flows():
        test_url = store_url(_issued[_key(flow.store.url)])
        if test_url != flow.store.url:
            moved.append((flow, flow.store.url, flow.store.auto_migrate))
            flow.store.reopen(test_url, auto_migrate=True)
            flow.store.clear()  # a kept test database (--reuse-db, --keepdb) starts empty
    return moved


def restore_databases(moved: Moved) -> None:
    """Back to the stores before :func:`follow_test_databases`, closing the test
    databases' connections (before they are dropped); nothing connects until used."""
    for flow, url, auto_migrate in moved:
        flow.store.reopen(url, auto_migrate=auto_migrate)


def send_on_commit(
    flow: Flow,
    events: Event | dict[str, Any] | list[Event | dict[str, Any]],
    using: str | None = None,
) -> list[str]:
    """``flow.send(events)`` when the transaction of database ``using`` commits (at
    once outside ``atomic()``, never if it rolls back); returns the event ids now."""
    return flow.send(events, on_commit=lambda fn: transaction.on_commit(fn, using=using))


oncommit.register_default(transaction.on_commit)
