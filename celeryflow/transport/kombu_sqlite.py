"""The embedded broker: a kombu virtual transport on one SQLite file.

``celeryflow+sqlite:///relative.db`` or ``celeryflow+sqlite:////abs/path.db``. Unlike
kombu's ``sqla+sqlite://`` it acknowledges for real (a fetched row is reserved, ``ack``
deletes it), gives back what a dead worker held (a heartbeat row per process), polls
every 0.1 s, and keeps fanout bindings in the file so remote control works across
processes. Design notes and knobs: ``celeryflow/transport/TRANSPORT.md``.
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from queue import Empty
from typing import Any
from urllib.parse import parse_qsl

import kombu.transport
from kombu.transport import virtual
from kombu.utils import json as kombu_json

__all__ = ["Channel", "QoS", "Transport", "register"]

ALIAS = "celeryflow"
logger = logging.getLogger(__name__)
# kombu's codec (not the stdlib's) so that headers holding datetimes etc. survive.
dumps: Callable[[Any], str] = kombu_json.dumps
loads: Callable[[str], Any] = kombu_json.loads


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
_READY = "FROM cf_broker_message WHERE queue = ? AND reserved_by IS NULL"
_PEEK = f"SELECT 1 {_READY} LIMIT 1"
_NEXT = f"SELECT id, payload {_READY} ORDER BY id LIMIT 1"
_BIND = (
    "INSERT OR REPLACE INTO cf_broker_binding (exchange, routing_key, queue, pattern, owner)"
    " VALUES (?, ?, ?, ?, ?)"
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


class _Conn(sqlite3.Connection):
    """Weak-referenceable, so that fork handling can find every open handle."""


# Connections are per process and per thread: sqlite3 handles must not cross a fork,
# and a prefork child inherits the parent's thread-local storage.
_local = threading.local()
_schema_ready: set[tuple[int, str]] = set()
_open: weakref.WeakSet[_Conn] = weakref.WeakSet()
# Every sqlite call here holds _guard, and fork() waits for it: a child must not be
# born while a thread of ours is inside SQLite (its mutexes would stay locked).
_guard = threading.RLock()
_hooks_installed = False
# Handles inherited across fork stay referenced so that the child never closes (and
# so never tries to checkpoint or unlock) a connection that belongs to its parent.
_inherited: list[_Conn] = []
_forking: list[_Conn] = []


def _before_fork() -> None:
    _guard.acquire()
    _forking[:] = list(_open)


def _after_fork_in_parent() -> None:
    _forking.clear()
    _guard.release()


def _after_fork_in_child() -> None:
    global _guard
    _guard = threading.RLock()
    _inherited.extend(_forking)
    _forking.clear()


def connect(options: Options) -> sqlite3.Connection:
    """This thread's connection to the file (call with _guard held)."""
    global _hooks_installed
    if not _hooks_installed:
        _hooks_installed = True
        os.register_at_fork(
            before=_before_fork,
            after_in_parent=_after_fork_in_parent,
            after_in_child=_after_fork_in_child,
        )
    pid = os.getpid()
    if getattr(_local, "pid", None) != pid:
        _local.pid, _local.conns = pid, {}
    conns: dict[str, sqlite3.Connection] = _local.conns
    conn = conns.get(options.path)
    if conn is None:
        conn = sqlite3.connect(
            options.path,
            timeout=options.busy_timeout,
            isolation_level=None,
            check_same_thread=False,
            factory=_Conn,
        )
        conn.execute("PRAGMA synchronous=NORMAL")
        # After a burst, don't keep a WAL file the size of the burst.
        conn.execute("PRAGMA journal_size_limit=67108864")
        if (pid, options.path) not in _schema_ready:
            _create_schema(conn)
            _schema_ready.add((pid, options.path))
        conns[options.path] = conn
        _open.add(conn)
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
    with _transaction(conn):
        for statement in _SCHEMA:
            conn.execute(statement)


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    # IMMEDIATE takes the write lock up front: no deadlock-prone read-to-write upgrade.
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


@contextmanager
def write(options: Options) -> Iterator[sqlite3.Connection]:
    with _guard, _transaction(connect(options)) as conn:
        yield conn


def execute(options: Options, sql: str, args: Any = ()) -> tuple[list[Any], int]:
    """One statement in its own (implicit) transaction -> (rows, rowcount)."""
    with _guard:
        cur = connect(options).execute(sql, args)
        return cur.fetchall(), cur.rowcount


