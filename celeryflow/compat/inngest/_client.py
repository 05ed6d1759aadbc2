"""``inngest.Inngest`` (the client) and ``inngest.Function``.

The client records functions at decoration time, as the SDK does; ``serve()``
registers them on a :class:`celeryflow.Flow` and binds the client to it, after which
``client.send_sync`` / ``client.send`` go to ``Flow.send``.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import inspect
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from pydantic import ValidationError

from ... import events as core_events
from ...errors import ConfigError, EventError, describe
from ...events import prepare_events
from ...functions import DEFAULT_RETRIES, FlowFunction
from . import experimental
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
from ._errors import PREFIX, NotServedError, SendEventsError
from ._events import Event, SendEventsResult, to_core_event
from ._middleware import (
    MEMO_HOOK,
    Middleware,
    MiddlewareManager,
    MiddlewareSync,
    StepMemos,
    TransformOutputResult,
    UninitializedMiddleware,
)
from ._serializers import (
    EMPTY,
    PydanticSerializer,
    Serializer,
    serialize,
    unserializable,
)

if TYPE_CHECKING:
    from ...flow import Flow
    from ...steps import BaseContext

__all__ = [
    "Function",
    "Inngest",
    "Middleware",
    "MiddlewareSync",
    "PydanticSerializer",
    "SendEventsResult",
    "Serializer",
    "StepMemos",
    "Streaming",
    "TransformOutputResult",
]

T = TypeVar("T")
Handler = Callable[[ContextSync], Any] | Callable[[Context], Awaitable[Any]]


class Streaming(enum.Enum):
    """Accepted by ``serve(streaming=...)`` and unused: there is no HTTP response."""

    DISABLE = "disable"
    FORCE = "force"


def _listed(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _checked(fn_id: str, option: str, value: Any, kind: type[Any]) -> Any:
    """The option as celeryflow's model; a celeryflow model (whose bare numbers are
    seconds, not milliseconds) or anything else is refused, naming the option."""
    if value is None:
        return None
    if not isinstance(value, kind):
        raise ConfigError(
            f"{PREFIX}: function {fn_id!r}: {option} must be inngest.{kind.__name__}, "
            f"got {type(value).__module__}.{type(value).__name__}"
        )
    return value.to_core()


class Function(Generic[T]):
    """A function defined with ``@client.create_function``; give it to ``serve()``."""

    def __init__(
        self,
        client: Inngest,
        *,
        fn_id: str,
        name: str | None,
        handler: Handler,
        on_failure: Handler | None,
        triggers: list[Any],
        retries: int | None,
        options: dict[str, Any],
        output_type: object = EMPTY,
        middleware: list[UninitializedMiddleware] | None = None,
    ) -> None:
        self._client = client
        self._middleware = _middleware_list(middleware, f"create_function(fn_id={fn_id!r})")
        self._fn_id = fn_id
        self._name = name or fn_id
        self._handler = handler
        self._on_failure = on_failure
        self._triggers = triggers
        self._retries = DEFAULT_RETRIES if retries is None else retries
        self._options = options
        self.output_type = output_type
        self._served: weakref.WeakKeyDictionary[Flow, FlowFunction] = weakref.WeakKeyDictionary()

    @property
    def id(self) -> str:
        """The fully qualified id, ``"<app_id>-<fn_id>"``: the celeryflow function id."""
        return f"{self._client.app_id}-{self._fn_id}"

    @property
    def local_id(self) -> str:
        return self._fn_id

    @property
    def name(self) -> str:
        return self._name

    @property
    def is_handler_async(self) -> bool:
        return inspect.iscoroutinefunction(self._handler)

    @property
    def on_failure_fn_id(self) -> str | None:
        return None if self._on_failure is None else f"{self.id}-failure"

    def get_id(self) -> str:
        return self.id

    def register(self, flow: Flow, client: Inngest) -> FlowFunction:
        """Register on ``flow`` (once per flow; ``serve()`` calls this)."""
        served = self._served.get(flow)
        if served is not None:
            return served
        failure_id = self.on_failure_fn_id
        if client.middleware or self._middleware:
            client.watch_memos(flow)
        function = flow.function(
            id=self.id,
            trigger=self._triggers,
            retries=self._retries,
            on_failure=failure_id,
            **self._options,
        )(_wrap(self._handler, self, client, self.output_type))
        if self._on_failure is not None and failure_id is not None:
            # the SDK gives the failure handler no retries, and serializes its output
            # as `object` (it is never invoked, so never read back)
            flow.function(id=failure_id, retries=0)(_wrap(self._on_failure, self, client, object))
        self._served[flow] = function
        return function

    def __repr__(self) -> str:
        return f"<inngest.Function {self.id}>"


def _json_output(
    output: Any, client: Inngest, output_type: object, mw: MiddlewareManager | None = None
) -> Any:
    output = serialize(client.serializer, output, output_type)
    if mw is not None:
        output = mw.output_result(output, None)
    error = unserializable(output, None)
    if error is not None:
        raise error
    return output


async def _json_output_async(
    output: Any, client: Inngest, output_type: object, mw: MiddlewareManager
) -> Any:
    output = serialize(client.serializer, output, output_type)
    output = await mw.output_result_async(output, None)
    error = unserializable(output, None)
    if error is not None:
        raise error
    return output


def _manager(client: Inngest, function: Function[Any]) -> MiddlewareManager | None:
    """This execution's middleware (client's first, then the function's), or None."""
    factories = [*client.middleware, *function._middleware]
    if not factories:
        return None
    manager = MiddlewareManager(client, factories)
    manager.outputs = MEMO_HOOK.take()
    return manager


