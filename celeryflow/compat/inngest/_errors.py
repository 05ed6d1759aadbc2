"""The SDK's errors, as subclasses of celeryflow's so the engine treats them alike.

Argument orders follow ``inngest`` 0.5: ``NonRetriableError(message=None, quiet=False)``,
``RetryAfterError(message, retry_after, quiet=False)`` with ``retry_after`` in
milliseconds (int), a timedelta or a datetime, ``StepError(message, name, stack)``.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ... import errors as core

__all__ = [
    "PREFIX",
    "NonRetriableError",
    "NotServedError",
    "NotSupportedError",
    "OutputUnserializableError",
    "RetryAfterError",
    "SendEventsError",
    "StepError",
    "StepUnexpectedError",
    "invoke_errors",
    "not_supported",
    "sdk_errors",
]

PREFIX = "celeryflow.compat.inngest"


class NotSupportedError(core.ConfigError, core.NonRetriableError):
    """A part of the Inngest SDK this facade does not provide.

    A ConfigError because most are found at decoration time; also a NonRetriableError
    because some (``step.invoke(v=...)``, ``step.ai.infer``) are only found inside a
    run, and retrying cannot make them work."""


class NotServedError(core.CeleryflowError, RuntimeError):
    """The client was used to send events before ``serve()`` bound it to a Flow."""


def not_supported(thing: str, hint: str = "") -> NotSupportedError:
    suffix = f"; {hint}" if hint else ""
    return NotSupportedError(f"{PREFIX}: {thing} is not supported{suffix}")


class SendEventsError(core.EventError):
    """``client.send`` met an invalid event: the events before it were sent (their
    ids are ``ids``), it and the ones after it were not, as Inngest's event API does."""

    def __init__(self, message: str, ids: list[str]) -> None:
        super().__init__(message)
        self.ids = ids


class _SDKError:
    """The attributes every error of the SDK has (``message``, ``name``, ``stack``)."""

    is_retriable: bool = True
    quiet: bool = False

    @property
    def message(self) -> str:
        return str(self)

    @property
    def name(self) -> str:
        return type(self).__name__

    @property
    def stack(self) -> str | None:
        return None


class NonRetriableError(_SDKError, core.NonRetriableError):
    """Raise to fail a step or the function at once, without further retries."""

    is_retriable = False

    def __init__(self, message: str | None = None, quiet: bool = False) -> None:
        super().__init__(message)
        self.quiet = quiet


def _aware(when: datetime.datetime) -> datetime.datetime:
    # The SDK computes retry times with naive datetime.now() (local time) and sends
    # them as UTC via astimezone(), which reads a naive value as local: same here.
    return when.astimezone(datetime.timezone.utc)


class RetryAfterError(_SDKError, core.RetryAfterError):
    """Retry the step (or the function) at ``retry_after``: milliseconds from now
    (int), a timedelta from now, or a datetime (naive means local time, as in the SDK)."""

    def __init__(
        self,
        message: str | None,
        retry_after: int | datetime.timedelta | datetime.datetime,
        quiet: bool = False,
    ) -> None:
        if isinstance(retry_after, bool) or not isinstance(
            retry_after, int | datetime.timedelta | datetime.datetime
        ):
            raise TypeError(
                f"{PREFIX}: RetryAfterError retry_after must be milliseconds (int), a "
                f"timedelta or a datetime, got {type(retry_after).__name__}"
            )
        if isinstance(retry_after, int):
            retry_after = datetime.timedelta(milliseconds=retry_after)
        if isinstance(retry_after, datetime.timedelta):
            retry_after = datetime.datetime.now() + retry_after
        # celeryflow reads an absolute datetime as "retry at"
        super().__init__("" if message is None else message, _aware(retry_after))
        self.retry_after: datetime.datetime = retry_after
        self.quiet = quiet