def _release(conn: sqlite3.Connection, dead: list[int]) -> None:
    """Give back what consumers ``dead`` reserved and drop their auto-delete queues."""
    m = ",".join("?" * len(dead))
    conn.execute(
        f"UPDATE cf_broker_message SET reserved_by = NULL WHERE reserved_by IN ({m})", dead
    )
    conn.execute(f"DELETE FROM cf_broker_consumer WHERE id IN ({m})", dead)
    # By "no live owner" rather than "owned by dead": also catches a binding made by a
    # consumer in the instant after it was judged dead.
    orphan = "owner NOT IN (SELECT id FROM cf_broker_consumer)"
    conn.execute(
        f"DELETE FROM cf_broker_message WHERE queue IN"
        f" (SELECT queue FROM cf_broker_binding WHERE {orphan}) AND queue NOT IN"
        f" (SELECT queue FROM cf_broker_binding WHERE owner IS NULL OR NOT ({orphan}))"
    )
    conn.execute(f"DELETE FROM cf_broker_binding WHERE {orphan}")


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
        self.sweep()
        with write(options) as conn:
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
                self._beat()
                self.sweep()
                self._beats += 1
                if self._beats % 30 == 0:
                    _vacuum(self.options)
            except Exception:  # the thread must outlive any one failure, or we look dead
                logger.warning("celeryflow broker heartbeat failed", exc_info=True)

    def _beat(self) -> None:
        beat = "UPDATE cf_broker_consumer SET heartbeat = ? WHERE id = ?"
        if execute(self.options, beat, (time.time(), self.id))[1]:
            return
        # Another process judged us dead (we were frozen longer than heartbeat_timeout)
        # and gave our messages back: rejoin under the same id and take back whatever
        # nobody else has taken yet, so that a held ETA message does not run twice.
        held = [(self.id, tag) for ch in list(self.channels) for tag in ch.held()]
        with write(self.options) as conn:
            conn.execute(
                "INSERT OR REPLACE INTO cf_broker_consumer (id, host, pid, heartbeat)"
                " VALUES (?, ?, ?, ?)",
                (self.id, socket.gethostname(), self.pid, time.time()),
            )
            conn.executemany(
                "UPDATE cf_broker_message SET reserved_by = ? WHERE id = ? AND reserved_by IS NULL",
                held,
            )
            conn.executemany(_BIND, [(*key, pat, self.id) for key, pat in self.bindings.items()])
        logger.warning("celeryflow broker: consumer %s was declared dead and rejoined", self.id)

    def sweep(self) -> None:
        cutoff = time.time() - self.options.heartbeat_timeout
        query = "SELECT id FROM cf_broker_consumer WHERE heartbeat < ?"
        # A read first, so that the common case (nobody died) takes no write lock.
        if not execute(self.options, query + " LIMIT 1", (cutoff,))[0]:
            return
        with write(self.options) as conn:
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
            with write(self.options) as conn:
                _release(conn, [self.id])
        except sqlite3.Error:
            logger.warning("celeryflow broker: could not release consumer %s", self.id)


def _vacuum(options: Options) -> None:
    # Returns space after a burst; a no-op unless the file was created with
    # auto_vacuum=INCREMENTAL. Keeps some free pages for the next burst.
    free = execute(options, "PRAGMA freelist_count")[0][0][0]
    if free > 1024:
        execute(options, f"PRAGMA incremental_vacuum({min(free - 256, 4096)})")


_members: dict[tuple[int, str], Member] = {}


def member(options: Options) -> Member:
    key = (os.getpid(), options.path)
    found = _members.get(key)
    if found is None:
        with _guard:
            found = _members.get(key)
            if found is None:
                found = _members[key] = Member(options)
    return found


class QoS(virtual.QoS):
    """Unacked messages are reserved rows: restoring un-reserves them, never copies."""

    channel: Channel

    def reject(self, delivery_tag: int, requeue: bool = False) -> None:
        self.channel._settle([delivery_tag], requeue=requeue)
        self._quick_ack(delivery_tag)

    def restore_unacked(self) -> list[tuple[BaseException, Any]]:
        self._flush()  # type: ignore[no-untyped-call]
        tags = list(self._delivered)
        self._delivered.clear()
        if tags:
            try:
                self.channel._settle(tags, requeue=True)
            except sqlite3.Error:
                # Still reserved by us: the sweep gives them back once we are gone.
                logger.warning("celeryflow broker: could not requeue %d messages", len(tags))
        return []


