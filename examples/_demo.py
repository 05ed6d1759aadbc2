"""What every example does when run as a script: a store of its own, a real
``celery -A <example> worker`` beside it (no ``-B``: celeryflow needs no beat), the
demo, then a clean stop. Shared so the examples themselves show only the workflow."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent


def demo_dir(prefix: str) -> Path:
    """$CELERYFLOW_EXAMPLE_DIR (kept), else a new temporary directory (removed at exit),
    holding the store and the embedded broker beside it, so examples never share
    files. The worker started by :func:`run_demo` inherits the environment."""
    workdir = Path(os.environ.get("CELERYFLOW_EXAMPLE_DIR") or tempfile.mkdtemp(prefix=prefix))
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ["CELERYFLOW_STORE"] = f"sqlite:///{workdir / 'celeryflow.db'}"
    os.environ.pop("CELERY_BROKER_URL", None)
    return workdir


def run_demo(module: str, workdir: Path, demo: Callable[[], bool], concurrency: int = 2) -> int:
    """Start the worker for ``module``, run ``demo``, stop the worker; 0 if it passed
    (else the worker log's tail on stderr and 1)."""
    log = workdir / "worker.log"
    command = [
        *(sys.executable, "-m", "celery", "-A", module, "worker"),
        *("--loglevel", "INFO", "--concurrency", str(concurrency)),
    ]
    print(f"$ {' '.join(command[2:6])}   (store and log in {workdir})")
    ok = False
    try:
        with open(log, "wb") as out:
            worker = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=HERE)
        try:
            ok = demo()
        except Exception:
            traceback.print_exc()
        finally:
            worker.terminate()
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        if not ok:
            print(f"--- worker log ({log}), last lines ---", file=sys.stderr)
            print("\n".join(log.read_text().splitlines()[-80:]), file=sys.stderr)
        return 0 if ok else 1
    finally:
        if not os.environ.get("CELERYFLOW_EXAMPLE_DIR"):
            shutil.rmtree(workdir, ignore_errors=True)
