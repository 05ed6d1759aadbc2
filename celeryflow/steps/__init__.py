"""The steps: ``context.py`` is what user code sees (``Context``, ``ctx.step``),
and one module per step kind does the work: ``run``, ``sleep``, ``wait`` (for an
event), ``send`` (events), ``invoke`` (a function), ``task`` (a legacy Celery task)
and ``parallel``. Each kind reaches the run through ``protocol.py``'s
``StepProtocol``, which the engine's ``Execution`` is (a type only: the engine imports
this package, never the reverse), and the store below."""

from .context import AsyncContext, AsyncSteps, BaseContext, Context, Failure, Steps

__all__ = ["AsyncContext", "AsyncSteps", "BaseContext", "Context", "Failure", "Steps"]
