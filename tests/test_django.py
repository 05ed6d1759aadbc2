"""A real Django project (tests/django_project: PostgreSQL, pytest-django,
CELERY_TASK_ALWAYS_EAGER=True) runs its own tests with celeryflow's pytest plugin.

In a subprocess: Django is configured once per process, and this suite's process
configures it for the ingest tests. The project's development database is created
here, empty, and must still be empty afterwards: its tests used the test database."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
from services import POSTGRES_USER, SERVICES, _database_name, require

PROJECT = Path(__file__).parent / "django_project"


def admin() -> psycopg.Connection[tuple[object, ...]]:
    svc = SERVICES["postgres"]
    return psycopg.connect(
        host=svc.host, port=svc.port, user=POSTGRES_USER, dbname="postgres", autocommit=True
    )


def databases_named(*names: str) -> list[str]:
    with admin() as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname = ANY(%s)", (list(names),)
        ).fetchall()
    return [str(row[0]) for row in rows]


def tables_in(name: str) -> list[str]:
    svc = SERVICES["postgres"]
    with psycopg.connect(host=svc.host, port=svc.port, user=POSTGRES_USER, dbname=name) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    return [str(row[0]) for row in rows]


def test_django_projects_eager_tests_pass_on_the_test_database(tmp_path: Path) -> None:
    require("postgres")
    name = _database_name()
    test_name = f"test_{name}"
    with admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # the developer's database
    try:
        env = {
            **os.environ,
            "SHOP_DB_NAME": name,
            "SHOP_DB_HOST": SERVICES["postgres"].host,
            "SHOP_DB_PORT": str(SERVICES["postgres"].port),
            "SHOP_BROKER_URL": f"celeryflow+sqlite:///{tmp_path / 'broker.db'}",
        }
        env.pop("CELERYFLOW_STORE", None)
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-c", "pytest.ini", "-q", "shop_tests.py"],
            cwd=PROJECT,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
        assert "10 passed" in done.stdout, done.stdout[-3000:]
        # nothing was written to the developer's database, and pytest-django dropped
        # the test database (celeryflow's connections to it were closed in time)
        assert tables_in(name) == []
        assert databases_named(test_name) == []
    finally:
        with admin() as conn:
            for db in (test_name, name):
                conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def test_core_and_plugin_import_no_django() -> None:
    """flow.py, testing and the pytest plugin add no Django import (celeryflow.django
    does); kombu.utils.json imports django.utils itself when installed."""
    code = (
        "import sys, celery, kombu.utils.json; before = set(sys.modules); "
        "import celeryflow, celeryflow.flow, celeryflow.testing, celeryflow.pytest_plugin; "
        "print(sorted(m for m in set(sys.modules) - before if m.split('.')[0] == 'django'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]"
