"""A TCP proxy in front of a real service, to take the service away from a test's
workers and give it back (a network cut, a failover) without touching the server
that other tests share."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to ``upstream``. ``cut()`` drops every live
    connection and refuses new ones until ``restore()``. ``refuse``: a test of what a
    client sends; a chunk it refuses is not forwarded and its connection is dropped
    (``refused`` counts them)."""

    def __init__(
        self, upstream: tuple[str, int], refuse: Callable[[bytes], bool] | None = None
    ) -> None:
        self.upstream = upstream
        self.refuse = refuse
        self.refused = 0
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port: int = probe.getsockname()[1]
        probe.close()
        self._lock = threading.Lock()
        self._live: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        with self._lock:
            if self._listener is not None:
                return
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            listener.listen(64)
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            live, self._live = self._live, []
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for sock in live:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    server.close()
                    return
                self._live += [client, server]
            for a, b, check in ((client, server, self.refuse), (server, client, None)):
                threading.Thread(target=self._pump, args=(a, b, check), daemon=True).start()

    def _pump(
        self, source: socket.socket, sink: socket.socket, check: Callable[[bytes], bool] | None
    ) -> None:
        try:
            while data := source.recv(65536):
                if check is not None and check(data):
                    with self._lock:
                        self.refused += 1
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def tcp_proxy(
    upstream: tuple[str, int], refuse: Callable[[bytes], bool] | None = None
) -> Iterator[TcpProxy]:
    proxy = TcpProxy(upstream, refuse)
    try:
        yield proxy
    finally:
        proxy.cut()
