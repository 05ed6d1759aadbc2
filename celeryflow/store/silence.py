"""A client-side bound on every PostgreSQL statement, for a server that went silent.

PostgreSQL's ``statement_timeout`` is enforced by the server: a server (or a proxy, a
NAT entry, a fail-over behind a stale address) that accepts connections and then
answers nothing never cancels anything, and the client waits for good. TCP does not
notice either: ``tcp_user_timeout`` and keepalives only catch *unacknowledged* data,
and a proxy or a half-dead host acknowledges everything. So celeryflow bounds each
wait for the server on its own side.

psycopg 3 funnels every wait for the server of an open connection (a statement,
fetching its rows, a commit or rollback, a ping) through ``Connection.wait``; the
connections a store opens are of a subclass whose ``wait`` registers with one watchdog
thread per process. A wait still pending past its bound (the statement timeout plus a
margin, so the server's own cancel normally comes first) has its socket shut down:
the wait returns at once with an error, the connection is discarded, and the caller
gets :class:`~celeryflow.errors.StoreUnavailable` (an infrastructure error: a run's
attempt is not counted). Opening a connection is bounded by ``connect_timeout``,
which psycopg enforces itself. MySQL/MariaDB need none of this: pymysql's
``read_timeout``/``write_timeout`` are already client-side socket timeouts.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

__all__ = ["TICK", "bounded_connection_class", "client_bound", "limited"]

# How often the watchdog looks: a stuck wait ends at most this late after its bound.
TICK = 0.25


def client_bound(statement_timeout: float | None) -> float | None:
    """The client's bound for a statement whose server-side timeout is
    ``statement_timeout``: later than the server's cancel, so a live server's own
    timeout error wins; None (no limit) stays None."""
    if statement_timeout is None:
        return None
    return statement_timeout + max(1.0, statement_timeout * 0.1)


class _Wait:
    """One pending wait: the socket to shut down once ``deadline`` passes."""

    __slots__ = ("bound", "deadline", "expired", "fd")

    def __init__(self, fd: int, bound: float) -> None:
        self.fd = fd
        self.bound = bound
        self.deadline = time.monotonic() + bound
        self.expired = False


class _Watchdog:
    """The process's watchdog thread and its pending waits. A wait is registered and
    removed under the lock, and the socket is shut down under it too: while a wait is
    registered its connection is inside ``wait``, so the descriptor is still its own."""

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        # a forked child has none of the parent's threads, and its copy of the lock
        # may have been taken by one of them at the fork
        self._lock = threading.Lock()
        self._waits: set[_Wait] = set()
        self._thread: threading.Thread | None = None

    def enter(self, fd: int, bound: float) -> _Wait:
        wait = _Wait(fd, bound)
        with self._lock:
            self._waits.add(wait)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="celeryflow-store-watchdog", daemon=True
                )
                self._thread.start()
        return wait

    def leave(self, wait: _Wait) -> None:
        with self._lock:
            self._waits.discard(wait)

    def _loop(self) -> None:
        lock, waits = self._lock, self._waits
        while lock is self._lock:  # a fork replaced them: this is a stale thread
            time.sleep(TICK)
            now = time.monotonic()
            with lock:
                for wait in waits:
                    if not wait.expired and wait.deadline <= now:
                        wait.expired = True
                        _shut_down(wait.fd)


def _shut_down(fd: int) -> None:
    # shutdown() acts on the socket, not the descriptor: a duplicate will do, and the
    # connection's own descriptor stays open until psycopg closes it
    with contextlib.suppress(OSError):
        sock = socket.socket(fileno=os.dup(fd))
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.close()


_WATCHDOG = _Watchdog()

_classes: dict[type, type] = {}


def bounded_connection_class(base: type, error: type[Exception]) -> Any:
    """A subclass of psycopg's ``Connection`` class ``base`` whose waits for the
    server end, past ``cf_bound`` seconds (None: no bound), with ``error`` (psycopg's
    ``OperationalError``) saying so."""
    cls = _classes.get(base)
    if cls is not None:
        return cls

    class BoundedConnection(base):  # type: ignore[misc]
        cf_bound: float | None = None

        def wait(self, gen: Any, *args: Any, **kwargs: Any) -> Any:
            bound = self.cf_bound
            if bound is None:
                return super().wait(gen, *args, **kwargs)
            wait = _WATCHDOG.enter(self.pgconn.socket, bound)
            try:
                return super().wait(gen, *args, **kwargs)
            except Exception as exc:
                if wait.expired:
                    raise error(
                        f"timed out: no answer from the server within {wait.bound:g}s "
                        "(celeryflow closed the connection)"
                    ) from exc
                raise
            finally:
                _WATCHDOG.leave(wait)

    _classes[base] = BoundedConnection
    return BoundedConnection


@contextlib.contextmanager
def limited(dbapi_connection: Any, bound: float | None) -> Iterator[None]:
    """Within the block, ``dbapi_connection``'s waits have the bound ``bound`` instead
    (a ping: a live server answers one at once). No-op for other connections."""
    if bound is None or not hasattr(dbapi_connection, "cf_bound"):
        yield
        return
    before = dbapi_connection.cf_bound
    dbapi_connection.cf_bound = bound if before is None else min(bound, before)
    try:
        yield
    finally:
        dbapi_connection.cf_bound = before
