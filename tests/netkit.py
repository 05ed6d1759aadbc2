"""Network helpers for tests of unreachable stores: a closed port, a server that
accepts connections and never answers (a database that hangs), and a proxy that turns
into one (a database that stops answering on connections it already has)."""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from collections.abc import Iterator

__all__ = ["BlackHoleProxy", "ClosingServer", "closed_port", "silent_server"]


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A TCP server on a free port that accepts every connection and never sends a
    byte; yields the port. Connections are closed when the block ends."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    server.settimeout(0.2)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            accepted.append(conn)

    thread = threading.Thread(target=serve, name="silent-server", daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()
        for conn in accepted:
            conn.close()


class ClosingServer:
    """A TCP server on a free port that closes every connection at once, counting them."""

    def __init__(self) -> None:
        self.accepted = 0
        self._server = socket.socket()
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(64)
        self._server.settimeout(0.2)
        self.port = int(self._server.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="closing-server", daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.close()
            self.accepted += 1

    def __enter__(self) -> ClosingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._server.close()


class BlackHoleProxy:
    """A TCP proxy to ``127.0.0.1:target``. ``black_hole()`` makes it a server that
    accepts connections and never answers: nothing is forwarded any more, in either
    direction, on old or new connections. ``heal()`` forwards *new* connections again;
    the connections caught in the hole stay silent for good, as after a lost NAT entry
    or a database fail-over behind a stale address."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = closed_port()
        self._holed = False
        self._lock = threading.Lock()
        self._pairs: dict[socket.socket, socket.socket] = {}
        self._dead: set[socket.socket] = set()
        self._selector = selectors.DefaultSelector()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.setblocking(False)
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="black-hole-proxy", daemon=True)

    def __enter__(self) -> BlackHoleProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopped = True
        self._thread.join(5)
        for sock in [*self._pairs, *self._dead, self._listener]:
            with contextlib.suppress(OSError):
                sock.close()

    def black_hole(self) -> None:
        with self._lock:
            self._holed = True
            for sock in list(self._pairs):
                self._selector.unregister(sock)
                self._dead.add(sock)
            self._pairs.clear()

    def heal(self) -> None:
        with self._lock:
            self._holed = False

    def _accept(self) -> None:
        client, _ = self._listener.accept()
        if self._holed:
            self._dead.add(client)  # accepted, never answered
            return
        try:
            server = socket.create_connection(("127.0.0.1", self.target), timeout=5)
        except OSError:
            client.close()
            return
        for sock in (client, server):
            sock.setblocking(False)
            self._selector.register(sock, selectors.EVENT_READ)
        self._pairs[client] = server
        self._pairs[server] = client

    def _forward(self, sock: socket.socket) -> None:
        peer = self._pairs.get(sock)
        if peer is None:
            return
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            try:
                peer.setblocking(True)
                peer.sendall(data)
                peer.setblocking(False)
                return
            except OSError:
                pass
        for end in (sock, peer):
            self._pairs.pop(end, None)
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(end)
            end.close()

    def _loop(self) -> None:
        while not self._stopped:
            for key, _ in self._selector.select(timeout=0.2):
                with self._lock:
                    sock = key.fileobj
                    if sock is self._listener:
                        self._accept()
                    elif sock in self._pairs:
                        self._forward(sock)  # type: ignore[arg-type]
