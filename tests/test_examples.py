"""The README's first command runs examples/quickstart.py; run it end to end here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_quickstart_runs_on_the_embedded_default() -> None:
    env = {**os.environ, "QUICKSTART_SLEEP": "1s"}
    env.pop("CELERYFLOW_STORE", None)
    env.pop("CELERY_BROKER_URL", None)
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    log = EXAMPLES / "quickstart-worker.log"
    detail = result.stdout + result.stderr + (log.read_text()[-3000:] if log.exists() else "")
    assert result.returncode == 0, detail
    lines = result.stdout.splitlines()
    assert any(line.endswith("sleeping") or "sleeping until" in line for line in lines), detail
    assert any(line.endswith(": completed") for line in lines), detail
    assert "step send-tips" in result.stdout and "completed" in result.stdout