class Channel(virtual.Channel):
    QoS = QoS
    supports_fanout = True

    def __init__(self, connection: Transport, **kwargs: Any) -> None:
        # Kept here because kombu drops channel.connection on close, before the QoS
        # finalizer may still need the database.
        self.options: Options = connection.options
        self._noack: set[str] = set()
        self._auto_delete: set[str] = set()
        super().__init__(connection, **kwargs)  # type: ignore[no-untyped-call]

    def _member(self) -> Member:
        found = member(self.options)
        found.channels.add(self)
        return found

    def held(self) -> list[int]:
        try:
            return list(self._qos._delivered) if self._qos is not None else []
        except RuntimeError:  # resized by the consuming thread; the next beat will do
            return []

    # -- queues and bindings (kept in the file, so every process sees them) --------

    def _new_queue(self, queue: str, auto_delete: bool = False, **kwargs: Any) -> None:
        if auto_delete:
            self._auto_delete.add(queue)

    def _queue_bind(self, exchange: str, routing_key: str, pattern: Any, queue: str) -> None:
        key, owner = (exchange, routing_key or "", queue), None
        if queue in self._auto_delete:
            found = self._member()
            found.bindings[key], owner = pattern, found.id
        execute(self.options, _BIND, (*key, pattern, owner))

    def queue_unbind(
        self,
        queue: Any,
        exchange: Any = None,
        routing_key: Any = "",
        arguments: Any = None,
        **kwargs: Any,
    ) -> Any:
        super().queue_unbind(queue, exchange, routing_key, arguments, **kwargs)  # type: ignore[no-untyped-call]
        execute(
            self.options,
            "DELETE FROM cf_broker_binding WHERE exchange = ? AND routing_key = ? AND queue = ?",
            (exchange or "amq.direct", routing_key or "", queue),
        )

    def get_table(self, exchange: str) -> list[tuple[str, str | None, str]]:
        sql = "SELECT routing_key, pattern, queue FROM cf_broker_binding WHERE exchange = ?"
        return [tuple(row) for row in execute(self.options, sql, (exchange,))[0]]

    def _delete(self, queue: str, *args: Any, **kwargs: Any) -> None:
        with write(self.options) as conn:
            conn.execute("DELETE FROM cf_broker_binding WHERE queue = ?", (queue,))
            conn.execute(
                "DELETE FROM cf_broker_message WHERE queue = ? AND reserved_by IS NULL", (queue,)
            )
        self._auto_delete.discard(queue)
        if found := _members.get((os.getpid(), self.options.path)):
            for key in [k for k in found.bindings if k[2] == queue]:
                found.bindings.pop(key, None)

    def _purge(self, queue: str) -> int:
        sql = "DELETE FROM cf_broker_message WHERE queue = ? AND reserved_by IS NULL"
        return execute(self.options, sql, (queue,))[1]

    def _size(self, queue: str) -> int:
        sql = "SELECT count(*) FROM cf_broker_message WHERE queue = ? AND reserved_by IS NULL"
        return int(execute(self.options, sql, (queue,))[0][0][0])

    # -- publishing ----------------------------------------------------------------

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        sql = "INSERT INTO cf_broker_message (queue, payload) VALUES (?, ?)"
        execute(self.options, sql, (queue, dumps(message)))

    def _put_fanout(
        self, exchange: str, message: dict[str, Any], routing_key: str, **kwargs: Any
    ) -> None:
        sql = (
            "INSERT INTO cf_broker_message (queue, payload)"
            " SELECT DISTINCT queue, ? FROM cf_broker_binding WHERE exchange = ?"
        )
        execute(self.options, sql, (dumps(message), exchange))

    # -- consuming -----------------------------------------------------------------

    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any) -> Any:
        if no_ack:
            self._noack.add(queue)
        else:
            self._noack.discard(queue)
            self._member()  # join now: a worker that starts after a crash recovers at once
        return super().basic_consume(queue, no_ack, *args, **kwargs)  # type: ignore[no-untyped-call]

    def basic_cancel(self, consumer_tag: str) -> Any:
        self._noack.discard(self._tag_to_queue.get(consumer_tag, ""))
        return super().basic_cancel(consumer_tag)  # type: ignore[no-untyped-call]

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        try:
            message = self.Message(self._fetch(queue, no_ack), channel=self)  # type: ignore[no-untyped-call]
        except Empty:
            return None
        if not no_ack:
            self.qos.append(message, message.delivery_tag)
        return message

    def _get(self, queue: str, timeout: float | None = None) -> dict[str, Any]:
        return self._fetch(queue, queue in self._noack)

    def _fetch(self, queue: str, no_ack: bool) -> dict[str, Any]:
        # Idle polling is a read: it takes no write lock, so it never delays publishers.
        if not execute(self.options, _PEEK, (queue,))[0]:
            raise Empty()
        owner = None if no_ack else self._member().id
        # BEGIN IMMEDIATE serialises competing fetchers: no two get the same row. A
        # no_ack consumer (pidbox, replies) will never ack, so its row goes at once.
        with write(self.options) as conn:
            rows = conn.execute(_NEXT, (queue,)).fetchall()
            if rows and no_ack:
                conn.execute("DELETE FROM cf_broker_message WHERE id = ?", (rows[0][0],))
            elif rows:
                # Only while our consumer row exists (we may have just been judged dead):
                # a reservation with no consumer row behind it would never be swept.
                reserve = (
                    "UPDATE cf_broker_message SET reserved_by = ? WHERE id = ?"
                    " AND EXISTS (SELECT 1 FROM cf_broker_consumer WHERE id = ?)"
                )
                if not conn.execute(reserve, (owner, rows[0][0], owner)).rowcount:
                    rows = []
        if not rows:
            raise Empty()
        payload: dict[str, Any] = loads(rows[0][1])
        # The row id is the delivery tag: ack and requeue address the row directly.
        payload["properties"]["delivery_tag"] = rows[0][0]
        return payload

    def basic_ack(self, delivery_tag: int, multiple: bool = False) -> None:
        self._settle([delivery_tag], requeue=False)
        super().basic_ack(delivery_tag, multiple)  # type: ignore[no-untyped-call]

    def _settle(self, tags: list[int], requeue: bool) -> None:
        """Delete (ack/reject) or un-reserve (requeue) rows this process holds.

        Guarded by ``reserved_by``: once a row was given back and taken by someone
        else, our late ack must not delete their message.
        """
        found = _members.get((os.getpid(), self.options.path))
        if found is None:
            return
        if requeue:
            sql = "UPDATE cf_broker_message SET reserved_by = NULL WHERE reserved_by = ? AND id = ?"
        else:
            sql = "DELETE FROM cf_broker_message WHERE reserved_by = ? AND id = ?"
        if len(tags) == 1:
            execute(self.options, sql, (found.id, tags[0]))
        else:
            with write(self.options) as conn:
                conn.executemany(sql, [(found.id, tag) for tag in tags])

    def _restore(self, message: Any) -> None:
        self._settle([message.delivery_tag], requeue=True)

    def _restore_at_beginning(self, message: Any) -> None:
        self._restore(message)


