"""The embedded broker: a kombu virtual transport on one SQLite file.

``celeryflow+sqlite:///relative.db`` or ``celeryflow+sqlite:////abs/path.db``. Unlike
kombu's ``sqla+sqlite://`` it acknowledges for real (a fetched row is reserved, ``ack``
deletes it), gives back what a dead worker held (a heartbeat row per process), polls
every 0.1 s, and keeps fanout bindings in the file so remote control works across
processes. Design notes and knobs: ``celeryflow/store/TRANSPORT.md``.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from queue import Empty
from typing import Any
from urllib.parse import parse_qsl

import kombu.transport
from kombu.transport import virtual
from kombu.utils.json import dumps, loads

__all__ = ["Channel", "QoS", "Transport", "register"]

ALIAS = "celeryflow"
logger = logging.getLogger(__name__)


def register() -> None:
    """Make ``celeryflow+sqlite://`` URLs resolve to this transport (idempotent)."""
    kombu.transport.TRANSPORT_ALIASES[ALIAS] = f"{__name__}:Transport"


register()

_SCHEMA = (
    # AUTOINCREMENT: ids are delivery tags, so a late ack must never hit a reused id.
    """CREATE TABLE IF NOT EXISTS cf_broker_message (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        queue TEXT NOT NULL,
        payload TEXT NOT NULL,
        reserved_by INTEGER)""",
    """CREATE INDEX IF NOT EXISTS cf_broker_message_ready
        ON cf_broker_message (queue, reserved_by, id)""",
    # owner is set for auto-delete queues only: they die with the process that bound them.
    """CREATE TABLE IF NOT EXISTS cf_broker_binding (
        exchange TEXT NOT NULL,
        routing_key TEXT NOT NULL,
        queue TEXT NOT NULL,
        pattern TEXT,
        owner INTEGER,
        PRIMARY KEY (exchange, routing_key, queue))""",
    """CREATE TABLE IF NOT EXISTS cf_broker_consumer (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        heartbeat REAL NOT NULL)""",
)
_PEEK = "SELECT 1 FROM cf_broker_message WHERE queue = ? AND reserved_by IS NULL LIMIT 1"
_NEXT = (
    "SELECT id, payload FROM cf_broker_message"
    " WHERE queue = ? AND reserved_by IS NULL ORDER BY id LIMIT 1"
)


@dataclass(frozen=True)
class Options:
    path: str
    busy_timeout: float = 30.0
    heartbeat_interval: float = 2.0
    heartbeat_timeout: float = 15.0


def parse_location(hostname: str) -> tuple[str, dict[str, str]]:
    """``sqlite:///x.db?k=v`` (what kombu leaves after ``celeryflow+``) -> path, query."""
    location, _, query = hostname.partition("?")
    if location.startswith("sqlite://"):
        location = location[len("sqlite://") :]
        # sqlite:///rel.db -> "/rel.db" -> "rel.db"; sqlite:////abs.db -> "//abs.db" -> "/abs.db"
        location = location[1:] if location.startswith("/") else location
    if not location or location == ":memory:":
        raise ValueError(f"celeryflow+sqlite needs a database file path, got {hostname!r}")
    return location, dict(parse_qsl(query))


# Connections are per process and per thread: sqlite3 handles must not cross a fork,
# and a prefork child inherits the parent's thread-local storage.
_local = threading.local()
_schema_ready: set[tuple[int, str]] = set()
# Handles inherited across fork are kept referenced so that the child never closes
# (and so never checkpoints or unlocks) a connection that belongs to its parent.
_inherited: list[sqlite3.Connection] = []


