"""The only module that talks to Celery: the tasks registered on the user's app,
the doorbell that sends them, the beat entry and the worker bootstep."""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from traceback import extract_tb
from typing import TYPE_CHECKING, Any, TypeVar, cast

import kombu.exceptions
from celery import Celery, bootsteps
from celery.app.utils import find_app
from celery.platforms import EX_UNAVAILABLE
from celery.utils.imports import symbol_by_name
from celery.worker.control import inspect_command

from .durations import utcnow
from .errors import CeleryflowError, ConfigError
from .infra import BROKER_ERRORS
from .reconciler import Reconciler, ReconcilerThread
from .store.database import display_url, store_error_line

if TYPE_CHECKING:
    from .flow import Flow

__all__ = [
    "CRON_TICK_TASK",
    "RECONCILE_TASK",
    "RECOVERY_SUFFIX",
    "RUN_TASK",
    "TASK_DONE",
    "TASK_FAILED",
    "CeleryDoorbell",
    "all_flows",
    "broker_error",
    "eager_off",
    "flow_of",
    "function_of_shadow",
    "install",
    "is_eager",
    "load_flow",
    "shadow_name",
    "start_test_worker",
    "wait_for_store",
    "worker_functions",
]

# Task names are on the wire: a deployed worker and a new sender must agree on them,
# so they never change; the Python names say what each task does.
RUN_TASK = "celeryflow.run"
RECONCILE_TASK = "celeryflow.reconcile"  # the reconciler's pass (a beat entry)
CRON_TICK_TASK = "celeryflow.tick"  # fire due cron slots (a beat entry when crons exist)
TASK_DONE = "celeryflow.task_done"  # link: a legacy task invoked as a step succeeded
TASK_FAILED = "celeryflow.task_failed"  # link_error: it failed for good
TASK_RESOLVE = "celeryflow.task_resolve"  # a retry of either, sent as a message
RECOVERY_SUFFIX = ".recovery"  # the recovery queue: the flow's queue name plus this
log = logging.getLogger("celeryflow.tasks")
RESOLVE_RETRIES = 100  # x 0.2 s
# A worker whose store does not answer at start retries as Celery does for its
# broker (broker_connection_retry): 2 s, 4 s, ... up to 30 s apart, 100 tries.
STORE_RETRY_START, STORE_RETRY_STEP, STORE_RETRY_MAX = 2.0, 2.0, 30.0
STORE_RETRIES = 100
EX_CONFIG = getattr(os, "EX_CONFIG", 78)  # sysexits.h: a configuration error

# kombu 5.7's failed flush of a publish batch (older kombu has no batches)
BATCH_FAILED: tuple[type[BaseException], ...] = tuple(
    error for error in [getattr(kombu.exceptions, "BatchPublishError", None)] if error
)

_flows: weakref.WeakKeyDictionary[Celery, Flow] = weakref.WeakKeyDictionary()
_imported: weakref.WeakSet[Celery] = weakref.WeakSet()  # apps whose task modules are in
_inline = threading.local()  # the queue of the inline executions this thread is running


def flow_of(app: Celery) -> Flow | None:
    """The Flow bound to ``app``, if any."""
    return _flows.get(app)


def all_flows() -> list[Flow]:
    """Every Flow of this process (one per Celery app)."""
    return list(_flows.values())


def load_flow(name: str) -> Flow:
    """The Flow of the Celery app ``name`` names, found as ``celery -A name`` finds it
    (``module``, ``module:attribute``, ``package`` with a ``celery`` module; the current
    directory first). Raises ConfigError in one line."""
    try:
        app = find_app(name)
    except CeleryflowError:
        raise  # the app module's own Flow(...) refused its settings: that says it best
    except ModuleNotFoundError as exc:
        if exc.name and name.split(":")[0].startswith(exc.name):
            raise ConfigError(
                f"-A {name}: no module named {exc.name!r} (run from the directory that "
                "holds it, or add that directory to PYTHONPATH)"
            ) from None
        raise ConfigError(f"-A {name}: importing it failed: {_where(exc)}") from None
    except AttributeError as exc:
        raise ConfigError(f"-A {name}: no Celery app there ({exc})") from None
    except Exception as exc:
        raise ConfigError(f"-A {name}: importing it failed: {_where(exc)}") from None
    if not isinstance(app, Celery):
        raise ConfigError(f"-A {name}: {app!r} is not a Celery app")
    flow = flow_of(app)
    if flow is None:
        raise ConfigError(f"-A {name}: the Celery app {app.main!r} has no Flow (Flow(app))")
    return flow


