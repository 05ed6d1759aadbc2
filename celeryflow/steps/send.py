"""``step.send_event``: events sent once per run, recorded with the step."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from ..errors import EventError, NonRetriableError
from ..events import Event, prepare_events
from ..runs import StepKind, StepStatus

if TYPE_CHECKING:
    from ..engine import Execution

__all__ = ["send_event"]


def send_event(
    execution: Execution, name: str, events: Event | dict[str, Any] | list[Event | dict[str, Any]]
) -> list[str]:
    """Send events once for this run: they are recorded with the step in one
    transaction, and events without an id get one derived from the run and step,
    so neither a replay nor a retry sends twice. Returns the event ids."""
    plan, row = execution.begin(name, StepKind.SEND)
    key = plan.key
    if row is not None and row["status"] == StepStatus.COMPLETED:
        return list(json.loads(row["output"]))
    items = events if isinstance(events, list) else [events]
    with_ids: list[Event | dict[str, Any]] = []
    for index, item in enumerate(items):
        data = item.model_dump() if isinstance(item, Event) else dict(item)
        if not data.get("id"):
            seed = f"{execution.run_id}:{key}:{index}".encode()
            data["id"] = hashlib.sha256(seed).hexdigest()[:32]
        with_ids.append(data)
    try:
        prepared = prepare_events(with_ids)
    except EventError as exc:
        raise NonRetriableError(f"step.send_event({name!r}): {exc}") from None
    ids = [str(ev.id) for ev in prepared]
    execution.complete_sending(plan, prepared, json.dumps(ids))
    return ids
