"""The wheel users install: its distribution name, and the files the package needs at run
time (migrations, py.typed, the CLI entry point)."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from wheels import ROOT, build_wheel


def test_wheel_is_celeryflow_engine_with_migrations_and_py_typed(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    assert wheel.name.startswith("celeryflow_engine-"), wheel.name
    assert wheel.name.endswith("-py3-none-any.whl"), wheel.name
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        dist_info = wheel.name.split("-py3-")[0] + ".dist-info"
        meta = Parser().parsestr(zf.read(f"{dist_info}/METADATA").decode())
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()
    assert meta["Name"] == "celeryflow-engine"
    assert set(meta.get_all("Provides-Extra") or []) >= {
        "redis",
        "postgres",
        "mysql",
        "django",
        "flask",
        "fastapi",
        "dashboard",
    }
    requires = meta.get_all("Requires-Dist") or []
    # kombu's Redis transport needs more than `redis` (.ci/check_extras.py installs each)
    assert any(r.startswith("kombu[redis]") and 'extra == "redis"' in r for r in requires)
    # the import package keeps its name, and so does the CLI
    assert "celeryflow/__init__.py" in names
    assert "celeryflow = celeryflow.cli:main" in entry_points
    assert "celeryflow/py.typed" in names
    assert "celeryflow/store/migrations/env.py" in names
    # the dashboard's templates and static files ship with it
    for folder in ("templates", "static"):
        shipped = sorted(p.name for p in (ROOT / "celeryflow/dashboard" / folder).iterdir())
        assert shipped and all(f"celeryflow/dashboard/{folder}/{n}" in names for n in shipped)
    versions = sorted(p.name for p in (ROOT / "celeryflow/store/migrations/versions").glob("*.py"))
    assert versions, "no migration scripts in the source tree"
    for name in versions:
        assert f"celeryflow/store/migrations/versions/{name}" in names


USER_CODE = """\
from celeryflow import Event, Flow


def send(flow: Flow) -> list[str]:
    return flow.send(Event(name="user/signed_up"))
"""


def test_the_installed_package_is_visible_to_mypy(tmp_path: Path) -> None:
    """`pip install -e .` must not hide the package from mypy behind an import hook
    (pyproject: [tool.distutils.editable_wheel] mode = "compat"). Run from outside the
    repository, as a user's project would."""
    # asked from outside the repository: its own *.egg-info would answer otherwise
    probe = "from importlib.metadata import distribution as d;"
    probe += "print(d('celeryflow-engine').read_text('direct_url.json') or '{}')"
    found = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    if not json.loads(found.stdout).get("dir_info", {}).get("editable"):
        pytest.skip("celeryflow-engine is not installed editable here (.ci/run installs it so)")
    (tmp_path / "user.py").write_text(USER_CODE)
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache"),
         "user.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
