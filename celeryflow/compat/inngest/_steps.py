"""``ctx.step`` and ``ctx.group`` as the SDK spells them, over celeryflow's steps.

Each method translates its arguments (ints are milliseconds, ``if_exp`` may become
an indexed ``match``, events and errors take the SDK's shape) and calls the celeryflow
step of the same name, which does the memo, the retries and the parking.
"""

from __future__ import annotations

import datetime
import enum
import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from ...errors import ConfigError, EventError, NonRetriableError
from ...logs import RunLogger
from ...steps import AsyncSteps, Steps
from ._errors import invoke_errors, not_supported, sdk_errors
from ._events import (
    Event,
    SendEventsResult,
    core_name,
    milliseconds,
    split_condition,
    to_core_event,
    to_sdk_event,
)
from ._middleware import MiddlewareManager, Opcode, plain, step_info
from ._serializers import EMPTY, Serializer, deserialize, serialize, unserializable

if TYPE_CHECKING:
    from ._client import Function, Inngest

__all__ = ["AI", "Group", "GroupSync", "ParallelMode", "Step", "StepSync"]

PARALLEL_STEP_ID = "group.parallel"  # celeryflow's parallel step needs an id; the SDK's has none


class ParallelMode(enum.Enum):
    """Both modes return every result, as in the SDK. They differ in scheduling: on
    Inngest, ``WAIT`` (the default) advances the branches in lockstep (no branch's
    second step before every branch's first has ended) and ``RACE`` lets each branch
    go on at once. Here each branch is a run of its own, so both run as ``RACE`` does
    (celeryflow's ``mode="all"``; its own ``"race"`` means "first result wins").
    Lockstep would need the branches to wait on one another, which independent runs
    do not (docs/conformance.md, parallel_mode_default)."""

    RACE = "race"
    WAIT = "wait"


def _duration(value: object, what: str) -> datetime.timedelta:
    try:
        return milliseconds(value, what)
    except ConfigError as exc:  # inside a run: retrying cannot fix an argument
        raise NonRetriableError(str(exc)) from None


def _until(value: object, step_id: str) -> datetime.datetime:
    if not isinstance(value, datetime.datetime):
        raise NonRetriableError(
            f"step.sleep_until({step_id!r}): expected a datetime, got {type(value).__name__}"
        )
    # naive means local time, as the SDK reads it (astimezone), not UTC as celeryflow does
    return value.astimezone(datetime.timezone.utc)


def _events(step_id: str, events: Any) -> list[Any]:
    items = events if isinstance(events, list) else [events]
    try:
        return [to_core_event(item) for item in items]
    except (ConfigError, EventError) as exc:  # inside a run: retrying cannot fix them
        raise NonRetriableError(f"step.send_event({step_id!r}): {exc}") from None


def _invoke_args(
    step_id: str, v: str | None, timeout: int | datetime.timedelta | None
) -> datetime.timedelta | None:
    if v is not None:
        raise not_supported(
            f"step.invoke({step_id!r}, v=...)", "celeryflow events have no version field"
        )
    return None if timeout is None else _duration(timeout, f"step.invoke({step_id!r}) timeout")


def _json_checked(
    step_id: str, handler: Callable[..., Any], serializer: Serializer | None, output_type: object
) -> Callable[..., Any]:
    """``handler``, its result passed through the client's serializer (with an
    ``output_type``), raising the SDK's OutputUnserializableError for a result that
    is still not JSON (celeryflow's own check would dump a model, or fail the step
    with a NonRetriableError)."""

    def stored(result: Any) -> Any:
        result = serialize(serializer, result, output_type)
        error = unserializable(result, step_id)
        if error is not None:
            raise error
        return result

    if inspect.iscoroutinefunction(handler):

        async def checked_async(*args: Any) -> Any:
            return stored(await handler(*args))

        return checked_async

    def checked(*args: Any) -> Any:
        result = handler(*args)
        return result if inspect.isawaitable(result) else stored(result)

    return checked


def _stored_by(
    step_id: str, serializer: Serializer | None, output_type: object, fresh: list[Any]
) -> Callable[[Any], Any]:
    def stored(result: Any) -> Any:
        result = serialize(serializer, result, output_type)
        error = unserializable(result, step_id)
        if error is not None:
            raise error
        fresh.append(result)
        return result

    return stored


def _transformed(result: Any, step_id: str) -> Any:
    error = unserializable(result, step_id)
    if error is not None:
        raise error
    return result