def _where(exc: BaseException) -> str:
    """``Type: message (file:line)`` of the innermost frame: one line, no traceback."""
    frames = [f for f in extract_tb(exc.__traceback__) if not f.filename.startswith("<")]
    place = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}{place}"


def broker_configured(app: Celery) -> bool:
    """Whether the user chose a broker (in the app's config or Celery's env variable)."""

    return bool(
        app.conf.broker_url or app.conf.broker_write_url or os.environ.get("CELERY_BROKER_URL")
    )


def finalize(app: Celery) -> None:
    """Import the app's task modules as a worker does (``imports``, ``include``,
    ``autodiscover_tasks``: app.finalize alone imports none), once, and finalize it."""
    if app not in _imported:
        _imported.add(app)
        app.loader.import_default_modules()
    if not app.finalized:
        app.finalize(auto=True)


def set_default_broker(app: Celery, url: str) -> None:
    app.conf.broker_url = url


RingMethod = TypeVar("RingMethod", bound=Callable[..., None])


def _after_commit(ring: RingMethod) -> RingMethod:
    """A doorbell rings after the store committed, so a broker that is down fails
    nothing: the run is due in the store and the reconciler rings it later. The
    first failure logs one WARNING line (no traceback), repeats log at DEBUG until
    a ring gets through again; the ring stops at the first failure, so a long list
    costs one publish retry policy, not one per run."""

    @functools.wraps(ring)
    def tolerant(
        self: CeleryDoorbell, run_ids: Sequence[str], eta: datetime | None = None, **named: Any
    ) -> None:
        try:
            ring(self, run_ids, eta, **named)
        except self.broker_errors() as exc:
            level = logging.DEBUG if self.broker_down else logging.WARNING
            self.broker_down = True
            log.log(
                level,
                "broker unreachable, %d run(s) not rung (%s: %s); they are due in the "
                "store and the reconciler rings them",
                len(run_ids),
                type(exc).__name__,
                exc,
            )
            return
        if self.broker_down and run_ids:
            self.broker_down = False
            log.info("broker reachable again")

    return cast(RingMethod, tolerant)


def shadow_name(function_id: str | None) -> str | None:
    """The name a run message shows in the worker log, Flower and ``celery inspect``
    (Celery's ``shadow``): ``celeryflow.run:<function id>``; None keeps the task name."""
    return f"{RUN_TASK}:{function_id}" if function_id else None


def function_of_shadow(shadow: str | None) -> str | None:
    prefix = f"{RUN_TASK}:"
    return shadow[len(prefix) :] if shadow and shadow.startswith(prefix) else None


class _Housekeeping(logging.Filter):
    """Celery's per-message INFO lines for celeryflow's housekeeping tasks (the
    ``celeryflow.reconcile`` and ``celeryflow.tick`` beat entries: "Sending due task",
    "Task ... received", "... succeeded") are logged at DEBUG: several a second, they
    would bury everything else in a worker's INFO log."""

    NAMES = frozenset({RECONCILE_TASK, CRON_TICK_TASK})

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or not self._housekeeping(record.args):
            return True
        if not logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
            return False
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return True

    def _housekeeping(self, args: Any) -> bool:
        if isinstance(args, Mapping):  # the worker's lines: {"name": ..., "id": ...}
            return args.get("name") in self.NAMES
        return isinstance(args, tuple) and len(args) == 2 and args[1] in self.NAMES  # beat's


_HOUSEKEEPING_LOGGERS = ("celery.beat", "celery.worker.strategy", "celery.app.trace")


def quiet_housekeeping() -> None:
    """Install the filter on Celery's loggers (once per process)."""
    for name in _HOUSEKEEPING_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Housekeeping) for f in logger.filters):
            logger.addFilter(_Housekeeping())


