"""Every error celeryflow raises shares the root :class:`CeleryflowError`.

:class:`Interrupt` is the exception: it is the engine's internal "this run leaves
the worker now" signal and derives from ``BaseException`` so that user code written
as ``except Exception:`` around a step cannot swallow a sleep or a wait. For the
same reason :class:`NestedStepError` (a step called inside a step) is one too.
"""

from __future__ import annotations

import traceback
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

__all__ = [
    "BranchFinished",
    "CeleryflowError",
    "ConfigError",
    "EventError",
    "ExpressionError",
    "Interrupt",
    "NestedStepError",
    "NonRetriableError",
    "NondeterminismError",
    "RetryAfterError",
    "RunNotFound",
    "SerializationError",
    "StepError",
    "StepUnexpectedError",
    "StoreUnavailable",
    "Unavailable",
    "describe",
    "error_info",
]


def describe(exc: Any) -> str:
    """One line per problem of a pydantic ValidationError: "retries: Input should be..."."""
    try:
        problems = exc.errors()
    except AttributeError:
        return str(exc)
    return "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ())) or 'value'}: {e.get('msg', '')}"
        for e in problems
    )


class CeleryflowError(Exception):
    """Root of every error raised by celeryflow."""


class ConfigError(CeleryflowError, ValueError):
    """A function definition or a Flow setting is invalid (raised at decoration time)."""


class ExpressionError(ConfigError):
    """A CEL expression does not compile, or failed to evaluate."""


class EventError(CeleryflowError, ValueError):
    """An event given to ``Flow.send`` is invalid; nothing of the call was written."""


class SerializationError(CeleryflowError, TypeError):
    """A value that must be stored as JSON is not JSON-serializable."""


class RunNotFound(CeleryflowError, LookupError):
    """No run with that id exists in the store."""


class StoreUnavailable(CeleryflowError, sa.exc.OperationalError):
    """The store cannot be reached: a connect that failed or timed out, a statement
    past its ``statement_timeout``, a dropped connection. The message names the store
    and the timeout. It is also SQLAlchemy's ``OperationalError`` (with the driver's
    error as ``orig``), so code that treats database errors as infrastructure treats
    this one the same."""

    def __init__(self, message: str, original: sa.exc.DBAPIError) -> None:
        sa.exc.OperationalError.__init__(
            self,
            original.statement,
            original.params,
            original.orig if original.orig is not None else Exception(message),
            hide_parameters=original.hide_parameters,
            connection_invalidated=original.connection_invalidated,
            code=original.code,
        )
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> Any:
        return (_store_unavailable, (self.message,))


def _store_unavailable(message: str) -> StoreUnavailable:
    return StoreUnavailable(message, sa.exc.OperationalError(None, None, Exception(message)))


class NonRetriableError(CeleryflowError):
    """Raise from a step or a function to fail it at once, without further retries."""


class NondeterminismError(NonRetriableError):
    """A replay asked for a different kind of step than the one recorded under that id."""


class StepUnexpectedError(NondeterminismError):
    """A replay no longer reaches the step this run was started for: a
    ``step.parallel`` branch whose callable is gone from the list (Inngest's
    ``step_unexpected``). The branch fails, and with it the parallel step."""


class RetryAfterError(CeleryflowError):
    """Raise from a step to retry it after ``delay`` (seconds, duration string,
    timedelta, or an absolute datetime) instead of the exponential back-off."""

    def __init__(self, message: str, delay: float | str | timedelta | datetime) -> None:
        super().__init__(message)
        self.delay = delay


class StepError(CeleryflowError):
    """Raised into the function when a step failed for good (retries exhausted or
    non-retriable). Catch it to compensate; uncaught, it fails the run."""

    def __init__(self, step_id: str, error: dict[str, Any]) -> None:
        self.step_id = step_id
        self.error = error
        self.error_type: str = str(error.get("type", "Exception"))
        self.error_message: str = str(error.get("message", ""))
        super().__init__(f"step {step_id!r} failed: {self.error_type}: {self.error_message}")


class Interrupt(BaseException):
    """The run must leave this worker (it parked, was cancelled, or lost its lease).

    ``reason`` says why; ``wake_at`` is set when a doorbell should ring at that time.
    """

    def __init__(self, reason: str, wake_at: datetime | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.wake_at = wake_at


class Unavailable(Interrupt):
    """The store or the broker failed under one of celeryflow's own calls while a run
    executed (internal, see :mod:`celeryflow.infra`): the run leaves the worker and
    is retried later from its memo, without counting an attempt of the user's code.
    ``what`` is "store" or "broker", ``call`` the method, ``cause`` the error."""

    def __init__(self, what: str, call: str, cause: BaseException) -> None:
        super().__init__(f"{what} unavailable in {call}: {type(cause).__name__}: {cause}")
        self.what = what
        self.call = call
        self.cause = cause


class BranchFinished(BaseException):
    """A step.parallel branch run reached the end of its callable (internal): the run
    ends there with ``value`` as its output, or as if ``error`` were uncaught. It
    must not pass through the function body, which belongs to the parent run: a
    ``try`` around the parallel step there would see the branch's own error."""

    def __init__(self, value: object = None, error: Exception | None = None) -> None:
        super().__init__("branch finished")
        self.value = value
        self.error = error


class NestedStepError(BaseException):
    """A step was called inside another step's code: the run fails at once.

    A ``BaseException`` so that ``except Exception:`` in the step's code or around
    the outer step cannot swallow it and let the run complete as if the inner step
    had been durable (it never is: steps cannot be nested)."""

    def __init__(self, outer: str, inner: str) -> None:
        super().__init__(
            f"Nested steps are not supported: step {inner!r} was called inside "
            f"step {outer!r}; call it after {outer!r} returns, in the function body"
        )
        self.outer = outer
        self.inner = inner


def error_info(exc: BaseException) -> dict[str, Any]:
    """What the store keeps of an error (JSON): the type, module, message and
    traceback of *the user's* exception. celeryflow's wrappers name themselves in
    ``raised_as``: a StepError (a step failed for good) reports the step's own error
    and its ``step``; a RetryAfterError raised ``from`` an error reports that error."""
    if isinstance(exc, StepError):
        info = {k: v for k, v in exc.error.items() if k not in ("raised_as", "cause")}
        info.setdefault("type", exc.error_type)
        info.setdefault("message", exc.error_message)
        if not info.get("traceback"):
            info["traceback"] = _traceback(exc)
        info["step"] = exc.step_id
        info["raised_as"] = type(exc).__name__
        return info
    shown = exc
    if isinstance(exc, RetryAfterError) and exc.__cause__ is not None:
        shown = exc.__cause__
    info = {
        "type": type(shown).__name__,
        "module": type(shown).__module__,
        "message": str(shown),
        "traceback": _traceback(exc),
    }
    if shown is not exc:
        info["raised_as"] = type(exc).__name__
    return info


def _traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
