"""Runs of a function this worker does not have: a rolling deploy in progress, a
removed function or subscription, a module the worker does not import.

Such a run is put back queued, so a worker that has the function can still take it,
with the reason on the run (``error``: ``{"type": "FunctionNotRegistered", ...}``).
The reconciler keeps ringing it every ``redeliver_after``; this process logs it once
(an ERROR naming the way out), and later deliveries only at DEBUG.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .store import Claim, RunSession

__all__ = ["release_unregistered"]

log = logging.getLogger("celeryflow.engine")
REMEMBERED = 10_000  # run ids this process has logged (the oldest are forgotten)

_logged: OrderedDict[str, None] = OrderedDict()
_lock = threading.Lock()


def _first_time(run_id: str) -> bool:
    with _lock:
        if run_id in _logged:
            _logged.move_to_end(run_id)
            return False
        _logged[run_id] = None
        if len(_logged) > REMEMBERED:
            _logged.popitem(last=False)
        return True


def release_unregistered(
    session: RunSession, claim: Claim, now: datetime, redeliver_after: timedelta
) -> None:
    run_id = str(claim.run["id"])
    function_id = str(claim.run["function_id"])
    message = (
        f"function {function_id!r} is not registered in this worker; the run stays queued "
        "for a worker that has it (to retire such runs: celeryflow -A <app> cancel "
        f"--function {function_id}, or flow.cancel_runs(function_id={function_id!r}))"
    )
    session.release_unregistered(run_id, claim.fence, message=message, due_at=now + redeliver_after)
    if _first_time(run_id):
        log.error("run %s: %s", run_id, message)
    else:
        log.debug("run %s: function %r is still not registered here", run_id, function_id)
