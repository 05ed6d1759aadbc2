"""The shop project's tests, as a Django team writes them: pytest-django, PostgreSQL,
CELERY_TASK_ALWAYS_EAGER=True. Run by tests/test_django.py in a subprocess."""

from __future__ import annotations

import os
from typing import Any

import pytest
import sqlalchemy as sa
from django.conf import settings
from django.db import transaction
from shop.celery import app, flow
from shop.orders.models import Order

from celeryflow import ConfigError, Event
from celeryflow.django import send_on_commit, store_url
from celeryflow.testing import wait_for_run, worker

DEADLINE = 60.0


def placed(order: Order, **extra: Any) -> Event:
    return Event(
        name="order/placed", data={"order_id": order.pk, "customer": order.customer}, **extra
    )


def test_a_test_without_database_access_still_uses_the_test_store() -> None:
    # first in the file: no test has asked pytest-django for the database yet
    name = settings.DATABASES["default"]["NAME"]
    assert name == "test_" + os.environ["SHOP_DB_NAME"]
    assert sa.make_url(flow.store.url).database == name
    [event_id] = flow.send(Event(name="shop/pinged"))  # triggers nothing; recorded
    assert flow.list_runs(event_id=event_id) == []


def test_the_store_is_the_test_database(db: None) -> None:
    name = settings.DATABASES["default"]["NAME"]
    assert name == "test_" + os.environ["SHOP_DB_NAME"]
    assert sa.make_url(flow.store.url).database == name
    assert flow.store.url == store_url("default")


def test_eager_run_that_retries_and_sleeps_completes(db: None) -> None:
    order = Order.objects.create(customer="ada")
    [event_id] = flow.send(placed(order))
    # eager: executed inline up to its first park, the charge's retry back-off
    [run] = flow.list_runs(event_id=event_id)
    assert run.status == "queued" and run.wake_at is not None
    done = wait_for_run(flow, event_id=event_id, timeout=DEADLINE)
    assert done.status == "completed", done.error
    assert done.output == {"charged": f"charged {order.pk}", "note": "thanks, ada"}
    assert [(s.id, s.status, s.attempts) for s in done.steps] == [
        ("charge", "completed", 2),
        ("cool-off", "completed", 1),
        ("thank", "completed", 1),
    ]


@pytest.mark.django_db(transaction=True)
def test_send_in_a_rolled_back_transaction_records_nothing() -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        order = Order.objects.create(customer="bob")
        [event_id] = flow.send(placed(order), on_commit=True)
        [other_id] = send_on_commit(flow, placed(order, id="other"), using="default")
        raise RuntimeError("the view failed after sending")
    assert not Order.objects.exists()
    assert flow.list_runs(event_id=event_id) == []
    assert flow.list_runs(event_id=other_id) == []
    assert flow.list_runs() == []


@pytest.mark.django_db(transaction=True)
def test_send_in_a_committed_transaction_records_the_event_on_commit() -> None:
    with transaction.atomic():
        order = Order.objects.create(customer="cy")
        [event_id] = flow.send(placed(order), on_commit=True)
        [other_id] = send_on_commit(flow, placed(order, id="other"))
        assert flow.list_runs() == []  # nothing before the commit
    assert [r.event_id for r in flow.list_runs(event_id=event_id)] == [event_id]
    assert [r.event_id for r in flow.list_runs(event_id=other_id)] == [other_id]
    assert wait_for_run(flow, event_id=event_id, timeout=DEADLINE).status == "completed"


def test_on_commit_in_a_db_test_runs_with_captured_callbacks(
    db: None, django_capture_on_commit_callbacks: Any
) -> None:
    # pytest-django's `db` wraps the test in a transaction that never commits, so
    # on-commit work runs only when captured and executed, as for any Django code
    order = Order.objects.create(customer="di")
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        [event_id] = flow.send(placed(order), on_commit=True)
        assert flow.list_runs(event_id=event_id) == []
    assert len(callbacks) == 1
    assert len(flow.list_runs(event_id=event_id)) == 1


@pytest.mark.parametrize("turn", ["first", "second"])
def test_each_test_starts_with_an_empty_store(db: None, turn: str) -> None:
    # the same event id in both tests: kept from the first, it would be deduplicated
    assert flow.list_runs() == []
    order = Order.objects.create(customer="eve")
    flow.send(placed(order, id="the-same-id-in-every-test"))
    assert len(flow.list_runs(event_id="the-same-id-in-every-test")) == 1


# transaction=True: a worker starting in this process closes Django's connections
# (Celery's Django fixup), which would end a `db` test's transaction
@pytest.mark.django_db(transaction=True)
def test_worker_switches_djangos_eager_setting_off_for_its_duration() -> None:
    with worker(flow):
        assert settings.CELERY_TASK_ALWAYS_EAGER is False
        assert app.conf.task_always_eager is False
        order = Order.objects.create(customer="fay")
        [event_id] = flow.send(placed(order))
        run = wait_for_run(flow, event_id=event_id, timeout=DEADLINE)
        assert run.status == "completed", run.error
    assert settings.CELERY_TASK_ALWAYS_EAGER is True
    assert app.conf.task_always_eager is True


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
def test_store_url_maps_django_databases(settings: Any) -> None:
    settings.DATABASES = {
        "pg": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": "shop",
            "USER": "app",
            "PASSWORD": "s3cr@t/:",
            "HOST": "db.internal",
            "PORT": "6432",
            "OPTIONS": {"sslmode": "require", "isolation_level": 1, "pool": {"min_size": 2}},
        },
        "my": {
            "ENGINE": "django.db.backends.mysql",
            "NAME": "shop",
            "USER": "root",
            "HOST": "127.0.0.1",
            "PORT": 3306,
        },
        "lite": {"ENGINE": "django.db.backends.sqlite3", "NAME": "/srv/shop/db.sqlite3"},
        "memory": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
        "oracle": {"ENGINE": "django.db.backends.oracle", "NAME": "shop"},
    }
    pg = sa.make_url(store_url("pg"))
    assert pg.drivername == "postgresql+psycopg"
    assert (pg.username, pg.password, pg.host, pg.port, pg.database) == (
        "app",
        "s3cr@t/:",
        "db.internal",
        6432,
        "shop",
    )
    assert dict(pg.query) == {"sslmode": "require"}  # Django's own options left out
    assert store_url("my") == "mysql+pymysql://root@127.0.0.1:3306/shop?charset=utf8mb4"
    assert store_url("lite") == "sqlite:////srv/shop/db.sqlite3"
    with pytest.raises(ConfigError, match=r"\['memory'\] NAME ':memory:' is not a file"):
        store_url("memory")
    with pytest.raises(
        ConfigError, match=r"ENGINE 'django\.db\.backends\.oracle' is not supported"
    ):
        store_url("oracle")
    with pytest.raises(ConfigError, match=r"no database 'nope'.*have: lite, memory, my"):
        store_url("nope")
