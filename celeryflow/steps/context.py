"""What user code sees: ``ctx.step.run``, ``ctx.step.sleep``... and the Context.

The step objects are thin: the decisions (memo, retries, parking) live in
:class:`celeryflow.engine.Execution`, shared by the sync and async variants.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ..durations import Duration, parse_datetime, parse_duration, utcnow
from ..errors import BranchFinished, ConfigError, NonRetriableError
from ..events import Event
from ..logs import RunLogger
from . import run
from .invoke import invoke_function
from .parallel import begin as begin_parallel
from .send import send_event
from .sleep import sleep_until
from .task import invoke_task
from .wait import wait_for_event

if TYPE_CHECKING:
    from ..engine import Execution
    from ..functions import FlowFunction

__all__ = ["AsyncContext", "AsyncSteps", "BaseContext", "Context", "Failure", "Steps"]

T = TypeVar("T")


def _resolve(result: Any) -> Any:
    """A sync function may call an async step function; run it to completion."""
    if inspect.isawaitable(result):
        return asyncio.run(_awaited(result))
    return result


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _checked(parse: Callable[[Any, str], T], value: Any, where: str) -> T:
    """A bad duration or time in a step is a bug retrying cannot fix."""
    try:
        return parse(value, where)
    except ConfigError as exc:
        raise NonRetriableError(str(exc)) from None


def _delay(value: Duration | None, step_id: str) -> timedelta | None:
    if value is None:
        return None
    return _checked(parse_duration, value, f"step.run({step_id!r}) retry_delay")


def _invoke(
    execution: Execution,
    step_id: str,
    function: FlowFunction | str | None,
    data: dict[str, Any] | None,
    task: Any,
    args: Sequence[Any],
    kwargs: dict[str, Any] | None,
    timeout: Duration | None,
) -> Any:
    if (function is None) == (task is None):
        raise NonRetriableError(f"step.invoke({step_id!r}): give exactly one of function= or task=")
    if task is not None:
        return invoke_task(execution, step_id, task=task, args=args, kwargs=kwargs, timeout=timeout)
    assert function is not None
    return invoke_function(execution, step_id, function=function, data=data, timeout=timeout)


class Steps:
    """Durable steps for ``def`` functions."""

    def __init__(self, execution: Execution) -> None:
        self._execution = execution

    def run(
        self,
        step_id: str,
        fn: Callable[..., Any],
        *args: Any,
        retries: int | None = None,
        retry_delay: Duration | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run ``fn(*args, **kwargs)`` once for this run; later replays return its
        recorded (JSON) result. ``retries`` and ``retry_delay`` (a fixed delay between
        tries instead of the exponential back-off) override the function's settings."""
        delay = _delay(retry_delay, step_id)
        plan = run.begin(self._execution, step_id)
        if plan.done:
            return plan.value
        try:
            with self._execution.inside_step(plan):
                result = _resolve(fn(*args, **kwargs))
        except Exception as exc:
            run.fail(self._execution, plan, exc, retries, delay)
        return run.complete(self._execution, plan, result, retries)

    def sleep(self, step_id: str, duration: Duration) -> None:
        """Park the run for ``duration`` ("3 days", "30s", "1h30m", seconds, timedelta)."""
        delta = _checked(parse_duration, duration, f"step.sleep({step_id!r})")
        sleep_until(self._execution, step_id, lambda: utcnow() + delta)

    def sleep_until(self, step_id: str, when: datetime | str) -> None:
        """Park the run until ``when`` (aware or UTC datetime, or ISO-8601 string)."""
        at = _checked(parse_datetime, when, f"step.sleep_until({step_id!r})")
        sleep_until(self._execution, step_id, lambda: at)

    def wait_for_event(
        self,
        step_id: str,
        *,
        event: str,
        timeout: Duration,
        match: str | None = None,
        if_: str | None = None,
        lookback: Duration | None = None,
    ) -> Event | None:
        """Park the run until a matching ``event`` arrives (returned) or ``timeout``
        passes (None). See :func:`celeryflow.steps.wait.wait_for_event`."""
        return wait_for_event(
            self._execution,
            step_id,
            event=event,
            timeout=timeout,
            match=match,
            if_=if_,
            lookback=lookback,
        )

    def send_event(
        self, step_id: str, events: Event | dict[str, Any] | list[Event | dict[str, Any]]
    ) -> list[str]:
        """Send events exactly once for this run; returns their ids."""
        return send_event(self._execution, step_id, events)

    def invoke(
        self,
        step_id: str,
        *,
        function: FlowFunction | str | None = None,
        data: dict[str, Any] | None = None,
        task: Any = None,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        timeout: Duration | None = None,
    ) -> Any:
        """Run another flow function as a child (``function=``, ``data=``), or send a
        legacy Celery task to its queue (``task=``, ``args=``, ``kwargs=``), and
        return its output; the run parks meanwhile. A failure raises StepError."""
        return _invoke(self._execution, step_id, function, data, task, args, kwargs, timeout)

    def parallel(
        self, step_id: str, branches: Sequence[Callable[[], Any]], *, mode: str = "all"
    ) -> Any:
        """Run each callable (which calls steps) as a run of its own, on any worker;
        this run parks meanwhile. Returns the results in order (``mode="all"``; the
        first failure raises StepError) or the first branch to end (``"race"``)."""
        done, value = begin_parallel(self._execution, step_id, branches, mode)
        if done:
            return value
        try:
            result = _resolve(value())
        except Exception as exc:
            raise BranchFinished(error=exc) from exc
        raise BranchFinished(result)