def _mw_checked_sync(
    step_id: str,
    handler: Callable[..., Any],
    serializer: Serializer | None,
    output_type: object,
    mw: MiddlewareManager,
    fresh: list[Any],
) -> Callable[..., Any]:
    """As _json_checked, then the result through ``transform_output`` (what is
    stored); ``fresh`` gets the step's own result (what this call returns)."""
    stored = _stored_by(step_id, serializer, output_type, fresh)
    info = step_info(step_id, Opcode.STEP_RUN)

    async def later(awaitable: Any) -> Any:
        try:
            result = await awaitable
        except Exception as exc:
            error = await mw.error_result_async(exc, info)
            if error is not exc:
                raise error from exc
            raise
        return _transformed(await mw.output_result_async(stored(result), info), step_id)

    def checked(*args: Any) -> Any:
        try:
            result = handler(*args)
        except Exception as exc:
            error = mw.error_result(exc, info)
            if error is not exc:
                raise error from exc
            raise
        if inspect.isawaitable(result):
            return later(result)  # celeryflow runs it to completion
        return _transformed(mw.output_result(stored(result), info), step_id)

    return checked


def _mw_checked_async(
    step_id: str,
    handler: Callable[..., Any],
    serializer: Serializer | None,
    output_type: object,
    mw: MiddlewareManager,
    fresh: list[Any],
) -> Callable[..., Any]:
    stored = _stored_by(step_id, serializer, output_type, fresh)
    info = step_info(step_id, Opcode.STEP_RUN)

    async def checked(*args: Any) -> Any:
        try:
            result = handler(*args)
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:
            error = await mw.error_result_async(exc, info)
            if error is not exc:
                raise error from exc
            raise
        return _transformed(await mw.output_result_async(stored(result), info), step_id)

    return checked


def _invoke_opts(function_id: str, data: dict[str, Any] | None) -> dict[str, object]:
    return {"function_id": function_id, "payload": {"data": dict(data or {})}}


def _invoke_data(opts: dict[str, object], data: dict[str, Any] | None) -> dict[str, Any] | None:
    payload = opts.get("payload")
    changed = payload.get("data") if isinstance(payload, dict) else None
    return changed if isinstance(changed, dict) else data


class AI:
    """``step.ai``: Inngest's AI gateway has no celeryflow counterpart."""

    def infer(self, step_id: str, **_: Any) -> Any:
        raise not_supported("step.ai.infer", "call the model inside step.run")


