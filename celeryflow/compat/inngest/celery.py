"""``serve()``: the analogue of ``inngest.flask.serve`` for a Celery app.

    from celeryflow.compat.inngest import celery as inngest_celery
    inngest_celery.serve(celery_app, client, [fn_a, fn_b])

Call it where the functions are defined (module level), so that the worker and
every process that sends events register them, as Celery tasks are registered by
importing their module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery import Celery

from ...errors import ConfigError
from ...flow import Flow
from ...tasks import flow_of
from ._client import Function, Inngest
from ._errors import PREFIX

__all__ = ["serve"]


def serve(
    app: Celery,
    client: Inngest,
    functions: Sequence[Function[Any]],
    *,
    enable_unauthed_sync: bool | None = None,
    public_path: str | None = None,
    serve_origin: str | None = None,
    serve_path: str | None = None,
    streaming: Any = None,
) -> Flow:
    """Register ``functions`` on the Flow bound to ``app`` (made with ``Flow(app)``,
    i.e. ``$CELERYFLOW_STORE`` or SQLite, if there is none yet) and bind ``client``
    to it, so that ``client.send_sync`` starts runs. Serving a function again on the
    same Flow does nothing; serving the client on another app rebinds it there.

    The keyword options configure the SDK's HTTP endpoint, which does not exist
    here; they are accepted so that the call moves over unchanged, and unused."""
    if not isinstance(client, Inngest):
        raise ConfigError(f"{PREFIX}: serve() needs an inngest.Inngest client, got {client!r}")
    flow = flow_of(app) or Flow(app)
    for function in functions:
        if not isinstance(function, Function):
            raise ConfigError(
                f"{PREFIX}: serve() takes functions made by @client.create_function, "
                f"got {function!r}"
            )
        function.register(flow, client)
    client.bind(flow)
    return flow