def connect(options: Options) -> sqlite3.Connection:
    pid = os.getpid()
    if getattr(_local, "pid", None) != pid:
        _inherited.extend(getattr(_local, "conns", {}).values())
        _local.pid, _local.conns = pid, {}
    conns: dict[str, sqlite3.Connection] = _local.conns
    conn = conns.get(options.path)
    if conn is None:
        conn = sqlite3.connect(
            options.path,
            timeout=options.busy_timeout,
            isolation_level=None,
            check_same_thread=False,
        )
        conn.execute("PRAGMA synchronous=NORMAL")
        # After a burst, don't keep a WAL file the size of the burst.
        conn.execute("PRAGMA journal_size_limit=67108864")
        if (pid, options.path) not in _schema_ready:
            _create_schema(conn)
            _schema_ready.add((pid, options.path))
        conns[options.path] = conn
    return conn


def _create_schema(conn: sqlite3.Connection) -> None:
    # Only takes effect on a brand-new file; a shared store file keeps its own setting
    # (freed pages are reused either way).
    conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
    for _ in range(100):
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:  # two processes converting a fresh file
            if "locked" not in str(exc):
                raise
            time.sleep(0.05)
    with write(conn):
        for statement in _SCHEMA:
            conn.execute(statement)


@contextmanager
def write(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction that takes the lock up front (no deadlock-prone upgrade)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _marks(ids: list[int]) -> str:
    return ",".join("?" * len(ids))


def _release(conn: sqlite3.Connection, dead: list[int]) -> None:
    """Give back what consumers ``dead`` reserved and drop their auto-delete queues."""
    m = _marks(dead)
    conn.execute(f"UPDATE cf_broker_message SET reserved_by = NULL WHERE reserved_by IN ({m})", dead)
    conn.execute(
        f"DELETE FROM cf_broker_message WHERE queue IN"
        f" (SELECT queue FROM cf_broker_binding WHERE owner IN ({m}))"
        f" AND queue NOT IN (SELECT queue FROM cf_broker_binding"
        f" WHERE owner IS NULL OR owner NOT IN ({m}))",
        dead + dead,
    )
    conn.execute(f"DELETE FROM cf_broker_binding WHERE owner IN ({m})", dead)
    conn.execute(f"DELETE FROM cf_broker_consumer WHERE id IN ({m})", dead)


class Member:
    """This process's membership of one broker file: a consumer row, kept fresh by a thread.

    Every reservation names the member, so when a process dies without a word (SIGKILL,
    OOM) its heartbeat goes stale and any other member gives its messages back, including
    the ETA messages Celery holds unacked in memory. While the holder lives, nothing is
    redelivered however distant the ETA.
    """

    def __init__(self, options: Options) -> None:
        self.options = options
        self.pid = os.getpid()
        self.channels: weakref.WeakSet[Channel] = weakref.WeakSet()
        self.bindings: dict[tuple[str, str, str], str | None] = {}
        self._stop = threading.Event()
        self._beats = 0
        conn = connect(options)
        self.sweep(conn)
        with write(conn):
            cur = conn.execute(
                "INSERT INTO cf_broker_consumer (host, pid, heartbeat) VALUES (?, ?, ?)",
                (socket.gethostname(), self.pid, time.time()),
            )
        self.id: int = cur.lastrowid or 0
        threading.Thread(target=self._run, name="celeryflow-broker-heartbeat", daemon=True).start()
        atexit.register(self.leave)

    def _run(self) -> None:
        while not self._stop.wait(self.options.heartbeat_interval):
            if not os.path.exists(self.options.path):
                return  # the file was removed (a test's temp dir): nothing left to keep alive
            try:
                conn = connect(self.options)
                self._beat(conn)
                self.sweep(conn)
                self._beats += 1
                if self._beats % 30 == 0:
                    _vacuum(conn)
            except sqlite3.Error:
                logger.warning("celeryflow broker heartbeat failed", exc_info=True)

    def _beat(self, conn: sqlite3.Connection) -> None:
        cur = conn.execute(
            "UPDATE cf_broker_consumer SET heartbeat = ? WHERE id = ?", (time.time(), self.id)
        )
        if cur.rowcount:
            return
        # Another process judged us dead (we were frozen longer than heartbeat_timeout)
        # and gave our messages back: rejoin under the same id and take back whatever
        # nobody else has taken yet, so a held ETA message does not run twice.
        held = [(self.id, tag) for ch in list(self.channels) for tag in ch.held()]
        with write(conn):
            conn.execute(
                "INSERT OR REPLACE INTO cf_broker_consumer (id, host, pid, heartbeat)"
                " VALUES (?, ?, ?, ?)",
                (self.id, socket.gethostname(), self.pid, time.time()),
            )
            conn.executemany(
                "UPDATE cf_broker_message SET reserved_by = ? WHERE id = ? AND reserved_by IS NULL",
                held,
            )
            for (exchange, key, queue), pattern in list(self.bindings.items()):
                _bind(conn, exchange, key, queue, pattern, self.id)
        logger.warning("celeryflow broker: consumer %s was declared dead and rejoined", self.id)

    def sweep(self, conn: sqlite3.Connection) -> None:
        cutoff = time.time() - self.options.heartbeat_timeout
        # A read first, so that the common case (nobody died) takes no write lock.
        query = "SELECT id FROM cf_broker_consumer WHERE heartbeat < ?"
        if not conn.execute(query + " LIMIT 1", (cutoff,)).fetchall():
            return
        with write(conn):
            dead = [row[0] for row in conn.execute(query, (cutoff,))]
            if dead:
                _release(conn, dead)
        if dead:
            logger.warning("celeryflow broker: requeued messages of dead consumers %s", dead)

    def leave(self) -> None:
        """At exit, give everything back at once rather than after heartbeat_timeout."""
        if os.getpid() != self.pid or self._stop.is_set():
            return
        self._stop.set()
        try:
            conn = connect(self.options)
            with write(conn):
                _release(conn, [self.id])
        except sqlite3.Error:
            logger.warning("celeryflow broker: could not release consumer %s", self.id)


def _vacuum(conn: sqlite3.Connection) -> None:
    # Returns space after a burst; a no-op unless the file was created with
    # auto_vacuum=INCREMENTAL. Keeps some free pages for the next burst.
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    if free > 1024:
        conn.execute(f"PRAGMA incremental_vacuum({min(free - 256, 4096)})").fetchall()


_members: dict[tuple[int, str], Member] = {}
_members_lock = threading.Lock()


def member(options: Options) -> Member:
    key = (os.getpid(), options.path)
    found = _members.get(key)
    if found is None:
        with _members_lock:
            found = _members.get(key)
            if found is None:
                found = _members[key] = Member(options)
    return found


def _bind(
    conn: sqlite3.Connection,
    exchange: str,
    key: str,
    queue: str,
    pattern: str | None,
    owner: int | None,
) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO cf_broker_binding (exchange, routing_key, queue, pattern, owner)"
        " VALUES (?, ?, ?, ?, ?)",
        (exchange, key, queue, pattern, owner),
    )


