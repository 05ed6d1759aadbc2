"""Real services for the test-suite: reachability checks, isolated resources, fixtures.

Tests run against real PostgreSQL, MariaDB, Redis and RabbitMQ (docs/DESIGN.md, "Testing").
When one of them is unreachable a test that needs it is SKIPPED with the reason, except
under ``CI=true`` where the same reason makes it FAIL: CI must never go green by skipping.

Helpers (usable from any fixture or test; each one calls :func:`require` first):

* ``require(service)``           -- skip/fail unless "postgres" | "mariadb" | "redis" |
                                    "rabbitmq" answers (checked once per session, ~1 s timeout;
                                    "redis" starts the session's private server)
* ``fresh_postgres_url()``       -- context manager: new database ``cf_test_<hex>``, dropped after
* ``fresh_mariadb_url()``        -- context manager: new database ``cf_test_<hex>``, dropped after
* ``fresh_redis_url()``          -- context manager: a db of the session's private
                                    redis-server, FLUSHDB-ed (see "Redis" below)
* ``fresh_rabbitmq()``           -- context manager: :class:`RabbitMQBroker`, deletes its queues
* ``fresh_sqlite_url(tmp_path)`` -- plain function: ``sqlite:///<tmp_path>/store.db``
* ``embedded_broker_url(tmp_path)`` -- plain function: ``celeryflow+sqlite:///<tmp_path>/broker.db``
* ``unique_name(prefix)``        -- ``<prefix>-<12 hex>`` for queue/exchange/app names
* ``make_stack(name, tmp_path)`` -- context manager behind the ``stack`` fixture

Fixtures (imported into tests/conftest.py, so every test module can request them):

* ``stack``        -- parametrized over STACKS = embedded, redis-postgres, rabbitmq-mariadb;
                      yields :class:`Stack`. Restrict with
                      ``@pytest.mark.parametrize("stack", ["embedded"], indirect=True)``.
* ``store_url``    -- parametrized over STORES = sqlite, postgres, mariadb; yields a URL.
* single resources: ``sqlite_store_url``, ``postgres_store_url``, ``mariadb_store_url``,
  ``redis_broker_url``, ``rabbitmq_broker`` (a :class:`RabbitMQBroker`). The embedded
  broker needs no fixture: call ``embedded_broker_url(tmp_path)``.
* ``private_redis_lifetime`` -- session, autouse: stops the private redis-server at the end.

Nothing a test did not create is flushed or dropped. PostgreSQL and MariaDB get a new
``cf_test_<hex>`` database per use, RabbitMQ queues and exchanges are uniquely named and
only those are deleted. Redis: the session starts its own ``redis-server`` (free port,
temporary directory, no persistence: tests/redis_server.py) on first use and stops it at
the end; its dbs are handed out one per use and flushed, as nobody else uses them. With
``CELERYFLOW_TEST_REDIS_URL=redis://host:port/n`` the tests use that db instead and flush
nothing (Celery queues are isolated by unique names). Without redis-server on PATH and
without that variable, Redis tests skip (fail under CI=true) saying so.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest
from databases import fresh_postgres_database
from redis_server import DATABASES, DbLender, RedisServer, RedisServerError

# --------------------------------------------------------------------------------------
# Service table and reachability
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Service:
    label: str
    host: str
    port: int


#: Where the shared services live. Tests may ``monkeypatch.setitem(SERVICES, ...)``; every
#: URL below is built from this table, and the reachability cache is keyed by host and
#: port. Redis is not shared: see :func:`redis_service`.
SERVICES: dict[str, Service] = {
    "postgres": Service("PostgreSQL", "127.0.0.1", 5432),
    "mariadb": Service("MariaDB", "127.0.0.1", 3306),
    "rabbitmq": Service("RabbitMQ", "127.0.0.1", 5672),
}
#: An explicit Redis db for the tests, used as it is and never flushed.
REDIS_URL_ENV = "CELERYFLOW_TEST_REDIS_URL"
REDIS_SERVER_BINARY = "redis-server"

POSTGRES_USER = "postgres"
MARIADB_USER = "root"
RABBITMQ_USER = "guest"
RABBITMQ_PASSWORD = "guest"
CHECK_TIMEOUT = 1.0  # seconds, for the TCP connect and the driver handshake

# (service, host, port) -> None when reachable, else the reason it is not.
_reachability: dict[tuple[str, str, int], str | None] = {}


def in_ci() -> bool:
    return os.environ.get("CI") == "true"


def skip_or_fail(reason: str) -> NoReturn:
    """Skip locally; fail under CI=true (where every service must be present)."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: services are required, not skipped)", pytrace=False)
    pytest.skip(reason)


