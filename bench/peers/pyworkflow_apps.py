"""The workflows bench/peers/pyworkflow_driver.py runs; its Celery worker imports this
module through ``PYWORKFLOW_DISCOVER``."""

from __future__ import annotations

from typing import Any

from pyworkflow import hook, sleep, step, workflow
from pyworkflow.core.strategy import WorkflowRunStrategy

STEPS = 100


@step()
async def trivial(i: int) -> dict[str, Any]:
    # pyworkflow keys a step by its name and arguments: called 100 times with the
    # same ones it runs once and replays the other 99 from its cache
    return {"ok": True, "n": i}


@workflow(name="peers_hundred")
async def hundred() -> int:
    for i in range(STEPS):
        await trivial(i)
    return STEPS


@workflow(name="peers_hundred_one_thread", workflow_run_strategy=WorkflowRunStrategy.ONE_THREAD)
async def hundred_one_thread() -> int:
    for i in range(STEPS):
        await trivial(i)
    return STEPS


@workflow(name="peers_one_step")
async def one_step() -> dict[str, Any]:
    return await trivial(0)


@workflow(name="peers_sleeper")
async def sleeper(seconds: float) -> bool:
    await sleep(f"{int(seconds)}s")
    return True


@workflow(name="peers_waiter")
async def waiter() -> Any:
    return await hook("shipped")