class QoS(virtual.QoS):  # type: ignore[misc]
    """Unacked messages are reserved rows: restoring un-reserves them, never copies."""

    channel: Channel

    def reject(self, delivery_tag: int, requeue: bool = False) -> None:
        self.channel._settle([delivery_tag], requeue=requeue)
        self._quick_ack(delivery_tag)

    def restore_unacked(self) -> list[tuple[BaseException, Any]]:
        self._flush()
        tags = list(self._delivered)
        self._delivered.clear()
        if tags:
            try:
                self.channel._settle(tags, requeue=True)
            except sqlite3.Error:
                # Still reserved by us: the sweep gives them back once we are gone.
                logger.warning("celeryflow broker: could not requeue %d messages", len(tags))
        return []


class Channel(virtual.Channel):  # type: ignore[misc]
    QoS = QoS
    supports_fanout = True

    def __init__(self, connection: Transport, **kwargs: Any) -> None:
        # Kept here because kombu drops channel.connection on close, before the QoS
        # finalizer may still need the database.
        self.options: Options = connection.options
        self._noack: set[str] = set()
        self._auto_delete: set[str] = set()
        super().__init__(connection, **kwargs)

    def _db(self) -> sqlite3.Connection:
        return connect(self.options)

    def _member(self) -> Member:
        found = member(self.options)
        found.channels.add(self)
        return found

    def held(self) -> list[int]:
        try:
            return list(self._qos._delivered) if self._qos is not None else []
        except RuntimeError:  # resized by the consuming thread; next beat will do
            return []

    # -- queues and bindings (kept in the file, so every process sees them) --------

    def _new_queue(self, queue: str, auto_delete: bool = False, **kwargs: Any) -> None:
        if auto_delete:
            self._auto_delete.add(queue)

    def _queue_bind(self, exchange: str, routing_key: str, pattern: Any, queue: str) -> None:
        owner = None
        if queue in self._auto_delete:
            found = self._member()
            owner = found.id
            found.bindings[(exchange, routing_key or "", queue)] = pattern
        _bind(self._db(), exchange, routing_key or "", queue, pattern, owner)

    def queue_unbind(
        self, queue: str, exchange: str | None = None, routing_key: str = "", **kwargs: Any
    ) -> None:
        super().queue_unbind(queue, exchange, routing_key, **kwargs)
        self._db().execute(
            "DELETE FROM cf_broker_binding WHERE exchange = ? AND routing_key = ? AND queue = ?",
            (exchange or "amq.direct", routing_key or "", queue),
        )

    def get_table(self, exchange: str) -> list[tuple[str, str | None, str]]:
        rows = self._db().execute(
            "SELECT routing_key, pattern, queue FROM cf_broker_binding WHERE exchange = ?",
            (exchange,),
        )
        return [tuple(row) for row in rows]

    def _delete(self, queue: str, *args: Any, **kwargs: Any) -> None:
        with write(self._db()) as conn:
            conn.execute("DELETE FROM cf_broker_binding WHERE queue = ?", (queue,))
            conn.execute(
                "DELETE FROM cf_broker_message WHERE queue = ? AND reserved_by IS NULL", (queue,)
            )
        self._auto_delete.discard(queue)
        if found := _members.get((os.getpid(), self.options.path)):
            for key in [k for k in found.bindings if k[2] == queue]:
                found.bindings.pop(key, None)

    def _purge(self, queue: str) -> int:
        cur = self._db().execute(
            "DELETE FROM cf_broker_message WHERE queue = ? AND reserved_by IS NULL", (queue,)
        )
        return cur.rowcount

    def _size(self, queue: str) -> int:
        row = self._db().execute(
            "SELECT count(*) FROM cf_broker_message WHERE queue = ? AND reserved_by IS NULL",
            (queue,),
        ).fetchone()
        return int(row[0])

    # -- publishing ----------------------------------------------------------------

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        self._db().execute(
            "INSERT INTO cf_broker_message (queue, payload) VALUES (?, ?)", (queue, dumps(message))
        )

    def _put_fanout(
        self, exchange: str, message: dict[str, Any], routing_key: str, **kwargs: Any
    ) -> None:
        self._db().execute(
            "INSERT INTO cf_broker_message (queue, payload)"
            " SELECT DISTINCT queue, ? FROM cf_broker_binding WHERE exchange = ?",
            (dumps(message), exchange),
        )

    # -- consuming -----------------------------------------------------------------

    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any) -> Any:
        if no_ack:
            self._noack.add(queue)
        else:
            self._noack.discard(queue)
            self._member()
        return super().basic_consume(queue, no_ack, *args, **kwargs)

    def basic_cancel(self, consumer_tag: str) -> Any:
        self._noack.discard(self._tag_to_queue.get(consumer_tag, ""))
        return super().basic_cancel(consumer_tag)

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        try:
            message = self.Message(self._fetch(queue, no_ack), channel=self)
        except Empty:
            return None
        if not no_ack:
            self.qos.append(message, message.delivery_tag)
        return message

    def _get(self, queue: str, timeout: float | None = None) -> dict[str, Any]:
        return self._fetch(queue, queue in self._noack)

    def _fetch(self, queue: str, no_ack: bool) -> dict[str, Any]:
        conn = self._db()
        # Idle polling is a read: it takes no write lock, so it never delays publishers.
        if not conn.execute(_PEEK, (queue,)).fetchall():
            raise Empty()
        owner = None if no_ack else self._member().id
        # BEGIN IMMEDIATE serialises competing fetchers: no two get the same row.
        with write(conn):
            rows = conn.execute(_NEXT, (queue,)).fetchall()
            if rows and no_ack:
                conn.execute("DELETE FROM cf_broker_message WHERE id = ?", (rows[0][0],))
            elif rows:
                conn.execute(
                    "UPDATE cf_broker_message SET reserved_by = ? WHERE id = ?", (owner, rows[0][0])
                )
        if not rows:
            raise Empty()
        payload: dict[str, Any] = loads(rows[0][1])
        # The row id is the delivery tag: ack and requeue address the row directly.
        payload["properties"]["delivery_tag"] = rows[0][0]
        return payload

    def basic_ack(self, delivery_tag: int, multiple: bool = False) -> None:
        self._settle([delivery_tag], requeue=False)
        super().basic_ack(delivery_tag, multiple)

    def _settle(self, tags: Iterable[int], requeue: bool) -> None:
        """Delete (ack/reject) or un-reserve (requeue) rows this process holds.

        Guarded by ``reserved_by``: once a row was given back and taken by someone
        else, our late ack must not delete their message.
        """
        found = _members.get((os.getpid(), self.options.path))
        if found is None:
            return
        args = [(found.id, tag) for tag in tags]
        if requeue:
            sql = "UPDATE cf_broker_message SET reserved_by = NULL WHERE reserved_by = ? AND id = ?"
        else:
            sql = "DELETE FROM cf_broker_message WHERE reserved_by = ? AND id = ?"
        conn = self._db()
        if len(args) == 1:
            conn.execute(sql, args[0])
        else:
            with write(conn):
                conn.executemany(sql, args)

    def _restore(self, message: Any) -> None:
        self._settle([message.delivery_tag], requeue=True)

    def _restore_at_beginning(self, message: Any) -> None:
        self._restore(message)


