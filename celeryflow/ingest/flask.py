"""A Flask blueprint that accepts events: ``app.register_blueprint(blueprint(flow))``."""

from __future__ import annotations

from collections.abc import Sequence

from flask import Blueprint, Response, jsonify, request

from ..flow import Flow
from . import MAX_BYTES, TOLERANCE, IngestSettings, Key

__all__ = ["blueprint"]


def blueprint(
    flow: Flow,
    *,
    url_prefix: str = "/events",
    signing_key: Key | Sequence[Key] | None = None,
    max_bytes: int = MAX_BYTES,
    tolerance: float = TOLERANCE,
    name: str = "celeryflow_ingest",
) -> Blueprint:
    """A blueprint with one route, ``POST url_prefix``, for one event or a list (see
    ``celeryflow.ingest``). Give each blueprint of one app its own ``name``. Other
    methods get Flask's own 405 (with ``Allow``)."""
    settings = IngestSettings(signing_key, max_bytes, tolerance)
    bp = Blueprint(name, __name__, url_prefix=url_prefix)

    # Flask joins a prefix and an empty rule into exactly the prefix; with no prefix the
    # rule must be a path of its own.
    @bp.post("" if url_prefix.strip("/") else "/")
    def ingest() -> tuple[Response, int]:
        # Werkzeug's Headers is no Mapping; a plain dict is enough (lookups ignore case).
        headers = dict(request.headers.items())
        refused = settings.check_length(headers)
        if refused:
            return jsonify(refused[1]), refused[0]
        # Read from the stream, at most one byte past the limit, instead of get_data(),
        # which would buffer a body of any size.
        body = request.stream.read(settings.max_bytes + 1)
        status, payload = settings.handle(flow, body, headers)
        return jsonify(payload), status

    return bp
