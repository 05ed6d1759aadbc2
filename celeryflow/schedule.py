"""Cron triggers: ``cron("0 9 * * 1-5", tz="Europe/Berlin")``.

Fire times are computed in the trigger's time zone (croniter, DST-correct: "0 9 * * *"
in Europe/Berlin is 08:00 UTC in winter, 07:00 UTC in summer) and stored in UTC.
A sixth field is seconds (croniter's convention, e.g. ``"* * * * * */2"`` every two
seconds): meant for tests.

Each tick (every worker's reconciler thread, at each slot; a ``celeryflow.tick`` beat
entry, if beat runs) looks at the latest slot at or before now. A slot fires once:
``cf_cron_ticks`` has one row per (function, slot), and only the tick that inserts it
creates the run, so any number of workers and beats never fire it twice. After
downtime the latest missed slot fires once, not once per missed slot. A function seen
for the first time does not fire a slot older than ``CATCH_UP`` (deploying at 15:00
does not fire the 09:00 run).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field

from .errors import ConfigError

__all__ = ["CATCH_UP", "CronTrigger", "cron"]

CATCH_UP = timedelta(minutes=1)


class CronTrigger(BaseModel):
    """Start a run at each slot of a cron ``expression`` in time zone ``tz`` (UTC
    when None)."""

    model_config = ConfigDict(frozen=True)

    expression: str = Field(min_length=1)
    tz: str | None = None

    def check(self, function_id: str) -> None:
        """Fail at decoration time, naming the function."""
        if not croniter.is_valid(self.expression):
            raise ConfigError(
                f"function {function_id!r}: invalid cron expression {self.expression!r}"
            )
        try:
            self.zone()
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"function {function_id!r}: unknown time zone {self.tz!r}") from None

    def zone(self) -> ZoneInfo | timezone:
        return ZoneInfo(self.tz) if self.tz else timezone.utc

    def latest_slot(self, now: datetime) -> datetime:
        """The newest fire time at or before ``now``, in UTC."""
        local = now.astimezone(self.zone())
        probe = croniter(self.expression, local + timedelta(microseconds=1))
        slot: datetime = probe.get_prev(datetime)
        return slot.astimezone(timezone.utc)

    def next_slot(self, after: datetime) -> datetime:
        probe = croniter(self.expression, after.astimezone(self.zone()))
        slot: datetime = probe.get_next(datetime)
        return slot.astimezone(timezone.utc)


def cron(expression: str, tz: str | None = None) -> CronTrigger:
    """A trigger: ``cron("0 9 * * 1-5", tz="Europe/Berlin")``."""
    return CronTrigger(expression=expression, tz=tz)
