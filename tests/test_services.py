"""Self-test of tests/services.py: every fixture is exercised against the real service."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import services
import sqlalchemy as sa
from services import RabbitMQBroker, Service, Stack

# --- store databases -------------------------------------------------------------------


def roundtrip_table(url: str) -> None:
    """Create a table, write and read a row: the database exists, is empty and is ours."""
    engine = sa.create_engine(url)
    try:
        assert sa.inspect(engine).get_table_names() == []
        meta = sa.MetaData()
        table = sa.Table(
            "probe",
            meta,
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("text", sa.String(50)),
        )
        meta.create_all(engine)
        with engine.begin() as conn:
            conn.execute(table.insert().values(id=1, text="héllo ✓"))
        with engine.connect() as conn:
            assert conn.execute(sa.select(table.c.text)).scalar_one() == "héllo ✓"
    finally:
        engine.dispose()


def test_store_url(store_url: str) -> None:
    roundtrip_table(store_url)


def test_sqlite_store_url(sqlite_store_url: str, tmp_path: Path) -> None:
    assert sqlite_store_url == f"sqlite:///{tmp_path}/store.db"
    roundtrip_table(sqlite_store_url)
    assert (tmp_path / "store.db").exists()


def test_postgres_database_is_dropped_even_with_open_connections() -> None:
    with services.fresh_postgres_url() as url:
        assert url.startswith("postgresql+psycopg://postgres@127.0.0.1:5432/cf_test_")
        name = sa.make_url(url).database
        engine = sa.create_engine(url)
        engine.connect()  # left open on purpose: DROP ... WITH (FORCE) must cope
        assert sa.inspect(engine).get_table_names() == []
    engine.dispose()
    admin = sa.create_engine(services.postgres_url("postgres"))
    try:
        with admin.connect() as conn:
            found = conn.execute(
                sa.text("SELECT count(*) FROM pg_database WHERE datname = :n"), {"n": name}
            ).scalar_one()
        assert found == 0
    finally:
        admin.dispose()


def test_mariadb_database_is_dropped_even_with_open_transaction() -> None:
    with services.fresh_mariadb_url() as url:
        assert url.startswith("mysql+pymysql://root@127.0.0.1:3306/cf_test_")
        assert url.endswith("?charset=utf8mb4")
        name = sa.make_url(url).database
        engine = sa.create_engine(url)
        conn = engine.connect()
        conn.execute(sa.text("CREATE TABLE t (id INT PRIMARY KEY) ENGINE=InnoDB"))
        conn.execute(sa.text("INSERT INTO t VALUES (1)"))  # open transaction: metadata lock
    with pytest.raises(sa.exc.OperationalError):  # the cleanup killed this connection
        conn.execute(sa.text("SELECT 1"))
    conn.invalidate()
    engine.dispose()
    admin = sa.create_engine(services.mariadb_url("information_schema"))
    try:
        with admin.connect() as c:
            found = c.execute(
                sa.text("SELECT count(*) FROM schemata WHERE schema_name = :n"), {"n": name}
            ).scalar_one()
        assert found == 0
    finally:
        admin.dispose()


# --- brokers ---------------------------------------------------------------------------


def test_redis_broker_url(redis_broker_url: str) -> None:
    import redis

    db = int(redis_broker_url.rsplit("/", 1)[1])
    assert redis_broker_url == f"redis://127.0.0.1:6379/{db}"
    assert db in services.REDIS_TEST_DBS
    client = redis.Redis.from_url(redis_broker_url)
    try:
        assert client.dbsize() == 0  # flushed before the test
        client.set("probe", b"value")
        assert client.get("probe") == b"value"
    finally:
        client.close()


def test_redis_db_is_locked_flushed_and_released() -> None:
    import redis

    control = redis.Redis(host="127.0.0.1", port=6379, db=0)
    try:
        with services.fresh_redis_url() as url:
            db = int(url.rsplit("/", 1)[1])
            lock = services.REDIS_LOCK_KEY.format(db=db)
            assert control.exists(lock)
            with services.fresh_redis_url() as other:  # a second user gets another db
                assert other != url
            client = redis.Redis.from_url(url)
            client.set("leftover", 1)
        assert client.dbsize() == 0  # flushed after the test
        assert not control.exists(lock)  # lock released
        client.close()
    finally:
        control.close()


def test_rabbitmq_publish_consume_and_cleanup(rabbitmq_broker: RabbitMQBroker) -> None:
    from kombu import Connection
    from kombu.exceptions import ChannelError

    assert rabbitmq_broker.url == "amqp://guest:guest@127.0.0.1:5672//"
    name = rabbitmq_broker.queue_name("cf-selftest")
    assert name.startswith("cf-selftest-") and name in rabbitmq_broker.names
    with Connection(rabbitmq_broker.url) as conn:
        queue = conn.SimpleQueue(name)
        queue.put({"hello": "world"})
        message = queue.get(block=True, timeout=10)
        assert message.payload == {"hello": "world"}
        message.ack()
        queue.close()

    rabbitmq_broker.cleanup()  # what the fixture does at teardown; idempotent
    with Connection(rabbitmq_broker.url) as conn:
        channel = conn.channel()
        with pytest.raises(ChannelError):  # passive declare: 404 NOT_FOUND
            channel.queue_declare(queue=name, passive=True)


def test_unique_name() -> None:
    a, b = services.unique_name("q"), services.unique_name("q")
    assert a != b and a.startswith("q-") and len(a) == len("q-") + 12


def test_embedded_broker_url(tmp_path: Path) -> None:
    assert services.embedded_broker_url(tmp_path) == f"celeryflow+sqlite:///{tmp_path}/broker.db"


# --- stacks ----------------------------------------------------------------------------


def test_stack(stack: Stack, tmp_path: Path) -> None:
    assert stack.name in services.STACKS
    assert stack.queue.startswith("cf-test-")
    roundtrip_table(stack.store_url)
    if stack.name == "embedded":
        assert stack.store_url == f"sqlite:///{tmp_path}/store.db"
        assert stack.broker_url == f"celeryflow+sqlite:///{tmp_path}/broker.db"
    else:
        from kombu import Connection

        expected = "redis://" if stack.name == "redis-postgres" else "amqp://"
        assert stack.broker_url.startswith(expected)
        with Connection(stack.broker_url) as conn:
            queue = conn.SimpleQueue(stack.queue)
            queue.put("ping")
            message = queue.get(block=True, timeout=10)
            assert message.payload == "ping"
            message.ack()
            queue.close()


@pytest.mark.parametrize("stack", ["embedded"], indirect=True)
def test_stack_can_be_restricted(stack: Stack) -> None:
    assert stack.name == "embedded"


# --- skip locally, fail under CI=true --------------------------------------------------


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("service", sorted(services.SERVICES))
def test_unreachable_service_skips_locally_and_fails_in_ci(
    service: str, closed_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    label = services.SERVICES[service].label
    monkeypatch.setitem(services.SERVICES, service, Service(label, "127.0.0.1", closed_port))
    reason = f"{label} not reachable at 127.0.0.1:{closed_port}: ConnectionRefusedError"

    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=reason):
        services.require(service)

    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=reason):
        services.require(service)