def _driver_check(service: str, svc: Service) -> None:
    """A real protocol handshake: an open port alone may be a server still booting."""
    if service == "postgres":
        import psycopg

        with psycopg.connect(
            host=svc.host,
            port=svc.port,
            user=POSTGRES_USER,
            dbname="postgres",
            connect_timeout=max(2, int(CHECK_TIMEOUT)),  # libpq's minimum is 2 s
        ) as conn:
            conn.execute("SELECT 1")
    elif service == "mariadb":
        import pymysql

        conn = pymysql.connect(
            host=svc.host,
            port=svc.port,
            user=MARIADB_USER,
            connect_timeout=CHECK_TIMEOUT,
            read_timeout=2,
        )
        try:
            conn.ping()
        finally:
            conn.close()
    elif service == "redis":
        import redis

        client = redis.Redis.from_url(
            os.environ.get(REDIS_URL_ENV) or f"redis://{svc.host}:{svc.port}/0",
            socket_connect_timeout=CHECK_TIMEOUT,
            socket_timeout=2,
        )
        try:
            client.ping()
        finally:
            client.close()
    elif service == "rabbitmq":
        from kombu import Connection

        with Connection(rabbitmq_url(), connect_timeout=CHECK_TIMEOUT) as conn:
            conn.connect()
    else:  # pragma: no cover - programming error
        raise ValueError(f"unknown service {service!r}")


def check(service: str) -> str | None:
    """Return None if ``service`` answers, else a one-line reason. Cached per session."""
    if service == "redis":
        try:
            redis_service()
        except RedisServerError as exc:
            return str(exc)
    svc = redis_service() if service == "redis" else SERVICES[service]
    key = (service, svc.host, svc.port)
    if key not in _reachability:
        reason: str | None = None
        try:
            socket.create_connection((svc.host, svc.port), timeout=CHECK_TIMEOUT).close()
            _driver_check(service, svc)
        except Exception as exc:  # any failure is "not reachable", with its text
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            reason = (
                f"{svc.label} not reachable at {svc.host}:{svc.port}: "
                f"{type(exc).__name__}{': ' + detail if detail else ''}"
            )
        _reachability[key] = reason
    return _reachability[key]


def require(service: str) -> None:
    """Skip (locally) or fail (CI=true) the current test unless ``service`` is up."""
    reason = check(service)
    if reason is not None:
        skip_or_fail(reason)


# --------------------------------------------------------------------------------------
# Names and URLs
# --------------------------------------------------------------------------------------


def unique_name(prefix: str = "cf-test") -> str:
    """A name no other test (or concurrent test session) uses: ``<prefix>-<12 hex>``.

    Meant for queue, exchange, app and routing names. Database names come from
    :func:`_database_name` (SQL identifiers want underscores).
    """
    return f"{prefix}-{secrets.token_hex(6)}"


def _database_name() -> str:
    return f"cf_test_{secrets.token_hex(6)}"


def postgres_url(database: str) -> str:
    svc = SERVICES["postgres"]
    return f"postgresql+psycopg://{POSTGRES_USER}@{svc.host}:{svc.port}/{database}"


def mariadb_url(database: str) -> str:
    svc = SERVICES["mariadb"]
    return f"mysql+pymysql://{MARIADB_USER}@{svc.host}:{svc.port}/{database}?charset=utf8mb4"


_private_redis: RedisServer | None = None
_private_redis_error: str | None = None


def private_redis() -> RedisServer:
    """The session's own redis-server, started on first use (raises RedisServerError)."""
    global _private_redis, _private_redis_error
    if _private_redis is None and _private_redis_error is None:
        try:
            _private_redis = RedisServer.start(REDIS_SERVER_BINARY)
        except RedisServerError as exc:
            _private_redis_error = f"Redis for the tests: {exc}; or set {REDIS_URL_ENV}"
    if _private_redis is None:
        raise RedisServerError(_private_redis_error)
    return _private_redis


def stop_private_redis() -> None:
    global _private_redis
    if _private_redis is not None:
        _private_redis.stop()
        _private_redis = None


def redis_service() -> Service:
    """The Redis the tests use: ``$CELERYFLOW_TEST_REDIS_URL``'s, else the private one."""
    explicit = os.environ.get(REDIS_URL_ENV)
    if explicit:
        from redis.connection import parse_url

        parts = parse_url(explicit)
        return Service("Redis", parts.get("host", "127.0.0.1"), int(parts.get("port", 6379)))
    server = private_redis()
    return Service("Redis (private)", server.host, server.port)


def redis_url(db: int) -> str:
    svc = redis_service()
    return f"redis://{svc.host}:{svc.port}/{db}"


