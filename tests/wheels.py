"""Build celeryflow's wheel from a copy of the source tree (the repo stays untouched).

Used by tests/test_packaging.py and by the clean-venv extras check (`.ci/check_extras`).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["DIST_NAME", "EXTRAS", "ROOT", "build_wheel"]

ROOT = Path(__file__).resolve().parent.parent
DIST_NAME = "celeryflow-engine"
# Every extra a user installs (dev is for this repository only).
EXTRAS = (
    "redis",
    "postgres",
    "mysql",
    "django",
    "flask",
    "fastapi",
    "prometheus",
    "otel",
    "dashboard",
)


def build_wheel(dest: Path) -> Path:
    """Copy what the build needs into `dest`/src (setuptools writes build/ and *.egg-info
    beside the sources) and build the wheel into `dest`; return its path."""
    src = dest / "src"
    src.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "celeryflow",
        src / "celeryflow",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"),
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dest), str(src)],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    (wheel,) = dest.glob("*.whl")
    return wheel


if __name__ == "__main__":
    print(build_wheel(Path(sys.argv[1])))
