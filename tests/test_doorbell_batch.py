"""The doorbells of one send go to Redis in one pipelined round trip (kombu 5.7's
``Producer.batch()``). Its flush has no retry and an uncertain outcome when it fails,
so the doorbells are then published again one by one, with Celery's retry policy: a
run rung twice claims nothing the second time, a run not rung would wait for the
reconciler (issue 17)."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import pytest
from flowkit import make_flow
from services import Stack
from tcpproxy import tcp_proxy

from celeryflow import Event, Flow, Run, event
from celeryflow.testing import wait_for, worker

LPUSH = b"$5\r\nLPUSH\r\n"
SLOW = {"reconcile_interval": "60s", "redeliver_after": "600s"}  # out of the test's time


def _with_batch_function(flow: Flow) -> None:
    @flow.function(id="batched", trigger=event("t/batched"))
    def batched(ctx):  # type: ignore[no-untyped-def]
        return ctx.step.run("n", lambda: ctx.event.data["n"])


def _completed(flow: Flow, n: int) -> list[Run] | None:
    runs = flow.list_runs(function_id="batched", status="completed")
    return runs if len(runs) == n else None


@pytest.mark.parametrize("stack", ["redis-postgres"], indirect=True)
def test_a_failed_batch_of_doorbells_is_published_again_one_by_one(stack: Stack) -> None:
    flow = make_flow(stack, **SLOW)  # the worker's, straight to Redis
    _with_batch_function(flow)
    if not getattr(flow.app.amqp.Producer, "batch", None):
        pytest.skip("kombu before 5.7 publishes doorbells one by one")
    broker = urlsplit(stack.broker_url)
    # a connection that sends two LPUSHes in one go (a batch's flush) is dropped
    with tcp_proxy(
        (str(broker.hostname), int(broker.port or 6379)), refuse=lambda d: d.count(LPUSH) >= 2
    ) as proxy:
        through = urlunsplit(broker._replace(netloc=f"127.0.0.1:{proxy.port}"))
        sender = make_flow(Stack(stack.name, through, stack.store_url, stack.queue), **SLOW)
        _with_batch_function(sender)
        with worker(flow):
            event_ids = sender.send([Event(name="t/batched", data={"n": n}) for n in range(3)])
            done = wait_for(
                lambda: _completed(flow, 3),
                timeout=30,
                what="the three runs, rung one by one after the batch failed",
            )
        assert proxy.refused >= 1, "the batch was never refused: the test tested nothing"
    assert sorted(r.output for r in done) == [0, 1, 2]
    assert {r.event_id for r in done} == set(event_ids)
