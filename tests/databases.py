"""A fresh PostgreSQL database for one test or one benchmark run: created under a
unique name, dropped after with ``WITH (FORCE)`` (PostgreSQL >= 13), which terminates
connections left open (an engine's pool), so a forgotten ``engine.dispose()`` cannot
block the drop. Nothing but that database is ever dropped.

Used by tests/services.py and bench/common.py; needs only ``psycopg``.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from typing import Any

__all__ = ["fresh_postgres_database"]


@contextlib.contextmanager
def fresh_postgres_database(admin: str, prefix: str) -> Iterator[str]:
    """Create database ``<prefix>_<12 hex>`` through ``admin`` (a libpq connection
    string to the server's ``postgres`` database); yield its name; drop it after."""
    import psycopg

    name = f"{prefix}_{secrets.token_hex(6)}"

    def connect() -> Any:
        return psycopg.connect(admin, autocommit=True, connect_timeout=5)

    with connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