class StepError(_SDKError, core.StepError):
    """A step failed for good (retries exhausted), an invoked function failed, or a
    parallel branch failed. ``message``, ``name`` (the original error's type) and
    ``stack`` describe the original error; ``step_id`` and ``error`` are celeryflow's."""

    is_retriable = False

    def __init__(
        self,
        message: str,
        name: str,
        stack: str | None = None,
        *,
        step_id: str = "",
        error: dict[str, Any] | None = None,
    ) -> None:
        info = dict(error) if error is not None else {"type": name, "message": message}
        if stack is not None:
            info.setdefault("traceback", stack)
        core.StepError.__init__(self, step_id, info)
        self.args = (message,)  # str(err) is the original message, as in the SDK
        self._message = message
        self._name = name
        self._stack = stack if stack is not None else info.get("traceback")

    @property
    def message(self) -> str:
        return self._message

    @property
    def name(self) -> str:
        return self._name

    @property
    def stack(self) -> str | None:
        return None if self._stack is None else str(self._stack)


class OutputUnserializableError(NonRetriableError):
    """The SDK's ``output_unserializable``: a step or the function returned a value
    that is not JSON. It fails the run (not caught as StepError), as in the SDK."""

    code = "output_unserializable"


INVOKE_TIMEOUT = "InngestInvokeTimeoutError"
INVOKE_TIMEOUT_MESSAGE = "Timed out waiting for invoked function to complete"


class StepUnexpectedError(_SDKError, core.StepUnexpectedError):
    """The SDK's ``step_unexpected``: a parallel branch's step is gone on replay.
    It fails the run (the SDK's run fails with it, not with a StepError)."""

    is_retriable = False
    code = "step_unexpected"


def _translated(exc: core.StepError) -> Exception:
    error = exc.error
    if error.get("type") == core.StepUnexpectedError.__name__:
        message = str(error.get("message", ""))  # "branch 2 failed: found step ..."
        return StepUnexpectedError(message.partition(" failed: ")[2] or message)
    if error.get("type") == OutputUnserializableError.__name__:
        return OutputUnserializableError(str(error.get("message", "")))
    if error.get("type") == NonRetriableError.__name__:
        # The SDK lets a NonRetriableError raised in a step bubble up to the function
        # as itself (not as StepError), so `except inngest.StepError` does not catch it.
        return NonRetriableError(str(error.get("message", "")))
    # A parallel branch or an invoked run that failed on a step reports a StepError
    # whose cause is the step's error; the SDK names the original error.
    cause = error.get("cause")
    origin = cause if error.get("type") == "StepError" and isinstance(cause, dict) else error
    return StepError(
        str(origin.get("message", "")),
        str(origin.get("type", "Exception")),
        None,
        step_id=exc.step_id,
        error=error,
    )


@contextmanager
def sdk_errors() -> Iterator[None]:
    """Re-raise celeryflow's StepError as the SDK's (only StepError: the engine's
    own signals derive from BaseException and pass through untouched)."""
    try:
        yield
    except core.StepError as exc:
        if isinstance(exc, StepError):
            raise
        raise _translated(exc) from exc


def _invoke_timed_out(error: dict[str, Any]) -> bool:
    # celeryflow fails a timed-out invoke step with a bare TimeoutError record
    # ("'<id>' did not finish in time"); a child's own TimeoutError has a traceback
    return (
        error.get("type") == "TimeoutError"
        and "traceback" not in error
        and str(error.get("message", "")).endswith("did not finish in time")
    )


@contextmanager
def invoke_errors() -> Iterator[None]:
    """As :func:`sdk_errors`, and an invoke's timeout is the SDK's StepError named
    ``InngestInvokeTimeoutError``."""
    try:
        with sdk_errors():
            yield
    except StepError as exc:
        cause = exc.__cause__
        if isinstance(cause, core.StepError) and _invoke_timed_out(cause.error):
            error = {"type": INVOKE_TIMEOUT, "message": INVOKE_TIMEOUT_MESSAGE}
            raise StepError(
                INVOKE_TIMEOUT_MESSAGE, INVOKE_TIMEOUT, None, step_id=exc.step_id, error=error
            ) from cause
        raise
