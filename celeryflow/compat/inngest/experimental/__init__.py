"""``inngest.experimental``: the step decorator and the step context, as the SDK has them.

    from celeryflow.compat.inngest import experimental   # was: import inngest.experimental

    @experimental.step("fetch-user")
    def fetch_user(user_id: int) -> dict: ...   # a step.run inside a function, a call outside

    step = experimental.get_step_context()      # the running function's ctx.step

``experimental.ai`` (model adapters for ``step.ai.infer``) is not supported: any
name taken from it raises :class:`~celeryflow.compat.inngest.NotSupportedError`.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterator
from typing import ParamSpec, TypeVar, cast

from ....errors import CeleryflowError
from .._steps import Step, StepSync
from . import ai

__all__ = ["ai", "bound", "get_step_context", "set_step_context", "step"]

P = ParamSpec("P")
R = TypeVar("R")

_step_context = contextvars.ContextVar[Step | StepSync]("celeryflow.compat.inngest.step")


def get_step_context() -> Step | StepSync:
    """The ``ctx.step`` of the function running in this thread (or task); LookupError
    outside one, as in the SDK."""
    return _step_context.get()


@contextlib.contextmanager
def bound(steps: Step | StepSync) -> Iterator[None]:
    """The facade sets the step context around each execution of a function (an
    eager send inside a step may run another run inline, so this one nests)."""
    token = _step_context.set(steps)
    try:
        yield
    finally:
        _step_context.reset(token)


@contextlib.contextmanager
def set_step_context(steps: Step | StepSync) -> Iterator[None]:
    """Set the step context for the block; refused if one is already set (the SDK's rule)."""
    try:
        _step_context.get()
    except LookupError:
        pass
    else:
        raise CeleryflowError("inngest.experimental.set_step_context: step context already set")
    with bound(steps):
        yield


def step(step_id: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Make a function a step: called inside an Inngest function it runs as
    ``step.run(step_id, ...)`` (memoized; an async function's call must be awaited);
    called anywhere else, it is called directly."""

    def decorator(func: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            handler = functools.partial(func, *args, **kwargs)
            try:
                steps = _step_context.get()
            except LookupError:
                return handler()
            return cast(R, steps.run(step_id, handler))

        return wrapper

    return decorator