class AsyncSteps:
    """Durable steps for ``async def`` functions: ``await ctx.step.run(...)``."""

    def __init__(self, execution: Execution) -> None:
        self._execution = execution

    async def run(
        self,
        step_id: str,
        fn: Callable[..., Any],
        *args: Any,
        retries: int | None = None,
        retry_delay: Duration | None = None,
        **kwargs: Any,
    ) -> Any:
        delay = _delay(retry_delay, step_id)
        plan = run.begin(self._execution, step_id)
        if plan.done:
            return plan.value
        try:
            with self._execution.inside_step(plan):
                result = fn(*args, **kwargs)
                if inspect.isawaitable(result):
                    result = await result
        except Exception as exc:
            run.fail(self._execution, plan, exc, retries, delay)
        return run.complete(self._execution, plan, result, retries)

    async def sleep(self, step_id: str, duration: Duration) -> None:
        delta = _checked(parse_duration, duration, f"step.sleep({step_id!r})")
        sleep_until(self._execution, step_id, lambda: utcnow() + delta)

    async def sleep_until(self, step_id: str, when: datetime | str) -> None:
        at = _checked(parse_datetime, when, f"step.sleep_until({step_id!r})")
        sleep_until(self._execution, step_id, lambda: at)

    async def wait_for_event(
        self,
        step_id: str,
        *,
        event: str,
        timeout: Duration,
        match: str | None = None,
        if_: str | None = None,
        lookback: Duration | None = None,
    ) -> Event | None:
        return wait_for_event(
            self._execution,
            step_id,
            event=event,
            timeout=timeout,
            match=match,
            if_=if_,
            lookback=lookback,
        )

    async def send_event(
        self, step_id: str, events: Event | dict[str, Any] | list[Event | dict[str, Any]]
    ) -> list[str]:
        return send_event(self._execution, step_id, events)

    async def invoke(
        self,
        step_id: str,
        *,
        function: FlowFunction | str | None = None,
        data: dict[str, Any] | None = None,
        task: Any = None,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        timeout: Duration | None = None,
    ) -> Any:
        return _invoke(self._execution, step_id, function, data, task, args, kwargs, timeout)

    async def parallel(
        self, step_id: str, branches: Sequence[Callable[[], Any]], *, mode: str = "all"
    ) -> Any:
        done, value = begin_parallel(self._execution, step_id, branches, mode)
        if done:
            return value
        try:
            result = value()
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:
            raise BranchFinished(error=exc) from exc
        raise BranchFinished(result)


StepsT = TypeVar("StepsT", Steps, AsyncSteps)


@dataclass(frozen=True)
class Failure:
    """What an ``on_failure`` handler gets as ``ctx.failure``: the run that failed
    for good, its function, its error (``type``, ``module``, ``message``, and
    ``step`` / ``raised_as`` where they apply; no traceback) and ``event``, the
    ``celeryflow/function.failed`` event itself (Inngest's view, where the original
    event is ``event.data["event"]``)."""

    run_id: str
    function_id: str
    error: dict[str, Any]
    event: Event


class BaseContext(Generic[StepsT]):
    """What every flow function receives.

    ``attempt`` is 0-based (as in Inngest): while a step is being retried it is that
    step's attempt, otherwise the attempt of the function body. ``logger`` logs to
    ``celeryflow.run`` and stays quiet while the function replays memoized steps, so
    each line is logged once per run (see :mod:`celeryflow.logs`).

    In a function's ``on_failure`` handler, ``event`` is the failed run's event (as
    the failed function saw it) and ``failure`` says what failed; elsewhere
    ``failure`` is None.
    """

    def __init__(
        self,
        *,
        run_id: str,
        function_id: str,
        events: list[Event],
        step: StepsT,
        attempt: int,
        logger: RunLogger,
        failure: Failure | None = None,
    ) -> None:
        self.run_id = run_id
        self.function_id = function_id
        self.events = events
        self.event = events[0]
        self.step: StepsT = step
        self.attempt = attempt
        self.logger = logger
        self.failure = failure


class Context(BaseContext[Steps]):
    """The context of a ``def`` function: ``ctx.step.run(...)`` returns the value."""


class AsyncContext(BaseContext[AsyncSteps]):
    """The context of an ``async def`` function: ``await ctx.step.run(...)``."""