class CeleryDoorbell:
    """Sends ``celeryflow.run(run_id)`` messages: the broker is only the doorbell."""

    def __init__(self, app: Celery, queue: str | None, recovery_queue: str | None = None) -> None:
        self.app = app
        self.queue = queue
        self._recovery_queue = recovery_queue
        self.broker_down = False
        self._broker_errors: tuple[type[BaseException], ...] | None = None

    def recovery_queue(self) -> str:
        """The queue for runs whose executor died. Named after the flow's queue (read
        when needed: the app may be configured after the Flow is made), so apps that
        share a broker with queues of their own get recovery queues of their own."""
        if self._recovery_queue:
            return self._recovery_queue
        return f"{self.queue or self.app.conf.task_default_queue}{RECOVERY_SUFFIX}"

    def consume_recovery(self) -> None:
        """In a worker: consume the recovery queue too if the worker consumes the
        flow's queue (with or without ``-Q``); a worker that does not serve the flow
        is left alone."""
        queues = self.app.amqp.queues
        if (self.queue or self.app.conf.task_default_queue) in queues.consume_from:
            queues.select_add(self._declared(self.recovery_queue()))

    def _declared(self, name: str) -> Any:
        """The queue ``name`` from the app's routing table, added as Celery adds a
        missing queue (its type and exchange settings) even under
        ``task_create_missing_queues=False``."""
        queues = self.app.amqp.queues
        if name not in queues:
            queues.add(queues.new_missing(name))
        return queues[name]

    def broker_errors(self) -> tuple[type[BaseException], ...]:
        """BROKER_ERRORS and the connection errors of the app's transport."""
        if self._broker_errors is None:
            with self.app.connection_for_write() as connection:  # never connects here
                self._broker_errors = (*BROKER_ERRORS, *connection.connection_errors)
        return self._broker_errors

    @_after_commit
    def ring(
        self,
        run_ids: Sequence[str],
        eta: datetime | None = None,
        *,
        function_id: str | Mapping[str, str] | None = None,
        recovered: bool = False,
    ) -> None:
        """Send one message per run. ``function_id`` (of all the runs, or by run id)
        names each message after its function; callers pass it where they know it
        for free, and a run without one goes under the plain task name. ``recovered``
        runs (their executor died) go to the recovery queue, so they do not wait
        behind the backlog."""
        if not run_ids:
            return
        if is_eager(self.app):
            # Eager mode runs a run inline up to its first park; a park (an ETA ring)
            # is not run inline, or each wake-up would run it again, recursively. Its
            # stored wake time stays: testing.run_due, a worker or the reconciler
            # finish it.
            if eta is None:
                self.run_inline(run_ids)
            else:
                log.debug("eager mode: run(s) %s parked until %s", ", ".join(run_ids), eta)
            return
        task = self.app.tasks[RUN_TASK]
        options: dict[str, Any] = {}
        if recovered:
            options["queue"] = self._declared(self.recovery_queue()).name
        elif self.queue:
            options["queue"] = self.queue
        if eta is not None:
            options["eta"] = eta
        with self.app.producer_or_acquire() as producer:
            if len(run_ids) > 1 and getattr(producer, "supports_batch_publish", False):
                # kombu 5.7+ on Redis: one pipelined round trip for the list instead
                # of a client and a round trip per message. The flush has no publish
                # retries and an uncertain outcome when it fails, so the list then goes
                # again one by one, with them (a doorbell sent twice claims nothing the
                # second time). A broker down before the flush fails as before.
                try:
                    with producer.batch():
                        self._publish_each(task, producer, run_ids, options, function_id)
                    return
                except BATCH_FAILED as exc:
                    log.debug("batched doorbells failed (%s); publishing them one by one", exc)
            self._publish_each(task, producer, run_ids, options, function_id)

    @staticmethod
    def _publish_each(
        task: Any,
        producer: Any,
        run_ids: Sequence[str],
        options: dict[str, Any],
        function_id: str | Mapping[str, str] | None,
    ) -> None:
        for run_id in run_ids:
            named = function_id.get(run_id) if isinstance(function_id, Mapping) else function_id
            task.apply_async(
                (run_id,),
                producer=producer,
                shadow=shadow_name(named),
                # what Celery's saferepr makes of them (a run id is never cut
                # short), a tenth of the publish's CPU when Celery makes them
                argsrepr=repr((run_id,)),
                kwargsrepr="{}",
                **options,
            )

    def run_inline(self, run_ids: Sequence[str]) -> None:
        """Execute the runs in this thread (Celery's ``Task.apply``), one after the
        other: what they ring meanwhile runs after them, never nested."""
        task = self.app.tasks[RUN_TASK]
        inline([functools.partial(task.apply, (run_id,)) for run_id in run_ids])

    def send_task(
        self,
        task: Any,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        *,
        task_id: str,
        run_id: str,
        key: str,
    ) -> None:
        """Send a legacy task to its usual queue; its outcome resumes the run's step
        through link callbacks (no result backend needed)."""
        options = {"queue": self.queue} if self.queue else {}
        done = self.app.signature(TASK_DONE, args=(run_id, key), **options)
        failed = self.app.signature(TASK_FAILED, args=(run_id, key), **options)

        def send() -> None:
            task.apply_async(tuple(args), kwargs, task_id=task_id, link=done, link_error=failed)

        if is_eager(self.app):
            inline([send])  # after the run parks for it, as a worker would see it
        else:
            send()

    def resolve_later(
        self, run_id: str, key: str, outcome: dict[str, Any], attempt: int, delay: float
    ) -> None:
        options: dict[str, Any] = {"countdown": delay}
        if self.queue:
            options["queue"] = self.queue
        task = self.app.tasks[TASK_RESOLVE]
        if is_eager(self.app):
            inline([lambda: task.apply((run_id, key, outcome, attempt))])
        else:
            task.apply_async((run_id, key, outcome, attempt), **options)