class Transport(virtual.Transport):
    """``celeryflow+sqlite:///path.db``; options via the URL query or transport options:

    ``polling_interval`` (0.1 s), ``heartbeat_interval`` (2 s), ``heartbeat_timeout``
    (15 s: a process silent this long is dead and its messages come back),
    ``busy_timeout`` (30 s).
    """

    Channel = Channel
    can_parse_url = True
    driver_type = "sqlite"
    driver_name = "sqlite3"
    polling_interval = 0.1
    # kombu reconnects (and retries publishes) on these; "database is locked" is one.
    connection_errors = (*virtual.Transport.connection_errors, sqlite3.OperationalError)  # type: ignore[assignment]
    implements = virtual.Transport.implements.extend(
        exchange_type=frozenset(["direct", "topic", "fanout"])
    )

    def __init__(self, client: Any, **kwargs: Any) -> None:
        hostname = client.hostname or ""
        path, query = parse_location(hostname if "://" in hostname else f"sqlite:///{hostname}")
        opts: dict[str, Any] = {**query, **(client.transport_options or {})}
        knobs = ("busy_timeout", "heartbeat_interval", "heartbeat_timeout")
        self.options = Options(
            os.path.abspath(path), *(float(opts.get(k, getattr(Options, k))) for k in knobs)
        )
        if self.options.heartbeat_timeout < 2 * self.options.heartbeat_interval:
            raise ValueError("heartbeat_timeout must be at least twice heartbeat_interval")
        super().__init__(client, **kwargs)  # type: ignore[no-untyped-call]
        self.polling_interval = float(opts.get("polling_interval", type(self).polling_interval))

    def establish_connection(self) -> Any:
        with _guard:
            connect(self.options)  # surface a bad path or a locked file at connect time
        return super().establish_connection()  # type: ignore[no-untyped-call]

    def driver_version(self) -> str:
        return sqlite3.sqlite_version
