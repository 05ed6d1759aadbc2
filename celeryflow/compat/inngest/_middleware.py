"""The SDK's middleware (``inngest.Middleware`` / ``inngest.MiddlewareSync``) over
celeryflow's executions.

An Inngest *request* is a celeryflow *execution* here: one worker task that replays
the run's recorded steps and runs on until the run parks or ends, so one execution
may run several new steps where the SDK would make a request per step. The hooks
keep the SDK's meaning within it, and its order (client middleware first; the
``after_*`` hooks and ``transform_output`` in reverse)::

    transform_input(ctx, function, steps)   # the execution begins; steps: replayed outputs
    before_execution()                      # the replay is over: new code runs (once)
      transform_output(result)              # each new step.run result (or error), before stored
      before_send_events(events) / after_send_events(result)   # each new send
    after_execution()                       # the function returned, raised or parked
    transform_output(result)                # the function's output, or its error
    before_response()                       # last: the engine writes the outcome next

A step's own call returns what the step returned; ``transform_output`` changes what
is stored, and so what later executions replay (through ``transform_input``'s
``steps``, as in the SDK). Encryption middleware thus stores ciphertext and the
function sees plain values throughout. A hook that raises fails the execution as
the function's code raising would (a step's ``transform_output``: that step's
attempt), except while the execution is already leaving (a park, a raise), when it
is logged. Sync and async middleware both work in sync and async functions.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...codec import to_jsonable
from ...hooks import Hook, MemoLoaded, RunFinished, RunParked, StepOutputs
from ._errors import PREFIX, NotSupportedError
from ._serializers import EMPTY

if TYPE_CHECKING:
    from ._client import Function, Inngest
    from ._context import Context, ContextSync
    from ._events import Event, SendEventsResult

__all__ = [
    "MemoHook",
    "Middleware",
    "MiddlewareManager",
    "MiddlewareSync",
    "Opcode",
    "Output",
    "StepMemos",
    "TransformOutputResult",
    "TransformOutputStepInfo",
    "UninitializedMiddleware",
]

log = logging.getLogger("celeryflow.compat.inngest")


class Opcode(enum.Enum):
    """The SDK's step opcodes (``inngest._internal.server_lib.Opcode``), as
    ``TransformOutputStepInfo.op`` names the step."""

    AI_GATEWAY = "AIGateway"
    INVOKE = "InvokeFunction"
    PLANNED = "StepPlanned"
    SLEEP = "Sleep"
    STEP_RUN = "StepRun"
    STEP_ERROR = "StepError"
    WAIT_FOR_EVENT = "WaitForEvent"
    STEP_FAILED = "StepFailed"


@dataclass
class TransformOutputStepInfo:
    id: str
    op: Opcode
    opts: dict[str, object] | None


@dataclass
class TransformOutputResult:
    """What ``transform_output`` may change: ``output`` (and ``error``); ``step`` is
    None for the function's own output."""

    error: Exception | None
    output: object
    step: TransformOutputStepInfo | None

    def has_output(self) -> bool:
        return self.output is not EMPTY


class Output:
    """One replayed step's output, ``data``; setting it changes what the replay of
    that step returns in this execution (the store keeps what was recorded)."""

    error: None = None

    def __init__(self, outputs: StepOutputs, key: str) -> None:
        self._outputs = outputs
        self.key = key

    @property
    def data(self) -> Any:
        return self._outputs[self.key]

    @data.setter
    def data(self, value: Any) -> None:
        self._outputs[self.key] = value

    def __repr__(self) -> str:
        return f"Output(key={self.key!r}, data={self.data!r})"


class StepMemos:
    """``steps`` of ``transform_input``: the outputs of the run's completed steps,
    keyed by step key (``id``, ``id:N``; the SDK keys by a hash of it)."""

    def __init__(self, outputs: StepOutputs | None = None) -> None:
        self._outputs = outputs if outputs is not None else StepOutputs({})
        self._memos = {key: Output(self._outputs, key) for key in self._outputs}

    @property
    def size(self) -> int:
        return len(self._memos)

    def values(self) -> Iterator[Output]:
        return iter(list(self._memos.values()))

    def pop(self, hashed_id: str) -> Output | object:
        return self._memos.pop(hashed_id, EMPTY)


class Middleware:
    """Async middleware: override the hooks you need (see the module docstring)."""

    def __init__(self, client: Inngest, raw_request: object) -> None:
        # raw_request: the SDK's framework request; None here (no HTTP request)
        self.client = client
        self.raw_request = raw_request

    async def after_execution(self) -> None:
        return None

    async def after_send_events(self, result: SendEventsResult) -> None:
        return None

    async def before_execution(self) -> None:
        return None

    async def before_response(self) -> None:
        return None

    async def before_send_events(self, events: list[Event]) -> None:
        return None

    async def transform_input(
        self, ctx: Context | ContextSync, function: Function[Any], steps: StepMemos
    ) -> None:
        return None

    async def transform_output(self, result: TransformOutputResult) -> None:
        return None


class MiddlewareSync:
    """Sync middleware: override the hooks you need (see the module docstring)."""

    def __init__(self, client: Inngest, raw_request: object) -> None:
        self.client = client
        self.raw_request = raw_request

    def after_execution(self) -> None:
        return None

    def after_send_events(self, result: SendEventsResult) -> None:
        return None

    def before_execution(self) -> None:
        return None

    def before_response(self) -> None:
        return None

    def before_send_events(self, events: list[Event]) -> None:
        return None

    def transform_input(
        self, ctx: Context | ContextSync, function: Function[Any], steps: StepMemos
    ) -> None:
        return None

    def transform_output(self, result: TransformOutputResult) -> None:
        return None


