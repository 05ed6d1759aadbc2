"""The wheel users install: its distribution name, and the files the package needs at run
time (migrations, py.typed, the CLI entry point)."""

from __future__ import annotations

import zipfile
from email.parser import Parser
from pathlib import Path

from wheels import ROOT, build_wheel


def test_wheel_is_celeryflow_engine_with_migrations_and_py_typed(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    assert wheel.name.startswith("celeryflow_engine-"), wheel.name
    assert wheel.name.endswith("-py3-none-any.whl"), wheel.name
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        dist_info = wheel.name.split("-py3-")[0] + ".dist-info"
        metadata = Parser().parsestr(zf.read(f"{dist_info}/METADATA").decode())
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()
    assert metadata["Name"] == "celeryflow-engine"
    assert set(metadata.get_all("Provides-Extra") or []) >= {
        "redis",
        "postgres",
        "mysql",
        "django",
        "flask",
        "fastapi",
    }
    requires = metadata.get_all("Requires-Dist") or []
    # kombu's Redis transport needs more than `redis` (.ci/check_extras.py installs each)
    assert any(r.startswith("kombu[redis]") and 'extra == "redis"' in r for r in requires)
    # the import package keeps its name, and so does the CLI
    assert "celeryflow/__init__.py" in names
    assert "celeryflow = celeryflow.cli:main" in entry_points
    assert "celeryflow/py.typed" in names
    assert "celeryflow/store/migrations/env.py" in names
    versions = sorted(p.name for p in (ROOT / "celeryflow/store/migrations/versions").glob("*.py"))
    assert versions, "no migration scripts in the source tree"
    for name in versions:
        assert f"celeryflow/store/migrations/versions/{name}" in names
