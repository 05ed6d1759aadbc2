"""A facade of the Inngest Python SDK (``inngest`` 0.5.x) over celeryflow.

Code written for the SDK runs on Celery workers after changing its imports::

    from celeryflow.compat import inngest                            # was: import inngest
    from celeryflow.compat.inngest import celery as inngest_celery   # was: import inngest.flask

    client = inngest.Inngest(app_id="shop")

    @client.create_function(fn_id="welcome", trigger=inngest.TriggerEvent(event="user/signup"))
    def welcome(ctx: inngest.ContextSync) -> None:
        ctx.step.run("send", send_email, ctx.event.data["email"])
        ctx.step.sleep("wait", datetime.timedelta(days=3))   # an int would be MILLISECONDS

    inngest_celery.serve(celery_app, client, [welcome])     # was: inngest.flask.serve(...)
    client.send_sync(inngest.Event(name="user/signup", data={"email": "ada@example.com"}))

The SDK's semantics are kept (int durations are milliseconds, ``if_exp`` sees
``event`` and ``async``, ``ctx.attempt`` is 0-based). What the facade does not
provide raises :class:`NotSupportedError` naming it. It does not import ``inngest``.
"""

from . import celery, experimental
from ._client import (
    Function,
    Inngest,
    Middleware,
    MiddlewareSync,
    PydanticSerializer,
    SendEventsResult,
    Serializer,
    StepMemos,
    Streaming,
    TransformOutputResult,
)
from ._config import (
    Batch,
    Cancel,
    Concurrency,
    Debounce,
    Priority,
    RateLimit,
    Singleton,
    Throttle,
    Timeouts,
    TriggerCron,
    TriggerEvent,
)
from ._context import Context, ContextSync
from ._errors import (
    NonRetriableError,
    NotServedError,
    NotSupportedError,
    OutputUnserializableError,
    RetryAfterError,
    SendEventsError,
    StepError,
    StepUnexpectedError,
)
from ._events import JSON, Event
from ._middleware import Opcode, Output, TransformOutputStepInfo
from ._steps import ParallelMode, Step, StepSync

__all__ = [
    "JSON",
    "Batch",
    "Cancel",
    "Concurrency",
    "Context",
    "ContextSync",
    "Debounce",
    "Event",
    "Function",
    "Inngest",
    "Middleware",
    "MiddlewareSync",
    "NonRetriableError",
    "NotServedError",
    "NotSupportedError",
    "Opcode",
    "Output",
    "OutputUnserializableError",
    "ParallelMode",
    "Priority",
    "PydanticSerializer",
    "RateLimit",
    "RetryAfterError",
    "SendEventsError",
    "SendEventsResult",
    "Serializer",
    "Singleton",
    "Step",
    "StepError",
    "StepMemos",
    "StepSync",
    "StepUnexpectedError",
    "Streaming",
    "Throttle",
    "Timeouts",
    "TransformOutputResult",
    "TransformOutputStepInfo",
    "TriggerCron",
    "TriggerEvent",
    "celery",
    "experimental",
]
