"""The ``celeryflow`` command, run as users run it (a subprocess of the installed
script): the store of ``-A app`` or ``--store``, one-line errors, run-id prefixes,
what ``migrate`` did, ``--version``, and timeouts against a silent database."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest
import sqlalchemy as sa
from celery import Celery
from netkit import closed_port, silent_server

from celeryflow import Event, Flow, event
from celeryflow.store.migrate import head_revision, upgrade

CLI = str(Path(sys.executable).with_name("celeryflow"))

APP = """
import os
from celery import Celery
from celeryflow import Flow, event

app = Celery("cli_app", broker="celeryflow+sqlite:///" + os.environ["CF_DIR"] + "/broker.db")
flow = Flow(app, store=os.environ["CF_TEST_STORE"], connect_timeout="2s")


@flow.function(id="greet", trigger=event("cli/greet"))
def greet(ctx):
    return "hi"
"""


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in ("CELERYFLOW_STORE", "CELERY_APP", "CF_TEST_STORE")
    }
    return subprocess.run(
        [CLI, *args],
        cwd=cwd,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert result.stdout == ""
    return lines[0]


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "cli_app.py").write_text(APP)
    return tmp_path


def app_env(app_dir: Path, store: str) -> dict[str, str]:
    return {"CF_DIR": str(app_dir), "CF_TEST_STORE": store}


def test_version_names_the_distribution() -> None:
    result = run_cli("--version", cwd=Path.cwd())
    assert result.returncode == 0, result.stderr
    name, version = result.stdout.split()
    assert name in metadata.packages_distributions()["celeryflow"]
    assert version == metadata.version(name)


def test_without_app_or_store_it_says_so_and_creates_nothing(tmp_path: Path) -> None:
    result = run_cli("runs", cwd=tmp_path)
    assert result.returncode == 2
    assert "no store given: pass -A/--app" in one_line_error(result)
    assert list(tmp_path.iterdir()) == []


def test_reading_a_sqlite_store_that_is_not_there_creates_nothing(tmp_path: Path) -> None:
    result = run_cli("--store", "sqlite:///celeryflow.db", "runs", cwd=tmp_path)
    assert "does not exist" in one_line_error(result)
    assert list(tmp_path.iterdir()) == []


def test_app_option_uses_the_apps_store_and_prefixes_find_runs(app_dir: Path) -> None:
    store = f"sqlite:///{app_dir}/store.db"
    broker = f"celeryflow+sqlite:///{app_dir}/broker.db"
    flow = Flow(Celery("cli-sender", broker=broker), store=store)

    @flow.function(id="greet", trigger=event("cli/greet"))
    def greet(ctx: object) -> str:
        return "hi"

    flow.send([Event(name="cli/greet", data={"n": n}) for n in range(3)])
    ids = [r.id for r in flow.list_runs(function_id="greet")]
    env = app_env(app_dir, store)

    listed = run_cli("-A", "cli_app", "runs", cwd=app_dir, env=env)
    assert listed.returncode == 0, listed.stderr
    [header, *lines] = listed.stdout.splitlines()
    assert header.split()[:3] == ["RUN", "FUNCTION", "STATUS"]
    assert sorted(line.split()[0] for line in lines) == sorted(ids)
    # CELERY_APP works as for `celery`
    also = run_cli("runs", "--status", "queued", cwd=app_dir, env={**env, "CELERY_APP": "cli_app"})
    assert also.stdout == listed.stdout

    # the shortest prefix that tells one run from the others
    target = ids[0]
    size = next(n for n in range(1, len(target)) if sum(i.startswith(target[:n]) for i in ids) == 1)
    shown = run_cli("-A", "cli_app", "run", "--json", target[:size], cwd=app_dir, env=env)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["id"] == target

    common = ids[0][:1]
    while all(i.startswith(ids[0][: len(common) + 1]) for i in ids):
        common = ids[0][: len(common) + 1]
    ambiguous = run_cli("-A", "cli_app", "run", common, cwd=app_dir, env=env)
    assert f"matches {len(ids)} runs" in one_line_error(ambiguous)


@pytest.mark.parametrize(
    ("args", "says", "code"),
    [
        (["run", "0123abcd"], "no run with id '0123abcd'", 1),
        (["runs", "--status", "done"], "--status 'done' is not a run state", 2),
        (["--store", "postgres://db/shop", "runs"], "use postgresql+psycopg://db/shop", 1),
        (["--store", "sqlite://store.db", "runs"], "use sqlite:///store.db", 1),
        (["-A", "no_such_module", "runs"], "no module named 'no_such_module'", 1),
        (["-A", "json", "runs"], "-A json: no Celery app there", 1),
        (["cancel"], "give a RUN_ID or a filter", 2),
        (["cancel", "--function", "greet", "--status", "completed"], "cancelled only from", 2),
    ],
)
def test_errors_are_one_line(app_dir: Path, args: list[str], says: str, code: int) -> None:
    store = f"sqlite:///{app_dir}/store.db"
    Flow(Celery("cli-err"), store=store).store.migrate()
    result = run_cli(*args, cwd=app_dir, env={"CELERYFLOW_STORE": store})
    assert says in one_line_error(result)
    assert result.returncode == code


def test_an_unreachable_store_is_one_line(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{closed_port()}/shop"
    result = run_cli("--store", url, "runs", cwd=tmp_path)
    assert "cannot connect to the celeryflow store at" in one_line_error(result)


def test_migrate_says_what_it_did(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    head = head_revision()
    created = run_cli("migrate", "--store", url, cwd=tmp_path)
    assert created.stdout.strip() == f"created the celeryflow store at {url}, at revision {head}"
    again = run_cli("--store", url, "migrate", cwd=tmp_path)
    assert again.stdout.strip() == f"the celeryflow store at {url} is already at revision {head}"

    older = f"sqlite:///{tmp_path}/older.db"
    engine = sa.create_engine(older)
    upgrade(engine, "0003")
    engine.dispose()
    upgraded = run_cli("migrate", "--store", older, cwd=tmp_path)
    assert upgraded.stdout.strip() == (
        f"upgraded the celeryflow store at {older} from revision 0003 to {head}"
    )


def test_migrate_on_postgres(postgres_store_url: str, tmp_path: Path) -> None:
    created = run_cli("migrate", "--store", postgres_store_url, cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    assert re.search(r"^created the celeryflow store at .* at revision \w+$", created.stdout)
    again = run_cli("migrate", "--store", postgres_store_url, cwd=tmp_path)
    assert "is already at revision" in again.stdout


def test_migrate_against_a_silent_database_fails_within_the_connect_timeout(
    app_dir: Path,
) -> None:
    with silent_server() as port:
        env = app_env(app_dir, f"postgresql+psycopg://postgres@127.0.0.1:{port}/shop")
        started = time.monotonic()
        result = run_cli("-A", "cli_app", "migrate", cwd=app_dir, env=env)
        took = time.monotonic() - started
    line = one_line_error(result)
    assert "within the connect_timeout (2s)" in line
    assert f"127.0.0.1:{port}/shop" in line
    assert took < 20
