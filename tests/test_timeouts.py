"""Connect and statement timeouts: a database that accepts connections and never
answers, one that stops answering on a connection already open, or a statement stuck
behind a lock, fails within the timeout with StoreUnavailable naming the store and the
timeout, instead of hanging."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest
import sqlalchemy as sa
from celery import Celery
from netkit import BlackHoleProxy, silent_server
from services import embedded_broker_url

from celeryflow import ConfigError, Event, Flow, StoreUnavailable


@pytest.fixture
def silent_port() -> Iterator[int]:
    with silent_server() as port:
        yield port


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://postgres@127.0.0.1:{port}/shop",
        "mysql+pymysql://root@127.0.0.1:{port}/shop",
    ],
)
def test_send_to_a_silent_database_fails_within_the_connect_timeout(
    url: str, silent_port: int, tmp_path: object
) -> None:
    store = url.format(port=silent_port)
    started = time.monotonic()
    flow = Flow(Celery("silent", broker="memory://"), store=store, connect_timeout="2s")
    assert time.monotonic() - started < 2  # constructing does not connect
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as caught:
        flow.send(Event(name="t/silent"))
    took = time.monotonic() - started
    assert took < 10
    message = str(caught.value)
    assert f"127.0.0.1:{silent_port}/shop" in message
    assert "within the connect_timeout (2s)" in message
    assert isinstance(caught.value, sa.exc.OperationalError)  # infrastructure, for retries


def test_timeouts_are_flow_settings() -> None:
    with pytest.raises(ConfigError, match="statement_timeout"):
        Flow(Celery("bad-timeout"), store="sqlite:///x.db", statement_timeout="soon")
    flow = Flow(Celery("no-timeouts"), store="sqlite:///x.db", connect_timeout=None)
    assert flow.settings.connect_timeout is None
    assert flow.settings.statement_timeout is not None


def test_postgres_statement_timeout(postgres_store_url: str, tmp_path: Path) -> None:
    flow = Flow(
        Celery("pg-timeout", broker=embedded_broker_url(tmp_path)),
        store=postgres_store_url,
        auto_migrate=True,
        statement_timeout="1500ms",
    )
    with flow.store.engine.connect() as conn:
        assert conn.exec_driver_sql("SHOW statement_timeout").scalar() == "1500ms"
    admin = sa.create_engine(postgres_store_url, poolclass=sa.NullPool)
    with admin.connect() as holder:
        holder.exec_driver_sql("LOCK TABLE cf_runs IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as caught:
            flow.list_runs()
        took = time.monotonic() - started
        holder.rollback()
    admin.dispose()
    assert 1 <= took < 10
    assert "did not answer within the statement_timeout (1.5s)" in str(caught.value)
    assert flow.list_runs() == []  # the store works again at once


def test_mariadb_statement_timeout(mariadb_store_url: str, tmp_path: Path) -> None:
    flow = Flow(
        Celery("my-timeout", broker=embedded_broker_url(tmp_path)),
        store=mariadb_store_url,
        auto_migrate=True,
        statement_timeout="1s",
    )
    flow.list_runs()
    url = sa.make_url(mariadb_store_url)
    holder = pymysql.connect(
        host=url.host, port=url.port or 3306, user=url.username, database=url.database
    )
    try:
        holder.cursor().execute("LOCK TABLES cf_runs WRITE")
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as caught:
            flow.list_runs()
        took = time.monotonic() - started
    finally:
        holder.close()
    assert 1 <= took < 10
    assert "did not answer within the statement_timeout (1s)" in str(caught.value)
    assert flow.list_runs() == []


def _through(url: str, port: int) -> str:
    return sa.make_url(url).set(host="127.0.0.1", port=port).render_as_string(False)


@pytest.mark.parametrize("db", ["postgres", "mariadb"])
def test_a_database_that_stops_answering_open_connections_fails_within_the_timeouts(
    db: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The server accepts and acknowledges, but answers nothing: PostgreSQL's own
    statement_timeout never fires. A statement on an open connection fails after the
    statement timeout (plus a margin), a pooled connection idle for a while after the
    connect timeout (its ping) plus a new connect; both say which timeout, and once the
    database answers again the store works at once, with no restart."""
    url = request.getfixturevalue(f"{db}_store_url")
    target = sa.make_url(url).port or {"postgres": 5432, "mariadb": 3306}[db]
    with BlackHoleProxy(target) as proxy:
        flow = Flow(
            Celery("hole", broker=embedded_broker_url(tmp_path)),
            store=_through(url, proxy.port),
            auto_migrate=True,
            connect_timeout="2s",
            statement_timeout="1s",
        )
        assert flow.list_runs() == []
        engine = flow.store.engine
        with engine.connect() as conn, engine.connect() as idle:
            idle.close()  # back to the pool: it is idle through what follows
            proxy.black_hole()
            started = time.monotonic()
            with pytest.raises(StoreUnavailable) as caught:
                conn.exec_driver_sql("SELECT 1")
            took = time.monotonic() - started
        assert 1 <= took < 6, took
        message = str(caught.value)
        assert "\n" not in message
        assert "did not answer within the statement_timeout (1s)" in message, message

        # the pooled connection, idle past the ping threshold, is caught in the hole too
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as caught:
            flow.send(Event(name="t/hole"))
        took = time.monotonic() - started
        assert took < 2 + 2 + 4, took  # ping within connect_timeout, then a new connect
        assert "within the connect_timeout (2s)" in str(caught.value), str(caught.value)

        proxy.heal()
        assert len(flow.send(Event(name="t/hole"))) == 1  # the event id: stored
        assert flow.list_runs() == []
        flow.store.engine.dispose()
