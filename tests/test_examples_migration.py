"""The migration examples end to end: examples/legacy_halfway.py (legacy tasks and
flow functions on one worker) and examples/stripe_webhooks.py (idempotent webhooks)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_legacy_app_migrated_halfway(tmp_path: Path) -> None:
    env = {**os.environ, "LEGACY_EXAMPLE_DIR": str(tmp_path)}
    env.pop("CELERYFLOW_STORE", None)
    env.pop("CELERY_BROKER_URL", None)
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "legacy_halfway.py")],
        capture_output=True,
        text=True,
        timeout=150,
        env=env,
    )
    log = tmp_path / "legacy-halfway-worker.log"
    detail = result.stdout + result.stderr + (log.read_text()[-3000:] if log.exists() else "")
    assert result.returncode == 0, detail
    assert "charge output: {'order_id': 'o-42', 'captured': 19.5}" in result.stdout, detail
    assert "'receipt': 'receipt-o-42'" in result.stdout, detail
    assert "update_crm (subscribed legacy task) output: crm-ok" in result.stdout, detail
    assert "receipt for o-42: 19.50" in log.read_text()  # the legacy task ran on the worker


def test_stripe_style_webhooks_are_idempotent(tmp_path: Path) -> None:
    env = {**os.environ, "STRIPE_EXAMPLE_DIR": str(tmp_path)}
    env.pop("CELERYFLOW_STORE", None)
    env.pop("CELERY_BROKER_URL", None)
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "stripe_webhooks.py")],
        capture_output=True,
        text=True,
        timeout=150,
        env=env,
    )
    log = tmp_path / "stripe-webhooks-worker.log"
    detail = result.stdout + result.stderr + (log.read_text()[-3000:] if log.exists() else "")
    assert result.returncode == 0, detail
    assert "forged delivery: 400" in result.stdout, detail
    assert "run checkout-completed: completed" in result.stdout, detail
    marks = (tmp_path / "stripe-webhooks-marks.txt").read_text().splitlines()
    # the provider's retry started nothing; the failed e-mail did not redo earlier steps
    assert sorted(marks) == sorted(
        [
            "paid cs_42 1900",
            "provision cus_7",
            "email-down receipt",
            "email receipt ada@example.com",
            "dunning cus_8",
            "email-down payment-failed",
            "email payment-failed bo@x.io",
        ]
    ), detail