def _wrap(
    handler: Handler, function: Function[Any], client: Inngest, output_type: object
) -> Callable[[BaseContext[Any]], Any]:
    """The celeryflow function: builds the SDK's context around celeryflow's, and
    calls the middleware around the handler (see _middleware.py)."""
    if inspect.iscoroutinefunction(handler):
        async_handler = cast(Callable[[Context], Awaitable[Any]], handler)

        @functools.wraps(handler)
        async def run_async(ctx: BaseContext[Any]) -> Any:
            mw = _manager(client, function)
            sdk_ctx = Context(ctx, client, mw)
            with experimental.bound(sdk_ctx.step):
                if mw is None:
                    return _json_output(await async_handler(sdk_ctx), client, output_type)
                await mw.call("transform_input", sdk_ctx, function, StepMemos(mw.outputs))
                if mw.begins(ctx.logger.replaying):
                    await mw.call("before_execution")
                try:
                    output = await async_handler(sdk_ctx)
                    if mw.begins(False):
                        await mw.call("before_execution")
                except Exception as exc:
                    await mw.quietly("after_execution")
                    error = await mw.error_result_async(exc, None)
                    await mw.quietly("before_response")
                    if error is not exc:
                        raise error from exc
                    raise
                except BaseException:
                    await mw.quietly("after_execution")
                    await mw.quietly("before_response")
                    raise
                await mw.call("after_execution")
                output = await _json_output_async(output, client, output_type, mw)
                await mw.call("before_response")
                return output

        return run_async

    sync_handler = cast(Callable[[ContextSync], Any], handler)

    @functools.wraps(handler)
    def run_sync(ctx: BaseContext[Any]) -> Any:
        mw = _manager(client, function)
        sdk_ctx = ContextSync(ctx, client, mw)
        with experimental.bound(sdk_ctx.step):
            if mw is None:
                return _json_output(sync_handler(sdk_ctx), client, output_type)
            mw.call_sync("transform_input", sdk_ctx, function, StepMemos(mw.outputs))
            if mw.begins(ctx.logger.replaying):
                mw.call_sync("before_execution")
            try:
                output = sync_handler(sdk_ctx)
                if mw.begins(False):
                    mw.call_sync("before_execution")
            except Exception as exc:
                mw.quietly_sync("after_execution")
                error = mw.error_result(exc, None)
                mw.quietly_sync("before_response")
                if error is not exc:
                    raise error from exc
                raise
            except BaseException:
                mw.quietly_sync("after_execution")
                mw.quietly_sync("before_response")
                raise
            mw.call_sync("after_execution")
            output = _json_output(output, client, output_type, mw)
            mw.call_sync("before_response")
            return output

    return run_sync


def _middleware_list(middleware: Any, where: str) -> list[UninitializedMiddleware]:
    """The SDK's middleware list: classes (or factories) called with
    ``(client, raw_request)``."""
    items = list(middleware or [])
    for item in items:
        if not callable(item):
            raise ConfigError(
                f"{PREFIX}: {where}: middleware must be a list of inngest.Middleware or "
                f"inngest.MiddlewareSync classes (or factories), got {item!r}"
            )
    return items