def is_eager(app: Celery) -> bool:
    """Whether Celery executes tasks inline (``task_always_eager``)."""
    return bool(app.conf.task_always_eager)


def inline(actions: list[Callable[[], object]]) -> None:
    """Run ``actions`` in this thread, in order; actions added while they run are
    queued behind them, so inline executions never nest (no recursion, and a run
    rung by the run executing finds it parked, not half done)."""
    queue: deque[Callable[[], object]] | None = getattr(_inline, "queue", None)
    if queue is not None:
        queue.extend(actions)
        return
    _inline.queue = queue = deque(actions)
    try:
        while queue:
            queue.popleft()()
    finally:
        _inline.queue = None


@contextmanager
def eager_off(app: Celery) -> Iterator[None]:
    """Celery's eager mode off for the block, then restored: ``app.conf`` and, for an
    app configured with ``config_from_object(obj, namespace=NS)`` (Django's
    ``'django.conf:settings'``, ``'CELERY'``), the object's ``NS_TASK_ALWAYS_EAGER``."""
    before = app.conf.task_always_eager
    source: Any = getattr(app, "_config_source", None)
    if isinstance(source, str):
        source = symbol_by_name(source)
    name = f"{app.namespace}_TASK_ALWAYS_EAGER" if app.namespace else None
    missing = object()
    previous = getattr(source, name, missing) if source is not None and name else missing
    app.conf.task_always_eager = False
    if previous is not missing:
        setattr(source, name, False)  # type: ignore[arg-type]
    try:
        yield
    finally:
        app.conf.task_always_eager = before
        if previous is not missing:
            setattr(source, name, previous)  # type: ignore[arg-type]


def run_time_limits(limit: timedelta | None) -> dict[str, float]:
    """``celeryflow.run``'s own (hard, soft) Celery time limits for
    ``Flow(run_time_limit=...)``: the hard limit is the setting, the soft one 10%
    earlier (at most 30 s), so SoftTimeLimitExceeded fails the step at work (an
    attempt, retried) before the hard limit kills the process (the lease path)."""
    if limit is None:
        return {}
    hard = limit.total_seconds()
    return {"time_limit": hard, "soft_time_limit": hard - min(30.0, hard / 10)}