class Transport(virtual.Transport):  # type: ignore[misc]
    """``celeryflow+sqlite:///path.db``; options via the URL query or transport options:

    ``polling_interval`` (0.1 s), ``heartbeat_interval`` (2 s), ``heartbeat_timeout``
    (15 s: a process silent this long is dead and its messages come back),
    ``busy_timeout`` (30 s).
    """

    Channel = Channel
    can_parse_url = True
    default_port = 0
    driver_type = "sqlite"
    driver_name = "sqlite3"
    polling_interval = 0.1
    connection_errors = (*virtual.Transport.connection_errors, sqlite3.OperationalError)
    implements = virtual.Transport.implements.extend(
        exchange_type=frozenset(["direct", "topic", "fanout"])
    )

    def __init__(self, client: Any, **kwargs: Any) -> None:
        hostname = client.hostname or ""
        path, query = parse_location(hostname if "://" in hostname else f"sqlite:///{hostname}")
        opts: dict[str, Any] = {**query, **(client.transport_options or {})}
        defaults = Options(path)
        self.options = Options(
            path=os.path.abspath(path),
            busy_timeout=float(opts.get("busy_timeout", defaults.busy_timeout)),
            heartbeat_interval=float(opts.get("heartbeat_interval", defaults.heartbeat_interval)),
            heartbeat_timeout=float(opts.get("heartbeat_timeout", defaults.heartbeat_timeout)),
        )
        if self.options.heartbeat_timeout < 2 * self.options.heartbeat_interval:
            raise ValueError("heartbeat_timeout must be at least twice heartbeat_interval")
        super().__init__(client, **kwargs)
        self.polling_interval = float(opts.get("polling_interval", type(self).polling_interval))

    def establish_connection(self) -> Any:
        connect(self.options)  # surface a bad path or a locked file at connect time
        return super().establish_connection()

    def driver_version(self) -> str:
        return sqlite3.sqlite_version