def rabbitmq_url() -> str:
    svc = SERVICES["rabbitmq"]
    return f"amqp://{RABBITMQ_USER}:{RABBITMQ_PASSWORD}@{svc.host}:{svc.port}//"


def fresh_sqlite_url(tmp_path: Path) -> str:
    """``sqlite:///<tmp_path>/store.db`` (absolute path, so four slashes). No cleanup needed."""
    return f"sqlite:///{tmp_path / 'store.db'}"


def embedded_broker_url(tmp_path: Path) -> str:
    """URL of celeryflow's SQLite-backed kombu transport (celeryflow/transport/kombu_sqlite.py)."""
    return f"celeryflow+sqlite:///{tmp_path / 'broker.db'}"


# --------------------------------------------------------------------------------------
# Isolated resources (context managers: create, yield, clean up)
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def fresh_postgres_url() -> Iterator[str]:
    """Create database ``cf_test_<hex>``; yield its SQLAlchemy URL; drop it (FORCE) after.

    ``DROP DATABASE ... WITH (FORCE)`` (PostgreSQL >= 13) terminates connections the test
    left open, e.g. an engine's pool, so a forgotten ``engine.dispose()`` cannot block it.
    """
    require("postgres")
    svc = SERVICES["postgres"]
    admin = f"host={svc.host} port={svc.port} user={POSTGRES_USER} dbname=postgres"
    with fresh_postgres_database(admin, "cf_test") as name:
        yield postgres_url(name)


@contextlib.contextmanager
def fresh_mariadb_url() -> Iterator[str]:
    """Create database ``cf_test_<hex>`` (utf8mb4, server's default collation); drop after.

    Before dropping, connections still using the database are killed, so an open
    transaction's metadata lock cannot make ``DROP DATABASE`` hang.
    """
    require("mariadb")
    import pymysql

    svc = SERVICES["mariadb"]
    name = _database_name()

    def admin() -> pymysql.connections.Connection[Any]:
        return pymysql.connect(
            host=svc.host, port=svc.port, user=MARIADB_USER, autocommit=True, read_timeout=60
        )

    conn = admin()
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    finally:
        conn.close()
    try:
        yield mariadb_url(name)
    finally:
        conn = admin()
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT id FROM information_schema.processlist"
                    " WHERE db = %s AND id <> CONNECTION_ID()",
                    (name,),
                )
                for (conn_id,) in cur.fetchall():
                    with contextlib.suppress(pymysql.MySQLError):  # it may be gone already
                        cur.execute(f"KILL CONNECTION {int(conn_id)}")
                cur.execute("SET SESSION lock_wait_timeout = 30")
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        finally:
            conn.close()


_redis_dbs = DbLender(redis_url)  # the private server's dbs


@contextlib.contextmanager
def fresh_redis_url() -> Iterator[str]:
    """Yield a Redis URL for one test (or one module's fixture).

    By default a db of the session's private redis-server that no other user holds
    now, FLUSHDB-ed before and after: the server is ours. With
    ``$CELERYFLOW_TEST_REDIS_URL`` set, that URL as it is, and nothing is flushed: tests
    keep to their uniquely named queues there.
    """
    require("redis")
    explicit = os.environ.get(REDIS_URL_ENV)
    if explicit:
        yield explicit
        return
    if not _redis_dbs.free:
        pytest.fail(f"all {DATABASES} dbs of the private Redis are in use", pytrace=False)
    with _redis_dbs.lend() as db:
        yield redis_url(db)