def install(flow: Flow) -> CeleryDoorbell:
    """Register celeryflow's tasks, beat entry and worker step on the user's app."""
    app = flow.app
    if app in _flows:
        raise ConfigError(f"Celery app {app.main!r} already has a Flow; make one Flow per app")
    _flows[app] = flow
    settings = flow.settings
    doorbell = CeleryDoorbell(app, settings.queue, settings.recovery_queue)
    quiet_housekeeping()

    @app.task(  # type: ignore[untyped-decorator]
        name=RUN_TASK,
        bind=True,
        ignore_result=True,
        acks_late=False,
        shared=False,
        **run_time_limits(settings.run_time_limit),
    )
    def run(task: Any, run_id: str) -> None:
        # Acked on receipt: the store, not the broker, keeps the run; a worker that
        # dies mid-step is covered by the lease and the reconciler, and no message
        # stays unacked long enough to meet RabbitMQ's consumer_timeout.
        wake = flow.engine.execute(run_id)
        if wake is not None:
            if wake - utcnow() <= settings.eta_horizon:
                fid = function_of_shadow(getattr(task.request, "shadow", None))
                doorbell.ring([run_id], eta=wake, function_id=fid)

    # A legacy task's outcome, for the step that invoked it. The link callback gets the
    # return value; the errback runs inline in the failing task's worker (Celery's
    # "new style" errback: request, exc, traceback), so it needs no result backend.
    @app.task(name=TASK_DONE, ignore_result=True, shared=False)  # type: ignore[untyped-decorator]
    def task_done(result: Any, run_id: str, key: str) -> None:
        resolve(run_id, key, {"result": result}, attempt=0)

    @app.task(name=TASK_FAILED, ignore_result=True, shared=False)  # type: ignore[untyped-decorator]
    def task_failed(
        request: Any, exc: BaseException, traceback: Any, run_id: str, key: str
    ) -> None:
        error = {"type": type(exc).__name__, "message": str(exc), "task_id": request.id}
        resolve(run_id, key, {"error": error}, attempt=0)

    @app.task(name=TASK_RESOLVE, ignore_result=True, shared=False)  # type: ignore[untyped-decorator]
    def task_resolve(run_id: str, key: str, outcome: dict[str, Any], attempt: int = 0) -> None:
        resolve(run_id, key, outcome, attempt=attempt)

    def resolve(run_id: str, key: str, outcome: dict[str, Any], *, attempt: int) -> None:
        # The task is sent just before its step's waiting row commits: a fast task's
        # outcome may come first, so retry for a while; past that the run moved on.
        if flow.resolve_task_step(run_id, key, outcome) != "early":
            return
        if attempt >= RESOLVE_RETRIES:
            log.warning("run %s step %r: no waiting step for the task's outcome", run_id, key)
            return
        doorbell.resolve_later(run_id, key, outcome, attempt + 1, 0.2)

    @app.task(name=RECONCILE_TASK, ignore_result=True, shared=False)  # type: ignore[untyped-decorator]
    def reconcile() -> int:
        return Reconciler(flow).run_once()

    @app.task(name=CRON_TICK_TASK, ignore_result=True, shared=False)  # type: ignore[untyped-decorator]
    def tick() -> int:
        return len(flow.tick())

    entry = {
        "task": RECONCILE_TASK,
        "schedule": settings.reconcile_interval.total_seconds(),
        "options": {"queue": settings.queue} if settings.queue else {},
    }

    def add_beat_entry(**_: Any) -> None:
        # Added, never replacing the user's own schedule or entries.
        if app.conf.beat_schedule is None:
            app.conf.beat_schedule = {}
        app.conf.beat_schedule.setdefault(RECONCILE_TASK, entry)
        if flow.has_crons():  # cron functions are defined by now: the app module ran
            app.conf.beat_schedule.setdefault(
                CRON_TICK_TASK,
                {
                    "task": CRON_TICK_TASK,
                    "schedule": settings.tick_interval.total_seconds(),
                    "options": entry["options"],
                },
            )

    app.on_after_finalize.connect(add_beat_entry, weak=False)
    if app.finalized:
        add_beat_entry()

    class StoreCheckStep(bootsteps.Step):  # type: ignore[misc]
        """The store answers and is migrated, checked while the worker is built:
        before its pool forks (an exit then leaves no child behind) and long before
        it says ``ready``."""

        def create(self, worker: Any) -> None:
            wait_for_store(flow)

    app.steps["worker"].add(StoreCheckStep)

    class RecoveryQueueStep(bootsteps.Step):  # type: ignore[misc]
        """Adds the recovery queue to the worker's queues, after ``-Q`` is applied
        and before the consumer starts."""

        def __init__(self, worker: Any, **kwargs: Any) -> None:
            doorbell.consume_recovery()

    app.steps["worker"].add(RecoveryQueueStep)

    if settings.reconcile_in_worker:

        class ReconcilerStep(bootsteps.StartStopStep):  # type: ignore[misc]
            """Runs the reconciler inside the worker, so beat is optional.

            Started after the pool: a prefork child forked while this thread is
            mid-send or mid-transaction inherits its locks held (kombu's
            ``cached_property`` lock, SQLite's) and hangs at its first use of them.
            Without ``Pool`` here, the order depends on the hash seed."""

            requires = (StoreCheckStep, "celery.worker.components:Pool")

            def __init__(self, worker: Any, **kwargs: Any) -> None:
                self.thread: ReconcilerThread | None = None

            def start(self, worker: Any) -> None:
                self.thread = ReconcilerThread(flow)
                reconcilers[worker.hostname] = self.thread.reconciler
                self.thread.start()

            def stop(self, worker: Any) -> None:
                if self.thread is not None:
                    self.thread.stop()

            # A cold shutdown (and Celery's test worker) calls terminate, not stop.
            terminate = stop

        app.steps["worker"].add(ReconcilerStep)
        reconcilers: dict[str, Reconciler] = {}

        class ConsumingStep(bootsteps.StartStopStep):  # type: ignore[misc]
            """Tells the worker's reconciler when the task consumer started (again,
            after a broker reconnect): the backlog queued before that is in line for
            this worker, not lost, even if nothing is claimed yet."""

            requires = ("celery.worker.consumer.tasks:Tasks",)

            def start(self, consumer: Any) -> None:
                reconciler = reconcilers.get(consumer.hostname)
                if reconciler is not None:
                    reconciler.consuming_since = utcnow()

        app.steps["consumer"].add(ConsumingStep)
    return doorbell


