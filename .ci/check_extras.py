"""Every extra is complete: for each one, a clean venv gets only the built wheel with that
extra (``celeryflow-engine[redis]`` ...), and .ci/extras_probe.py uses what the extra is
for there. Exits non-zero, with the failing extra's output, if any extra lacks a
dependency (as ``[redis]`` once lacked kombu's ``packaging``).

    python .ci/check_extras.py [EXTRA ...]     # default: every extra

Two venvs are built at a time; pip's cache makes a venv take ~20 s.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from wheels import EXTRAS, build_wheel  # noqa: E402

PROBE = HERE / "extras_probe.py"
# What the probes must not inherit from the caller's environment.
DROP = ("PYTHONPATH", "VIRTUAL_ENV", "CELERYFLOW_STORE", "CELERY_BROKER_URL", "PYTHONHOME")


def check(extra: str, wheel: Path, base: Path) -> tuple[str, bool, float, str]:
    started = time.monotonic()
    env = {k: v for k, v in os.environ.items() if k not in DROP}
    venv = base / f"venv-{extra}"
    python = str(venv / "bin" / "python")
    log: list[str] = []
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [python, "-m", "pip", "install", "-q", "--no-compile", f"{wheel}[{extra}]"],
        [python, str(PROBE), extra],
    ]
    ok = True
    for step in steps:
        done = subprocess.run(
            step, cwd=base, env=env, capture_output=True, text=True, timeout=600, check=False
        )
        log.append(f"$ {' '.join(step)}\n{done.stdout}{done.stderr}")
        if done.returncode != 0:
            ok = False
            break
    return extra, ok, time.monotonic() - started, "\n".join(log)


def main(extras: list[str]) -> int:
    unknown = sorted(set(extras) - set(EXTRAS))
    if unknown:
        print(f"unknown extras {unknown}; expected some of {list(EXTRAS)}")
        return 2
    with tempfile.TemporaryDirectory(prefix="cf-extras-") as tmp:
        base = Path(tmp)
        wheel = build_wheel(base / "wheel")
        print(f"built {wheel.name}")
        with ThreadPoolExecutor(max_workers=2) as pool:
            results = list(pool.map(lambda e: check(e, wheel, base), extras))
    failed = 0
    for extra, ok, seconds, log in results:
        print(f"  [{extra}] {'ok' if ok else 'FAILED'} ({seconds:.0f}s)")
        if not ok:
            failed += 1
            print("\n".join("      " + line for line in log.splitlines()[-30:]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or list(EXTRAS)))