def forget_redis_name(url: str, name: str) -> None:
    """On a Redis that is not ours, delete what kombu kept for the uniquely named queue
    ``name`` (its list, bindings, binding deadlines), and nothing else."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=10)
    try:
        pattern = f"*{name}*"
        keys = list(client.scan_iter(match=pattern, count=500))
        if keys:
            client.delete(*keys)
        for zset in client.scan_iter(match="_kombu.*", _type="zset"):
            members = [m for m, _ in client.zscan_iter(zset, match=pattern)]
            if members:
                client.zrem(zset, *members)
    finally:
        client.close()


@dataclass
class RabbitMQBroker:
    """The shared RabbitMQ vhost ``/`` plus the names a test registered for deletion.

    RabbitMQ has no cheap per-test isolation (vhosts need the management API), so tests
    isolate by name: use ``queue_name()`` for every queue the test routes to (e.g. as
    Celery's ``task_default_queue``). Queues and exchanges of that name are deleted
    afterwards; Celery's own pidbox/event queues are auto-delete and vanish by themselves.
    """

    url: str
    names: list[str] = field(default_factory=list)

    def queue_name(self, prefix: str = "cf-test") -> str:
        name = unique_name(prefix)
        self.names.append(name)
        return name

    def register(self, name: str) -> str:
        """Also delete queue/exchange ``name`` (created by the test itself) afterwards."""
        self.names.append(name)
        return name

    def cleanup(self) -> None:
        from kombu import Connection, Exchange, Queue

        if not self.names:
            return
        with Connection(self.url, connect_timeout=5) as conn:
            for name in self.names:
                # A failed operation closes the channel, so use one channel per delete.
                for entity in (Queue(name), Exchange(name)):
                    channel = conn.channel()
                    try:
                        entity.bind(channel).delete()
                    except Exception:
                        pass  # already gone (or never declared)
                    finally:
                        with contextlib.suppress(Exception):
                            channel.close()
        self.names.clear()


@contextlib.contextmanager
def fresh_rabbitmq() -> Iterator[RabbitMQBroker]:
    require("rabbitmq")
    broker = RabbitMQBroker(rabbitmq_url())
    try:
        yield broker
    finally:
        broker.cleanup()


# --------------------------------------------------------------------------------------
# Stacks: a broker plus a store, as a deployment would pair them
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stack:
    """One deployment shape. Configure Celery with ``broker=broker_url`` and
    ``task_default_queue=queue``, and celeryflow with ``store=store_url``."""

    name: str
    broker_url: str
    store_url: str
    queue: str


STACKS = ("embedded", "redis-postgres", "rabbitmq-mariadb")
STORES = ("sqlite", "postgres", "mariadb")


@contextlib.contextmanager
def make_stack(name: str, tmp_path: Path) -> Iterator[Stack]:
    """Build stack ``name`` (one of STACKS) with fresh, isolated resources; clean up after."""
    with contextlib.ExitStack() as resources:
        if name == "embedded":
            yield Stack(
                name,
                broker_url=embedded_broker_url(tmp_path),
                store_url=fresh_sqlite_url(tmp_path),
                queue=unique_name("cf-test"),
            )
        elif name == "redis-postgres":
            store = resources.enter_context(fresh_postgres_url())
            broker = resources.enter_context(fresh_redis_url())
            queue = unique_name("cf-test")
            if os.environ.get(REDIS_URL_ENV):
                resources.callback(forget_redis_name, broker, queue)
            yield Stack(name, broker_url=broker, store_url=store, queue=queue)
        elif name == "rabbitmq-mariadb":
            store = resources.enter_context(fresh_mariadb_url())
            rabbit = resources.enter_context(fresh_rabbitmq())
            yield Stack(name, broker_url=rabbit.url, store_url=store, queue=rabbit.queue_name())
        else:
            raise ValueError(f"unknown stack {name!r}; expected one of {STACKS}")


@contextlib.contextmanager
def make_store_url(kind: str, tmp_path: Path) -> Iterator[str]:
    """A fresh store URL of ``kind`` (one of STORES); cleaned up after."""
    if kind == "sqlite":
        yield fresh_sqlite_url(tmp_path)
    elif kind == "postgres":
        with fresh_postgres_url() as url:
            yield url
    elif kind == "mariadb":
        with fresh_mariadb_url() as url:
            yield url
    else:
        raise ValueError(f"unknown store {kind!r}; expected one of {STORES}")


# --------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------


@pytest.fixture(params=STACKS)
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    """Every test using ``stack`` runs once per STACKS entry (ids: ``test_x[embedded]``,
    ``test_x[redis-postgres]``, ``test_x[rabbitmq-mariadb]``). A test or module that
    supports fewer overrides the params::

        @pytest.mark.parametrize("stack", ["embedded", "redis-postgres"], indirect=True)
    """
    with make_stack(request.param, tmp_path) as s:
        yield s


@pytest.fixture(params=STORES)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty store database URL, once per STORES entry (sqlite/postgres/mariadb).
    Restrict with ``@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)``."""
    with make_store_url(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def sqlite_store_url(tmp_path: Path) -> str:
    return fresh_sqlite_url(tmp_path)


@pytest.fixture
def postgres_store_url() -> Iterator[str]:
    with fresh_postgres_url() as url:
        yield url


@pytest.fixture
def mariadb_store_url() -> Iterator[str]:
    with fresh_mariadb_url() as url:
        yield url


@pytest.fixture
def redis_broker_url() -> Iterator[str]:
    with fresh_redis_url() as url:
        yield url


@pytest.fixture(scope="session", autouse=True)
def private_redis_lifetime() -> Iterator[None]:
    """The private redis-server starts on first use; this stops it when the session ends."""
    yield
    stop_private_redis()


@pytest.fixture
def rabbitmq_broker() -> Iterator[RabbitMQBroker]:
    with fresh_rabbitmq() as broker:
        yield broker