def wait_for_store(flow: Flow) -> None:
    """Connect to the store and check its schema (or migrate it, with auto_migrate)
    before the worker says ``ready``. Not migrated, or any setup error: one line and
    the worker exits (EX_CONFIG). Unreachable: one line per attempt, retried with
    back-off like the broker connection; after the last attempt it exits
    (EX_UNAVAILABLE). Ctrl-C or SIGTERM ends the waiting (the worker has no
    children yet and no signal handlers of its own)."""
    where = display_url(flow.store.url)
    delay = STORE_RETRY_START
    for attempt in range(1, STORE_RETRIES + 1):
        try:
            flow.store.check()
            if attempt > 1:
                log.info("connected to the celeryflow store at %s", where)
            return
        except ConfigError as exc:
            log.critical("%s", exc)
            raise SystemExit(EX_CONFIG) from None
        except Exception as exc:
            line = store_error_line(exc)
            if line is None:
                raise
            if attempt == STORE_RETRIES:
                log.critical("%s; giving up after %d attempts", line, attempt)
                raise SystemExit(EX_UNAVAILABLE) from None
            log.error(
                "%s. Trying again in %.2f seconds... (%d/%d)",
                line,
                delay,
                attempt,
                STORE_RETRIES,
            )
        try:
            time.sleep(delay)
        except KeyboardInterrupt:
            raise SystemExit(EX_UNAVAILABLE) from None
        delay = min(delay + STORE_RETRY_STEP, STORE_RETRY_MAX)


@contextmanager
def start_test_worker(
    app: Celery, *, pool: str = "threads", concurrency: int = 2, **options: Any
) -> Iterator[Any]:
    """A real Celery worker in a thread of this process (Celery's own test worker)."""
    from celery.contrib.testing.worker import start_worker

    with start_worker(
        app,
        pool=pool,
        concurrency=concurrency,
        perform_ping_check=options.pop("perform_ping_check", False),
        loglevel=options.pop("loglevel", "WARNING"),
        shutdown_timeout=options.pop("shutdown_timeout", 30.0),
        **options,
    ) as worker:
        yield worker


# -- asking the broker and the workers (celeryflow doctor) ------------------------------

FUNCTIONS_COMMAND = "celeryflow_functions"


@inspect_command(name=FUNCTIONS_COMMAND)  # type: ignore[untyped-decorator]
def _functions_of_worker(state: Any, **_: Any) -> dict[str, Any]:
    """A remote-control reply: the function ids this worker's Flow runs."""
    flow = flow_of(state.app)
    return {"functions": sorted(flow.functions) if flow is not None else []}


def broker_error(app: Celery, timeout: float) -> str | None:
    """None if the app's broker accepts a connection within ``timeout`` seconds,
    else why not, in one line."""
    try:
        with app.connection_for_write(connect_timeout=timeout) as conn:
            conn.ensure_connection(
                max_retries=1, interval_start=0, interval_step=0, timeout=timeout
            )
    except Exception as exc:
        return " ".join(f"{type(exc).__name__}: {exc}".split())
    return None


def worker_functions(app: Celery, timeout: float) -> dict[str, list[str]]:
    """The workers that answer a broadcast within ``timeout`` seconds, each with the
    function ids it runs (empty for a worker of an older celeryflow)."""
    replies = app.control.broadcast(FUNCTIONS_COMMAND, reply=True, timeout=timeout) or []
    found: dict[str, list[str]] = {}
    for reply in replies:
        for worker, answer in reply.items():
            names = answer.get("functions") if isinstance(answer, dict) else None
            found[str(worker)] = [str(n) for n in names] if isinstance(names, list) else []
    return found
