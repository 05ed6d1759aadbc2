"""Private server instances for the fault suite: each on a free port, in a temp dir.

The faults *are* stopping, killing and restarting servers, so the suite never touches
the machine's shared services on the standard ports: every server here is started by
the suite, owned by it and removed by it. Each launcher is a context manager with
``start()``, ``stop()`` (clean), ``kill()`` (SIGKILL / immediate) and ``restart()``.

* :class:`PostgresInstance` -- ``initdb`` + ``pg_ctl``, run as the ``postgres`` user when
  the suite runs as root (PostgreSQL refuses to run as root).
* :class:`RedisInstance`    -- ``redis-server`` without persistence: a kill loses its data.
* :class:`MariaDBInstance`  -- ``mariadb-install-db`` + ``mariadbd``.
* :class:`RabbitMQInstance` -- ``rabbitmq-server`` as a node of its own (name, ports,
  data, logs, plugins and Erlang cookie in the temp dir); slow to start (10-20 s).
* :class:`BlackHoleProxy`   -- (from tests/netkit.py) a TCP proxy that can turn into a
  database that accepts connections and never answers.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from netkit import BlackHoleProxy

__all__ = [
    "BlackHoleProxy",
    "Instance",
    "MariaDBInstance",
    "PostgresInstance",
    "RabbitMQInstance",
    "RedisInstance",
    "free_port",
    "wait_port",
]

PG_BIN = Path(os.environ.get("CF_FAULTS_PG_BIN", "/usr/lib/postgresql/15/bin"))
START_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_port(port: int, timeout: float = START_TIMEOUT, proc: Any = None) -> None:
    """Until something accepts TCP connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"server on port {port} exited with {proc.returncode}") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing on 127.0.0.1:{port} after {timeout} s") from None
            time.sleep(0.1)


