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


def test_redis_broker_url(redis_broker_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import redis

    server = services.private_redis()
    db = int(redis_broker_url.rsplit("/", 1)[1])
    assert redis_broker_url == f"redis://127.0.0.1:{server.port}/{db}"
    client = redis.Redis.from_url(redis_broker_url)
    try:
        assert client.dbsize() == 0  # flushed before the test
        client.set("probe", b"value")
        assert client.get("probe") == b"value"
    finally:
        client.close()


def test_redis_is_a_private_server_without_persistence() -> None:
    """The tests' Redis is a server this session started: not the shared localhost:6379,
    files in its own temporary directory, nothing saved."""
    import redis

    server = services.private_redis()
    assert server.port != 6379 and server.process.poll() is None
    client = redis.Redis.from_url(server.url(0))
    try:
        info = client.info("server")
        assert info["process_id"] == server.process.pid
        assert info["tcp_port"] == server.port
        assert client.config_get("dir")["dir"] == str(server.directory.resolve())
        assert client.config_get("save")["save"] == ""
        assert client.config_get("appendonly")["appendonly"] == "no"
    finally:
        client.close()


def test_redis_dbs_are_handed_out_once_and_flushed_after() -> None:
    import redis

    with services.fresh_redis_url() as url:
        with services.fresh_redis_url() as other:  # a second user gets another db
            assert other != url
        client = redis.Redis.from_url(url)
        client.set("leftover", 1)
    assert client.dbsize() == 0  # flushed after the test
    client.close()


def test_explicit_redis_url_is_used_as_is_and_never_flushed(
    redis_broker_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A developer's own Redis (here: a db of the private one standing in for it) keeps
    every key it had: nothing is flushed there, before or after."""
    import redis

    theirs = redis_broker_url
    client = redis.Redis.from_url(theirs)
    try:
        client.set("someone-elses", b"data")
        monkeypatch.setenv(services.REDIS_URL_ENV, theirs)
        with services.fresh_redis_url() as url:
            assert url == theirs
            assert client.get("someone-elses") == b"data"
            client.set("the-tests-own", 1)
        assert client.get("someone-elses") == b"data"
    finally:
        client.close()


def test_forget_redis_name_deletes_only_that_queues_keys(redis_broker_url: str) -> None:
    import redis

    url = redis_broker_url
    client = redis.Redis.from_url(url)
    name = services.unique_name("cf-test")
    try:
        client.rpush(name, "message")
        client.sadd(f"_kombu.binding.{name}", "route")
        client.zadd("_kombu.binding_deadlines", {name: 1, "celery.pidbox": 2})
        client.set("someone-elses", 1)
        services.forget_redis_name(url, name)
        assert sorted(client.keys("*")) == [b"_kombu.binding_deadlines", b"someone-elses"]
        assert client.zrange("_kombu.binding_deadlines", 0, -1) == [b"celery.pidbox"]
    finally:
        client.close()


def test_missing_redis_server_binary_names_the_fix() -> None:
    from redis_server import RedisServer, RedisServerError

    with pytest.raises(RedisServerError, match="'no-such-redis-server' not found on PATH"):
        RedisServer.start("no-such-redis-server")


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


def test_unreachable_explicit_redis_skips_locally_and_fails_in_ci(
    closed_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(services.REDIS_URL_ENV, f"redis://127.0.0.1:{closed_port}/3")
    reason = f"Redis not reachable at 127.0.0.1:{closed_port}: ConnectionRefusedError"

    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=reason):
        services.require("redis")

    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=reason):
        services.require("redis")