class StepSync:
    """``ctx.step`` of a ``def`` function (``inngest.ContextSync``)."""

    def __init__(
        self,
        steps: Steps,
        client: Inngest,
        mw: MiddlewareManager | None = None,
        logger: RunLogger | None = None,
    ) -> None:
        self._steps = steps
        self._client = client
        self._mw = mw
        self._logger = logger
        self.ai = AI()

    def _begin(self) -> None:
        """``before_execution`` once the replay is over (checked around each step)."""
        mw = self._mw
        if mw is not None and self._logger is not None and mw.begins(self._logger.replaying):
            mw.call_sync("before_execution")

    def enter(self, step_id: str) -> str | None:
        """Every step call passes here first: the step's key, with middleware."""
        if self._mw is None:
            return None
        self._begin()
        return self._mw.key(step_id)

    def run(
        self,
        step_id: str,
        handler: Callable[..., Any],
        *handler_args: Any,
        output_type: object = EMPTY,
    ) -> Any:
        """Run ``handler(*handler_args)`` once and memoize its (JSON) result. With an
        ``output_type``, the result goes through the client's serializer both ways."""
        serializer = self._client.serializer
        self.enter(step_id)
        fresh: list[Any] = []
        if self._mw is None:
            checked = _json_checked(step_id, handler, serializer, output_type)
        else:
            checked = _mw_checked_sync(step_id, handler, serializer, output_type, self._mw, fresh)
        with sdk_errors():
            result = self._steps.run(step_id, checked, *handler_args)
        if fresh:
            result = plain(fresh[0], f"step {step_id!r} result")
        self._begin()
        return deserialize(serializer, result, output_type)

    def sleep(self, step_id: str, duration: int | datetime.timedelta) -> None:
        """Sleep ``duration``: MILLISECONDS if an int, or a timedelta."""
        self.enter(step_id)
        self._steps.sleep(step_id, _duration(duration, f"step.sleep({step_id!r})"))
        self._begin()

    def sleep_until(self, step_id: str, until: datetime.datetime) -> None:
        self.enter(step_id)
        self._steps.sleep_until(step_id, _until(until, step_id))
        self._begin()

    def wait_for_event(
        self,
        step_id: str,
        *,
        event: str,
        if_exp: str | None = None,
        timeout: int | datetime.timedelta,
    ) -> Event | None:
        """The first matching event after the wait began, or None at the ``timeout``
        (MILLISECONDS if an int). ``if_exp`` sees ``event`` (this run's) and ``async``."""
        match, if_ = split_condition(if_exp)
        self.enter(step_id)
        found = self._steps.wait_for_event(
            step_id,
            event=core_name(event),
            timeout=_duration(timeout, f"step.wait_for_event({step_id!r}) timeout"),
            match=match,
            if_=if_,
        )
        self._begin()
        return None if found is None else to_sdk_event(found)

    def invoke(
        self,
        step_id: str,
        *,
        function: Function[Any],
        data: dict[str, Any] | None = None,
        timeout: int | datetime.timedelta | None = None,
        v: str | None = None,
    ) -> Any:
        """Run ``function`` as a child with ``data`` and return its output (a failure
        or the ``timeout``, MILLISECONDS if an int, raises StepError)."""
        limit = _invoke_args(step_id, v, timeout)
        data = self._invoke_payload(step_id, function.id, data)
        with invoke_errors():
            output = self._steps.invoke(step_id, function=function.id, data=data, timeout=limit)
        self._begin()
        # the invoked function's output_type, as the SDK reads it
        return deserialize(self._client.serializer, output, function.output_type)

    def invoke_by_id(
        self,
        step_id: str,
        *,
        app_id: str | None = None,
        function_id: str,
        data: dict[str, Any] | None = None,
        timeout: int | datetime.timedelta | None = None,
        v: str | None = None,
    ) -> Any:
        """As ``invoke``, by the function's id within ``app_id`` (default: this app)."""
        limit = _invoke_args(step_id, v, timeout)
        target = f"{app_id or self._client.app_id}-{function_id}"
        data = self._invoke_payload(step_id, target, data)
        with invoke_errors():
            output = self._steps.invoke(step_id, function=target, data=data, timeout=limit)
        self._begin()
        return output

    def _invoke_payload(
        self, step_id: str, target: str, data: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        """A new invoke's data, as ``transform_output`` (op INVOKE) leaves its opts."""
        key = self.enter(step_id)
        mw = self._mw
        if mw is None or key is None or mw.replays(key):
            return data
        opts = _invoke_opts(target, data)
        mw.output_result(EMPTY, step_info(step_id, Opcode.INVOKE, opts))
        return _invoke_data(opts, data)

    def send_event(self, step_id: str, events: Event | list[Event]) -> list[str]:
        """Send events exactly once for this run; returns their ids."""
        key = self.enter(step_id)
        mw = self._mw
        if mw is None or key is None or mw.replays(key):
            ids = self._steps.send_event(step_id, _events(step_id, events))
            self._begin()
            return ids
        items = events if isinstance(events, list) else [events]
        mw.call_sync("before_send_events", items)
        try:
            ids = self._steps.send_event(step_id, _events(step_id, items))
        except Exception as exc:
            mw.call_sync("after_send_events", SendEventsResult(error=str(exc)))
            raise
        mw.call_sync("after_send_events", SendEventsResult(ids=ids))
        self._begin()
        return ids


class Step:
    """``ctx.step`` of an ``async def`` function (``inngest.Context``)."""

    def __init__(
        self,
        steps: AsyncSteps,
        client: Inngest,
        mw: MiddlewareManager | None = None,
        logger: RunLogger | None = None,
    ) -> None:
        self._steps = steps
        self._client = client
        self._mw = mw
        self._logger = logger
        self.ai = AI()

    async def _begin(self) -> None:
        mw = self._mw
        if mw is not None and self._logger is not None and mw.begins(self._logger.replaying):
            await mw.call("before_execution")

    async def enter(self, step_id: str) -> str | None:
        if self._mw is None:
            return None
        await self._begin()
        return self._mw.key(step_id)

    async def run(
        self,
        step_id: str,
        handler: Callable[..., Any],
        *handler_args: Any,
        output_type: object = EMPTY,
    ) -> Any:
        serializer = self._client.serializer
        await self.enter(step_id)
        fresh: list[Any] = []
        if self._mw is None:
            checked = _json_checked(step_id, handler, serializer, output_type)
        else:
            checked = _mw_checked_async(step_id, handler, serializer, output_type, self._mw, fresh)
        with sdk_errors():
            result = await self._steps.run(step_id, checked, *handler_args)
        if fresh:
            result = plain(fresh[0], f"step {step_id!r} result")
        await self._begin()
        return deserialize(serializer, result, output_type)

    async def sleep(self, step_id: str, duration: int | datetime.timedelta) -> None:
        await self.enter(step_id)
        await self._steps.sleep(step_id, _duration(duration, f"step.sleep({step_id!r})"))
        await self._begin()

    async def sleep_until(self, step_id: str, until: datetime.datetime) -> None:
        await self.enter(step_id)
        await self._steps.sleep_until(step_id, _until(until, step_id))
        await self._begin()

    async def wait_for_event(
        self,
        step_id: str,
        *,
        event: str,
        if_exp: str | None = None,
        timeout: int | datetime.timedelta,
    ) -> Event | None:
        match, if_ = split_condition(if_exp)
        await self.enter(step_id)
        found = await self._steps.wait_for_event(
            step_id,
            event=core_name(event),
            timeout=_duration(timeout, f"step.wait_for_event({step_id!r}) timeout"),
            match=match,
            if_=if_,
        )
        await self._begin()
        return None if found is None else to_sdk_event(found)

    async def invoke(
        self,
        step_id: str,
        *,
        function: Function[Any],
        data: dict[str, Any] | None = None,
        timeout: int | datetime.timedelta | None = None,
        v: str | None = None,
    ) -> Any:
        limit = _invoke_args(step_id, v, timeout)
        data = await self._invoke_payload(step_id, function.id, data)
        with invoke_errors():
            output = await self._steps.invoke(
                step_id, function=function.id, data=data, timeout=limit
            )
        await self._begin()
        return deserialize(self._client.serializer, output, function.output_type)

    async def invoke_by_id(
        self,
        step_id: str,
        *,
        app_id: str | None = None,
        function_id: str,
        data: dict[str, Any] | None = None,
        timeout: int | datetime.timedelta | None = None,
        v: str | None = None,
    ) -> Any:
        limit = _invoke_args(step_id, v, timeout)
        target = f"{app_id or self._client.app_id}-{function_id}"
        data = await self._invoke_payload(step_id, target, data)
        with invoke_errors():
            output = await self._steps.invoke(step_id, function=target, data=data, timeout=limit)
        await self._begin()
        return output

    async def _invoke_payload(
        self, step_id: str, target: str, data: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        key = await self.enter(step_id)
        mw = self._mw
        if mw is None or key is None or mw.replays(key):
            return data
        opts = _invoke_opts(target, data)
        await mw.output_result_async(EMPTY, step_info(step_id, Opcode.INVOKE, opts))
        return _invoke_data(opts, data)

    async def send_event(self, step_id: str, events: Event | list[Event]) -> list[str]:
        key = await self.enter(step_id)
        mw = self._mw
        if mw is None or key is None or mw.replays(key):
            ids = await self._steps.send_event(step_id, _events(step_id, events))
            await self._begin()
            return ids
        items = events if isinstance(events, list) else [events]
        await mw.call("before_send_events", items)
        try:
            ids = await self._steps.send_event(step_id, _events(step_id, items))
        except Exception as exc:
            await mw.call("after_send_events", SendEventsResult(error=str(exc)))
            raise
        await mw.call("after_send_events", SendEventsResult(ids=ids))
        await self._begin()
        return ids


def _mode(parallel_mode: ParallelMode) -> str:
    if not isinstance(parallel_mode, ParallelMode):
        raise NonRetriableError(f"group.parallel: unknown parallel_mode {parallel_mode!r}")
    return "all"


class GroupSync:
    """``ctx.group`` of a ``def`` function."""

    def __init__(self, steps: Steps, step: StepSync | None = None) -> None:
        self._steps = steps
        self._step = step

    def parallel(
        self,
        callables: Sequence[Callable[[], Any]],
        parallel_mode: ParallelMode = ParallelMode.WAIT,
    ) -> tuple[Any, ...]:
        """Run each callable (typically ``lambda: ctx.step.run(...)``) as a branch of
        its own, on any worker; returns their results as a tuple, in order."""
        if self._step is not None:
            self._step.enter(PARALLEL_STEP_ID)
        with sdk_errors():
            results = self._steps.parallel(
                PARALLEL_STEP_ID, tuple(callables), mode=_mode(parallel_mode)
            )
        return tuple(results)


class Group:
    """``ctx.group`` of an ``async def`` function."""

    def __init__(self, steps: AsyncSteps, step: Step | None = None) -> None:
        self._steps = steps
        self._step = step

    async def parallel(
        self,
        callables: Sequence[Callable[[], Awaitable[Any]]],
        parallel_mode: ParallelMode = ParallelMode.WAIT,
    ) -> tuple[Any, ...]:
        if self._step is not None:
            await self._step.enter(PARALLEL_STEP_ID)
        with sdk_errors():
            results = await self._steps.parallel(
                PARALLEL_STEP_ID, tuple(callables), mode=_mode(parallel_mode)
            )
        return tuple(results)
