"""``celeryflow dashboard``: serve the web dashboard (the ``[dashboard]`` extra)."""

from __future__ import annotations

import click

from ..store.database import display_url
from .base import Failure, app_flow, main, open_store, store_option

__all__ = ["dashboard"]


@main.command("dashboard")
@store_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8288, show_default=True, type=int, help="Port to listen on.")
@click.pass_context
def dashboard(ctx: click.Context, store_url: str | None, host: str, port: int) -> None:
    """Serve the web dashboard (needs the [dashboard] extra). With -A, the app's
    functions are shown and events can be sent and runs replayed; with only --store,
    the store's runs and events. Any address but loopback needs
    CELERYFLOW_DASHBOARD_TOKEN (or CELERYFLOW_DASHBOARD_USER and _PASSWORD)."""
    try:
        # an optional extra: the other commands must work without it
        from ..dashboard import Auth, check_bind
        from ..dashboard.asgi import dashboard_app, serve
    except ImportError as exc:
        raise Failure(
            f"the dashboard needs its extra ({exc.name} is missing): "
            "pip install 'celeryflow-engine[dashboard]'"
        ) from None
    check_bind(host, Auth.from_env())  # before the app is imported or the store opened
    flow = app_flow(ctx) if not store_url else None
    store = flow.store if flow is not None else open_store(ctx, store_url)
    store.check()
    click.echo(f"celeryflow dashboard of {display_url(store.url)} on http://{host}:{port}/")
    serve(dashboard_app(flow, store=store), host=host, port=port)
