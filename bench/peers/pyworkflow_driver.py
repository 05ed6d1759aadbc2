"""pyworkflow-engine's side of bench/peers.py (bench/peers/.venv)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from protocol import Unsupported, serve


def setup(args):  # type: ignore[no-untyped-def]
    raise Unsupported("driver not written yet")


if __name__ == "__main__":
    raise SystemExit(serve(setup))
