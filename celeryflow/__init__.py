"""celeryflow: durable, event-driven workflows on the Celery you already run."""

from .errors import (
    CeleryflowError,
    ConfigError,
    EventError,
    ExpressionError,
    NondeterminismError,
    NonRetriableError,
    RetryAfterError,
    RunNotFound,
    SerializationError,
    StepError,
    StoreUnavailable,
)
from .events import Event, event
from .flow import Flow
from .flowcontrol import Batch, Concurrency, Debounce, Priority, RateLimit, Singleton, Throttle
from .functions import CancelOn, FlowFunction, Timeouts
from .hooks import Hook
from .legacy import RunFailedError, RunHandle
from .runs import Run, RunStatus, StepRecord
from .schedule import CronTrigger, cron
from .steps import AsyncContext, Context, Failure
from .transport import kombu_sqlite

# `celery -A app worker` resolves the embedded broker URL (celeryflow+sqlite://)
# after importing the app module, which imports celeryflow: register it here.
kombu_sqlite.register()

__all__ = [
    "AsyncContext",
    "Batch",
    "CancelOn",
    "CeleryflowError",
    "Concurrency",
    "ConfigError",
    "Context",
    "CronTrigger",
    "Debounce",
    "Event",
    "EventError",
    "ExpressionError",
    "Failure",
    "Flow",
    "FlowFunction",
    "Hook",
    "NonRetriableError",
    "NondeterminismError",
    "Priority",
    "RateLimit",
    "RetryAfterError",
    "Run",
    "RunFailedError",
    "RunHandle",
    "RunNotFound",
    "RunStatus",
    "SerializationError",
    "Singleton",
    "StepError",
    "StepRecord",
    "StoreUnavailable",
    "Throttle",
    "Timeouts",
    "cron",
    "event",
]
