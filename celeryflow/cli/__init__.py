"""The ``celeryflow`` command (click, like Celery's own CLI).

The store is the one of the Celery app given with ``-A/--app`` (found as ``celery -A``
finds it, and its Flow's settings apply), or ``--store URL``, or ``$CELERYFLOW_STORE``;
with none of them the command says so. Every error is one line and a non-zero exit
(2 for a usage mistake), never a traceback.

One module per group of commands, each adding its commands to :data:`main` (from
``base``) when imported: ``schema`` (migrate, prune), ``runs`` (runs, run, cancel,
replay), ``events`` (send, events), ``functions`` (functions, pause, resume),
``doctor``. A new group is a new module imported below.
"""

from __future__ import annotations

from . import doctor, events, functions, runs, schema
from .base import DISTRIBUTION, distribution_version, main

__all__ = [
    "DISTRIBUTION",
    "distribution_version",
    "doctor",
    "events",
    "functions",
    "main",
    "runs",
    "schema",
]