class Inngest:
    """The client. Connection settings (keys, URLs, env, timeouts) are accepted and
    unused: events go to the Flow that ``serve()`` bound, not over HTTP."""

    def __init__(
        self,
        *,
        api_base_url: str | None = None,
        app_id: str,
        app_version: str | None = None,
        env: str | None = None,
        event_api_base_url: str | None = None,
        event_key: str | None = None,
        is_production: bool | None = None,
        logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
        middleware: list[Any] | None = None,
        request_timeout: Any = None,
        serializer: Serializer | None = None,
        signing_key: str | None = None,
    ) -> None:
        if not isinstance(app_id, str) or not app_id:
            raise ConfigError(f"{PREFIX}: Inngest(app_id=...) must be a non-empty string")
        self.middleware: list[UninitializedMiddleware] = _middleware_list(
            middleware, "Inngest(middleware=...)"
        )
        if serializer is not None and not all(
            callable(getattr(serializer, m, None)) for m in ("serialize", "deserialize")
        ):
            raise ConfigError(
                f"{PREFIX}: Inngest(serializer=...) needs an object with serialize(obj, typ) "
                f"and deserialize(obj, typ) methods (inngest.Serializer), got {serializer!r}"
            )
        self.serializer: Serializer | None = serializer
        self.app_id = app_id
        self.app_version = app_version
        self.env = env
        self.is_production = bool(is_production)
        # None: runs log through celeryflow's run logger (which carries the run id)
        self.own_logger: logging.Logger | logging.LoggerAdapter[Any] | None = logger
        self._flow: Flow | None = None

    # -- functions --------------------------------------------------------------------

    def create_function(
        self,
        *,
        batch_events: Batch | None = None,
        cancel: list[Cancel] | None = None,
        concurrency: list[Concurrency] | None = None,
        debounce: Debounce | None = None,
        fn_id: str,
        idempotency: str | None = None,
        middleware: list[Any] | None = None,
        name: str | None = None,
        on_failure: Handler | None = None,
        output_type: object = EMPTY,
        priority: Priority | None = None,
        rate_limit: RateLimit | None = None,
        retries: int | None = None,
        throttle: Throttle | None = None,
        timeouts: Timeouts | None = None,
        singleton: Singleton | None = None,
        trigger: TriggerEvent | TriggerCron | list[TriggerEvent | TriggerCron],
    ) -> Callable[[Handler], Function[Any]]:
        """As the SDK's: options are translated (and checked) here, registered on a
        Flow by ``serve()``. ``name`` is accepted and unused; ``output_type`` is the
        type the client's serializer writes and reads the output as."""
        middleware = _middleware_list(middleware, f"create_function(fn_id={fn_id!r})")
        triggers = []
        for t in _listed(trigger):
            if not isinstance(t, TriggerEvent | TriggerCron):
                raise ConfigError(
                    f"{PREFIX}: function {fn_id!r}: trigger must be inngest.TriggerEvent or "
                    f"inngest.TriggerCron, got {t!r}"
                )
            triggers.append(t.to_core())
        options = {
            "batch_events": _checked(fn_id, "batch_events", batch_events, Batch),
            "cancel_on": [_checked(fn_id, "cancel", c, Cancel) for c in _listed(cancel)],
            "concurrency": [
                _checked(fn_id, "concurrency", c, Concurrency) for c in _listed(concurrency)
            ],
            "debounce": _checked(fn_id, "debounce", debounce, Debounce),
            "idempotency": idempotency,
            "priority": _checked(fn_id, "priority", priority, Priority),
            "rate_limit": _checked(fn_id, "rate_limit", rate_limit, RateLimit),
            "throttle": _checked(fn_id, "throttle", throttle, Throttle),
            "timeouts": _checked(fn_id, "timeouts", timeouts, Timeouts),
            "singleton": _checked(fn_id, "singleton", singleton, Singleton),
        }

        def decorator(handler: Handler) -> Function[Any]:
            if on_failure is not None and inspect.iscoroutinefunction(
                handler
            ) != inspect.iscoroutinefunction(on_failure):
                raise ConfigError(
                    f"{PREFIX}: function {fn_id!r}: the on_failure handler must be async "
                    "exactly when the function is (as in the SDK)"
                )
            return Function(
                self,
                fn_id=fn_id,
                name=name,
                handler=handler,
                on_failure=on_failure,
                triggers=triggers,
                retries=retries,
                options=options,
                output_type=output_type,
                middleware=middleware,
            )

        return decorator

    def add_middleware(self, middleware: UninitializedMiddleware) -> None:
        """Add client middleware (it applies to every function, before theirs)."""
        self.middleware += _middleware_list([middleware], "Inngest.add_middleware")
        if self._flow is not None:
            self.watch_memos(self._flow)

    def watch_memos(self, flow: Flow) -> None:
        """Middleware needs each execution's replayed outputs (``transform_input``'s
        ``steps``): the flow hands them over through a hook."""
        if flow not in _watched:
            _watched.add(flow)
            flow.add_hook(MEMO_HOOK)

    @property
    def logger(self) -> logging.Logger | logging.LoggerAdapter[Any]:
        """The client's logger, as the SDK's (middleware calls ``client.logger``):
        the one given, else celeryflow's run logger."""
        return (
            self.own_logger if self.own_logger is not None else logging.getLogger("celeryflow.run")
        )

    def set_logger(self, logger: logging.Logger | logging.LoggerAdapter[Any]) -> None:
        self.own_logger = logger

    # -- events -----------------------------------------------------------------------

    def bind(self, flow: Flow) -> None:
        """Send to ``flow`` from now on (``serve()`` calls this; the latest wins)."""
        self._flow = flow
        if self.middleware:
            self.watch_memos(flow)

    @property
    def flow(self) -> Flow:
        if self._flow is None:
            raise NotServedError(
                f"{PREFIX}: Inngest(app_id={self.app_id!r}) is not served yet: call "
                "celeryflow.compat.inngest.celery.serve(celery_app, client, functions) "
                "before sending events"
            )
        return self._flow

    def send_sync(self, events: Event | list[Event], *, skip_middleware: bool = False) -> list[str]:
        """Record the events and start the runs they trigger; returns the event ids.

        An invalid event raises SendEventsError after the events before it are sent
        (``err.ids``); it and the rest are not, as Inngest's event API does. (Core's
        ``Flow.send`` writes nothing of a call with an invalid event.) The client's
        middleware sees them (``before_send_events`` may change them) unless
        ``skip_middleware``."""
        flow = self.flow
        items = events if isinstance(events, list) else [events]
        mw = None if skip_middleware or not self.middleware else self._send_manager()
        if mw is not None:
            mw.call_sync("before_send_events", items)
        valid, error = _valid_prefix(items)
        ids = flow.send([*valid]) if valid else []
        if mw is not None:
            mw.call_sync("after_send_events", SendEventsResult(error=error, ids=ids))
        if error is not None:
            raise SendEventsError(error, ids)
        return ids

    async def send(
        self, events: Event | list[Event], *, skip_middleware: bool = False
    ) -> list[str]:
        """As ``send_sync``, off the event loop (the store is written synchronously)."""
        items = events if isinstance(events, list) else [events]
        mw = None if skip_middleware or not self.middleware else self._send_manager()
        if mw is not None:
            await mw.call("before_send_events", items)
        try:
            ids = await asyncio.to_thread(self.send_sync, items, skip_middleware=True)
        except SendEventsError as exc:
            if mw is not None:
                await mw.call("after_send_events", SendEventsResult(error=str(exc), ids=exc.ids))
            raise
        if mw is not None:
            await mw.call("after_send_events", SendEventsResult(ids=ids))
        return ids

    def _send_manager(self) -> MiddlewareManager:
        return MiddlewareManager(self, self.middleware)


_watched: weakref.WeakSet[Flow] = weakref.WeakSet()


def _valid_prefix(events: Event | list[Event]) -> tuple[list[core_events.Event], str | None]:
    """The events up to the first invalid one, and what is wrong with it (or None)."""
    items = events if isinstance(events, list) else [events]
    valid: list[core_events.Event] = []
    for index, item in enumerate(items):
        try:
            [checked] = prepare_events([to_core_event(item)])
        except ValidationError as exc:
            problem = f"is invalid: {describe(exc)}"
        except (ConfigError, EventError) as exc:
            problem = str(exc).removeprefix("event #0 ")
        else:
            valid.append(checked)
            continue
        return valid, f"{PREFIX}: event #{index} {problem}; it and the ones after it were not sent"
    return valid, None