class Instance:
    """A server owned by the suite: a temp dir, a port, start/stop/kill/restart."""

    name = "server"

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix=f"cf-faults-{self.name}-", dir=root))
        self.port = free_port()
        self.log = self.root / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    # Subclasses implement these two; start() and stop() may be called again.
    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def kill(self) -> None:
        """SIGKILL the server's process group (a crash: nothing is flushed). The group,
        not the process: a wrapper script may have exited with the server still up."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        with contextlib.suppress(Exception):
            self.kill()
        shutil.rmtree(self.root, ignore_errors=True)

    def _spawn(self, command: list[str], env: dict[str, str] | None = None) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                start_new_session=True,  # our signals reach it; a Ctrl-C of pytest does not
            )

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def __enter__(self) -> Instance:
        try:
            self.start()
        except BaseException:
            print(f"--- {self.log} ---\n{self.log_tail()}")
            self.cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()


class PostgresInstance(Instance):
    """A private PostgreSQL cluster (trust auth, user ``postgres``)."""

    name = "postgres"

    def __init__(self, root: Path | None = None) -> None:
        super().__init__(root)
        self.data = self.root / "data"
        self.user = "postgres"
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._as_postgres(
            [str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
             "--no-sync", "-E", "UTF8"],
        )  # fmt: skip

    def _as_postgres(self, command: list[str], check: bool = True) -> None:
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        with open(self.log, "ab") as out:
            subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=check, timeout=120)

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
            " -c max_connections=300 -c fsync=off -c full_page_writes=off"
        )
        self._as_postgres(
            [str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", options, "-l",
             str(self.root / "server.log"), "-w", "-t", str(int(START_TIMEOUT)), "start"],
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """``fast`` (clean shutdown) or ``immediate`` (no checkpoint: crash recovery next)."""
        self._as_postgres(
            [str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"], check=False
        )

    def kill(self) -> None:
        self.stop("immediate")

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def cleanup(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, chars: int = 3000) -> str:
        server = self.root / "server.log"
        text = server.read_text(errors="replace") if server.exists() else ""
        return (super().log_tail(chars) + text)[-chars:]

    def url(self, database: str = "postgres", port: int | None = None) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{port or self.port}/{database}"

    def execute(self, sql: str) -> list[tuple[Any, ...]]:
        """One autocommit statement as superuser on database ``postgres``."""
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres",
            autocommit=True, connect_timeout=5,
        ) as conn:  # fmt: skip
            cur = conn.execute(sql.encode())
            return cur.fetchall() if cur.description else []

    def create_database(self) -> str:
        """A new database; returns its store URL."""
        name = f"cf_faults_{secrets.token_hex(4)}"
        self.execute(f"CREATE DATABASE {name}")
        return self.url(name)


class RedisInstance(Instance):
    """A private Redis without persistence: a kill and restart loses every message."""

    name = "redis"

    def start(self) -> None:
        self._spawn(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.root), "--protected-mode", "no"],
        )  # fmt: skip
        wait_port(self.port, proc=self.proc)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"


class MariaDBInstance(Instance):
    """A private MariaDB server (root without a password)."""

    name = "mariadb"

    def __init__(self, root: Path | None = None) -> None:
        super().__init__(root)
        self.data = self.root / "data"
        # A unix socket path is limited to 107 bytes, which pytest's temp dirs under
        # xdist (.../popen-gw1/test_.../) exceed: the socket gets a short dir of its own.
        self.socket_dir = Path(tempfile.mkdtemp(prefix="cfm-", dir="/tmp"))
        self.socket = self.socket_dir / "mysqld.sock"
        with open(self.log, "ab") as out:
            subprocess.run(
                ["mariadb-install-db", "--no-defaults", f"--datadir={self.data}", "--user=root",
                 "--auth-root-authentication-method=normal", "--skip-test-db"],
                stdout=out, stderr=subprocess.STDOUT, check=True, timeout=180,
            )  # fmt: skip

    def start(self) -> None:
        self._spawn(
            ["mariadbd", "--no-defaults", f"--datadir={self.data}", f"--port={self.port}",
             f"--socket={self.socket}", "--user=root", "--bind-address=127.0.0.1",
             f"--pid-file={self.root / 'mysqld.pid'}", "--skip-log-bin",
             "--innodb-flush-log-at-trx-commit=2", "--max-connections=300",
             "--innodb-buffer-pool-size=64M"],
        )  # fmt: skip
        wait_port(self.port, proc=self.proc)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def cleanup(self) -> None:
        super().cleanup()
        shutil.rmtree(self.socket_dir, ignore_errors=True)

    def url(self, database: str) -> str:
        return f"mysql+pymysql://root@127.0.0.1:{self.port}/{database}?charset=utf8mb4"

    def create_database(self) -> str:
        import pymysql

        name = f"cf_faults_{secrets.token_hex(4)}"
        conn = pymysql.connect(host="127.0.0.1", port=self.port, user="root", connect_timeout=5)
        try:
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE {name}")
        finally:
            conn.close()
        return self.url(name)


class RabbitMQInstance(Instance):
    """A private RabbitMQ node (user guest). ``wipe()`` deletes its data: a restart
    after it has lost every queue and message."""

    name = "rabbitmq"

    def __init__(self, root: Path | None = None) -> None:
        super().__init__(root)
        self.dist_port = free_port()
        self.node = f"cffaults{secrets.token_hex(4)}@localhost"
        (self.root / "enabled_plugins").write_text("[].\n")
        (self.root / "rabbitmq-env.conf").write_text("")
        self.env = {
            "HOME": str(self.root),  # a cookie of its own
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.root / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(self.root / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(self.root / "rabbitmq"),  # none: the defaults
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    def start(self) -> None:
        from kombu import Connection

        # The Debian wrapper would switch to the rabbitmq user; the node runs as us.
        self._spawn(["/usr/lib/rabbitmq/bin/rabbitmq-server"], env=self.env)
        wait_port(self.port, timeout=120, proc=self.proc)
        deadline = time.monotonic() + 60
        while True:  # the port opens before the broker takes logins
            try:
                with Connection(self.url(), connect_timeout=2) as conn:
                    conn.connect()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def wipe(self) -> None:
        """Delete the node's data (call while it is down)."""
        shutil.rmtree(self.root / "mnesia", ignore_errors=True)

    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"
