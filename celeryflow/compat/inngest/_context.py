"""``inngest.Context`` / ``inngest.ContextSync``: what a function receives, built over
celeryflow's :class:`celeryflow.Context` for each execution."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...logs import RunLogger
from ...steps import AsyncSteps, BaseContext, Steps
from ._events import Event, to_sdk_event
from ._steps import Group, GroupSync, Step, StepSync

if TYPE_CHECKING:
    from ._client import Inngest
    from ._middleware import MiddlewareManager

__all__ = ["Context", "ContextSync"]


class _Base:
    def __init__(
        self, ctx: BaseContext[Any], client: Inngest, mw: MiddlewareManager | None = None
    ) -> None:
        self._ctx = ctx
        # an on_failure handler sees inngest/function.failed, as in the SDK
        events = [ctx.failure.event] if ctx.failure is not None else ctx.events
        self.event: Event = to_sdk_event(events[0])
        self.events: list[Event] = [to_sdk_event(e) for e in events]
        self.run_id: str = ctx.run_id
        self.job_id: str | None = None  # no Inngest queue job behind a celeryflow run
        self.request_id: str | None = None
        # the client's logger (its own methods called, no adapter in between), quiet
        # while settled steps replay, as the SDK's; records carry the run through
        # celeryflow's log record factory
        user = ctx.logger.logger if client.own_logger is None else client.own_logger
        self.logger: RunLogger = ctx.logger.wrap(user, until_settled=True)

    @property
    def attempt(self) -> int:
        """0-based; inside a retried step, that step's attempt (read live: the engine
        updates it as each step begins)."""
        return self._ctx.attempt


class ContextSync(_Base):
    """The context of a ``def`` function: ``ctx.step`` methods return values."""

    def __init__(
        self, ctx: BaseContext[Any], client: Inngest, mw: MiddlewareManager | None = None
    ) -> None:
        super().__init__(ctx, client, mw)
        if not isinstance(ctx.step, Steps):
            raise TypeError("ContextSync needs the steps of a def function")
        self.step = StepSync(ctx.step, client, mw, ctx.logger)
        self.group = GroupSync(ctx.step, self.step)


class Context(_Base):
    """The context of an ``async def`` function: ``await ctx.step.run(...)``."""

    def __init__(
        self, ctx: BaseContext[Any], client: Inngest, mw: MiddlewareManager | None = None
    ) -> None:
        super().__init__(ctx, client, mw)
        if not isinstance(ctx.step, AsyncSteps):
            raise TypeError("Context needs the steps of an async def function")
        self.step = Step(ctx.step, client, mw, ctx.logger)
        self.group = Group(ctx.step, self.step)
