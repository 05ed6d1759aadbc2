"""A Django view that accepts events: ``path("events", event_view(flow, signing_key=...))``."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from ..flow import Flow
from . import MAX_BYTES, TOLERANCE, IngestSettings, Key

__all__ = ["event_view"]


def event_view(
    flow: Flow,
    *,
    signing_key: Key | Sequence[Key] | None = None,
    max_bytes: int = MAX_BYTES,
    tolerance: float = TOLERANCE,
) -> Callable[[HttpRequest], HttpResponse]:
    """A CSRF-exempt view for ``POST`` of one event or a list (see ``celeryflow.ingest``).

    The body is read here, up to ``max_bytes``, not through ``request.body``, so Django's
    ``DATA_UPLOAD_MAX_MEMORY_SIZE`` does not apply to it.
    """
    settings = IngestSettings(signing_key, max_bytes, tolerance)

    # Senders are other services, not browsers with a session: the signature (or the
    # JSON content type, which needs a CORS preflight) stands in for the CSRF token.
    @csrf_exempt
    def view(request: HttpRequest) -> HttpResponse:
        if request.method != "POST":
            response = JsonResponse({"error": "method not allowed: use POST"}, status=405)
            response["Allow"] = "POST"
            return response
        refused = settings.check_length(request.headers)
        if refused:
            return JsonResponse(refused[1], status=refused[0])
        # One byte over the limit is enough to know the body is too big.
        body = request.read(settings.max_bytes + 1)
        status, payload = settings.handle(flow, body, request.headers)
        return JsonResponse(payload, status=status)

    return view
