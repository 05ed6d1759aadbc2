"""A private ``redis-server`` for one test session or one benchmark run.

It listens on a free port of 127.0.0.1, keeps its files in a new temporary directory
and persists nothing (``--save '' --appendonly no``), so flushing its databases touches
nobody's data. Started as a child process with a parent-death signal (util-linux
``setpriv --pdeathsig``, when present), so it does not outlive a killed test run.

Used by tests/services.py and bench/common.py; needs only the ``redis`` client library.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["DATABASES", "DbLender", "RedisServer", "RedisServerError"]

START_TIMEOUT = 15.0  # seconds for the server to answer PING
DATABASES = 16


class RedisServerError(RuntimeError):
    """The private server could not be started; the message says why."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One running private server. :meth:`start` it, :meth:`stop` it (idempotent)."""

    host = "127.0.0.1"

    def __init__(self, process: subprocess.Popen[bytes], port: int, directory: Path) -> None:
        self.process = process
        self.port = port
        self.directory = directory

    def url(self, db: int = 0) -> str:
        return f"redis://{self.host}:{self.port}/{db}"

    @classmethod
    def start(cls, binary: str = "redis-server", attempts: int = 3) -> RedisServer:
        path = shutil.which(binary)
        if path is None:
            raise RedisServerError(
                f"{binary!r} not found on PATH: install Redis (e.g. apt-get install"
                " redis-server) or point the tests at a server you choose"
            )
        last = ""
        for _ in range(attempts):  # a free port may be taken between probe and bind
            directory = Path(tempfile.mkdtemp(prefix="cf-redis-"))
            port = _free_port()
            command = [
                path,
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(directory),
                "--logfile", str(directory / "redis.log"),
                "--databases", str(DATABASES),
                "--daemonize", "no",
            ]  # fmt: skip
            setpriv = shutil.which("setpriv")
            if setpriv is not None:
                command = [setpriv, "--pdeathsig", "TERM", *command]
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
            server = cls(process, port, directory)
            try:
                server._wait_ready()
            except RedisServerError as exc:
                last = str(exc)
                server.stop()
                continue
            atexit.register(server.stop)
            return server
        raise RedisServerError(f"private redis-server did not start: {last}")

    def _wait_ready(self) -> None:
        import redis

        deadline = time.monotonic() + START_TIMEOUT
        client = redis.Redis(host=self.host, port=self.port, socket_connect_timeout=1)
        try:
            while True:
                if self.process.poll() is not None:
                    raise RedisServerError(
                        f"exited with code {self.process.returncode}: {self._log_tail()}"
                    )
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise RedisServerError(
                            f"no answer on port {self.port} within {START_TIMEOUT:.0f}s:"
                            f" {self._log_tail()}"
                        ) from None
                    time.sleep(0.05)
        finally:
            client.close()

    def _log_tail(self) -> str:
        try:
            lines = (self.directory / "redis.log").read_text().strip().splitlines()
        except OSError:
            return "(no log)"
        return lines[-1] if lines else "(empty log)"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        shutil.rmtree(self.directory, ignore_errors=True)


class DbLender:
    """The dbs of a private server, each lent to one user at a time and FLUSHDB-ed
    before and after (the server is ours, so that touches nobody's data): the one
    protocol of tests/services.py and bench/common.py. ``url(db)`` names a db."""

    def __init__(self, url: Callable[[int], str], first: int = 0) -> None:
        self.url = url
        self.free = list(range(first, DATABASES))  # not lent right now

    @contextlib.contextmanager
    def lend(self) -> Iterator[int]:
        """A db nobody else holds now (RedisServerError when all are lent)."""
        import redis

        if not self.free:
            raise RedisServerError(f"all {DATABASES} dbs of the private Redis are in use")
        db = self.free.pop(0)
        client = redis.Redis.from_url(self.url(db), socket_timeout=10)
        try:
            client.flushdb()
            yield db
        finally:
            try:
                client.flushdb()
            finally:
                client.close()
                self.free.append(db)
