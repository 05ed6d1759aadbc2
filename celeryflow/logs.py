"""Logging: the run on every record, ``ctx.logger`` quiet on replay, alembic quiet.

* While a run executes, every log record (the user's loggers, celeryflow's, any
  library's) carries ``run_id`` and ``function_id``; outside a run both are ``"-"``,
  so a format such as ``"%(levelname)s %(run_id)s %(message)s"`` works everywhere.
  A log record factory (installed once by the first ``Flow``, chained to the factory
  in place then) reads them from a context variable the engine sets around each
  execution. Like ``message`` and ``asctime``, the two names are then taken on every
  record: logging refuses ``extra={"run_id": ...}``.
* ``ctx.logger`` (:class:`RunLogger`) forwards to a logger while the run does new work
  and drops lines while the function replays memoized steps, as Inngest's logger
  does: a line logged before a step is not logged again when the run resumes.
* Alembic's INFO lines are dropped while celeryflow checks or upgrades its own schema
  (the store logs one line of its own when a migration is applied), and alembic's
  plugin registration lines always; a user's own alembic runs log as before.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

__all__ = [
    "NO_RUN",
    "RunLogger",
    "current_run",
    "install",
    "quiet_alembic",
    "run_context",
]

NO_RUN = "-"  # run_id and function_id of a record logged outside any run

_run: ContextVar[tuple[str, str] | None] = ContextVar("celeryflow_run", default=None)
_install_lock = threading.Lock()
_installed = False
_alembic = threading.local()


def current_run() -> tuple[str, str] | None:
    """(run_id, function_id) of the run executing in this context, if any."""
    return _run.get()


@contextmanager
def run_context(run_id: str, function_id: str) -> Iterator[None]:
    """Records logged inside the block carry this run (threads and tasks the block
    starts with a copied context too)."""
    token = _run.set((run_id, function_id))
    try:
        yield
    finally:
        _run.reset(token)


def install() -> None:
    """Install the record factory (once per process)."""
    global _installed
    with _install_lock:
        if _installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            run = _run.get()
            record.run_id, record.function_id = run if run is not None else (NO_RUN, NO_RUN)
            return record

        logging.setLogRecordFactory(factory)
        _installed = True


class RunLogger:
    """``ctx.logger``: calls the same method of ``logger`` (a ``logging.Logger``, an
    adapter, or any object with logging's methods) except while ``replaying()``.

    ``settled_replaying`` is the Inngest SDK's narrower rule, used by
    ``celeryflow.compat.inngest``: quiet only until the last *settled* step has been
    replayed, so a line just before a step that is being retried is logged again on
    each attempt (the SDK's own logger case expects it); celeryflow's rule logs it
    once per run."""

    def __init__(
        self,
        logger: Any,
        replaying: Callable[[], bool],
        settled_replaying: Callable[[], bool] | None = None,
    ) -> None:
        self.logger = logger
        self._replaying = replaying
        self._settled_replaying = settled_replaying or replaying
        # stdlib loggers are told to name the caller's line, not this proxy's
        self._skip = 1 if isinstance(logger, (logging.Logger, logging.LoggerAdapter)) else 0

    def wrap(self, logger: Any, *, until_settled: bool = False) -> RunLogger:
        """Another logger, quiet on the same replay (on the SDK's narrower one with
        ``until_settled``)."""
        replaying = self._settled_replaying if until_settled else self._replaying
        return RunLogger(logger, replaying, self._settled_replaying)

    @property
    def replaying(self) -> bool:
        return self._replaying()

    def debug(self, msg: object, *args: object, **kwargs: Any) -> None:
        self._log(self.logger.debug, msg, args, kwargs)

    def info(self, msg: object, *args: object, **kwargs: Any) -> None:
        self._log(self.logger.info, msg, args, kwargs)

    def warning(self, msg: object, *args: object, **kwargs: Any) -> None:
        self._log(self.logger.warning, msg, args, kwargs)

    def error(self, msg: object, *args: object, **kwargs: Any) -> None:
        self._log(self.logger.error, msg, args, kwargs)

    def exception(self, msg: object, *args: object, **kwargs: Any) -> None:
        self._log(self.logger.exception, msg, args, kwargs)

    def critical(self, msg: object, *args: object, **kwargs: Any) -> None:
        self._log(self.logger.critical, msg, args, kwargs)

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if not self._replaying():
            if self._skip:
                kwargs["stacklevel"] = kwargs.get("stacklevel", 1) + 1
            self.logger.log(level, msg, *args, **kwargs)

    def _log(
        self, method: Callable[..., None], msg: object, args: tuple[object, ...], kw: Any
    ) -> None:
        if not self._replaying():
            if self._skip:
                kw["stacklevel"] = kw.get("stacklevel", 1) + 2
            method(msg, *args, **kw)

    def isEnabledFor(self, level: int) -> bool:
        return not self._replaying() and bool(self.logger.isEnabledFor(level))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.logger, name)

    def __repr__(self) -> str:
        return f"<RunLogger {self.logger!r}>"


class _AlembicFilter(logging.Filter):
    """Drops alembic's INFO lines raised on celeryflow's behalf."""

    def __init__(self, always: bool) -> None:
        super().__init__()
        self.always = always

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO:
            return True
        return not (self.always or getattr(_alembic, "quiet", False))


@contextmanager
def quiet_alembic() -> Iterator[None]:
    """Alembic's INFO lines ("Context impl", "Will assume ... DDL", "Running upgrade")
    are dropped in this thread inside the block."""
    before = getattr(_alembic, "quiet", False)
    _alembic.quiet = True
    try:
        yield
    finally:
        _alembic.quiet = before


# By logger name, before alembic is imported (it registers its plugins, logging a
# line each, on import).
logging.getLogger("alembic.runtime.plugins").addFilter(_AlembicFilter(always=True))
logging.getLogger("alembic.runtime.migration").addFilter(_AlembicFilter(always=False))