UninitializedMiddleware = Callable[["Inngest", object], Middleware | MiddlewareSync]

# the "after" hooks run in reverse order, as the SDK's
_REVERSED = frozenset({"after_execution", "after_send_events", "transform_output"})


def _finish_sync(result: Any, where: str) -> None:
    """An async hook called from sync code: run it here, if no loop runs here."""
    if not inspect.isawaitable(result):
        return
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(_awaited(result))
        return
    close = getattr(result, "close", None)
    if close is not None:
        close()
    raise NotSupportedError(
        f"{PREFIX}: async middleware hook {where} called from sync code inside an event "
        "loop (use client.send, not send_sync, in an async function)"
    )


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


class MiddlewareManager:
    """The middleware of one execution (or one ``client.send``): instances made from
    the factories, in order, with the execution's state."""

    def __init__(
        self, client: Inngest, factories: list[UninitializedMiddleware], raw_request: object = None
    ) -> None:
        self.middleware = [factory(client, raw_request) for factory in factories]
        self.outputs: StepOutputs | None = None
        self._began = False
        self._seen: dict[str, int] = {}

    def _ordered(self, hook: str) -> list[Middleware | MiddlewareSync]:
        return list(reversed(self.middleware)) if hook in _REVERSED else list(self.middleware)

    def call_sync(self, hook: str, *args: Any) -> None:
        for m in self._ordered(hook):
            _finish_sync(getattr(m, hook)(*args), f"{type(m).__name__}.{hook}")

    async def call(self, hook: str, *args: Any) -> None:
        for m in self._ordered(hook):
            result = getattr(m, hook)(*args)
            if inspect.isawaitable(result):
                await result

    def quietly_sync(self, hook: str) -> None:
        """A hook while the execution is already leaving: a failure is logged."""
        try:
            self.call_sync(hook)
        except Exception:
            log.exception("middleware %s raised while the execution ended; ignored", hook)

    async def quietly(self, hook: str) -> None:
        try:
            await self.call(hook)
        except Exception:
            log.exception("middleware %s raised while the execution ended; ignored", hook)

    # -- the replay ------------------------------------------------------------------

    def key(self, step_id: str) -> str:
        """The key celeryflow gives this step call (``id``, then ``id:1``...); every
        step call of the facade passes here once, in the order the engine sees."""
        count = self._seen.get(step_id, 0)
        self._seen[step_id] = count + 1
        return step_id if count == 0 else f"{step_id}:{count}"

    def replays(self, key: str) -> bool:
        return self.outputs is not None and key in self.outputs

    def begins(self, replaying: bool) -> bool:
        """Whether ``before_execution`` is due: the first time the replay is over."""
        if self._began or replaying:
            return False
        self._began = True
        return True

    def output_result(self, output: Any, step: TransformOutputStepInfo | None) -> Any:
        result = TransformOutputResult(error=None, output=output, step=step)
        self.call_sync("transform_output", result)
        return result.output

    async def output_result_async(self, output: Any, step: TransformOutputStepInfo | None) -> Any:
        result = TransformOutputResult(error=None, output=output, step=step)
        await self.call("transform_output", result)
        return result.output

    def error_result(self, exc: Exception, step: TransformOutputStepInfo | None) -> Exception:
        """``transform_output`` of a raise (the SDK calls it with ``error`` set, which
        is how Sentry middleware reports); returns the error to raise. A hook
        that fails here is logged: the original error stands."""
        result = TransformOutputResult(error=exc, output=EMPTY, step=step)
        try:
            self.call_sync("transform_output", result)
        except Exception:
            log.exception("middleware transform_output raised on an error; ignored")
        return result.error if isinstance(result.error, Exception) else exc

    async def error_result_async(
        self, exc: Exception, step: TransformOutputStepInfo | None
    ) -> Exception:
        result = TransformOutputResult(error=exc, output=EMPTY, step=step)
        try:
            await self.call("transform_output", result)
        except Exception:
            log.exception("middleware transform_output raised on an error; ignored")
        return result.error if isinstance(result.error, Exception) else exc


def step_info(step_id: str, op: Opcode, opts: dict[str, object] | None = None) -> Any:
    return TransformOutputStepInfo(id=step_id, op=op, opts=opts)


def plain(value: Any, what: str) -> Any:
    """What a step's call returns in the execution that ran it: its own result, as
    the store would give it back (not the transformed one that is stored)."""
    return to_jsonable(value, what)


class MemoHook(Hook):
    """Hands each execution's replayed outputs to the facade (the engine loads them
    before the function is called, in the same thread)."""

    def __init__(self) -> None:
        self._local = threading.local()

    def memo_loaded(self, info: MemoLoaded) -> None:
        self._local.outputs = info.outputs

    def take(self) -> StepOutputs | None:
        outputs: StepOutputs | None = getattr(self._local, "outputs", None)
        self._local.outputs = None
        return outputs

    def run_parked(self, info: RunParked) -> None:
        self._local.outputs = None

    def run_finished(self, info: RunFinished) -> None:
        self._local.outputs = None


MEMO_HOOK = MemoHook()
