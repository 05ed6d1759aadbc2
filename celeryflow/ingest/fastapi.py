"""A FastAPI router that accepts events: ``app.include_router(router(flow))``."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ..events import Event
from ..flow import Flow
from . import MAX_BYTES, TOLERANCE, IngestSettings, Key

__all__ = ["router"]

_EVENT_SCHEMA = Event.model_json_schema()


def router(
    flow: Flow,
    *,
    path: str = "/events",
    signing_key: Key | Sequence[Key] | None = None,
    max_bytes: int = MAX_BYTES,
    tolerance: float = TOLERANCE,
    include_in_schema: bool = True,
) -> APIRouter:
    """A router with one route, ``POST path``, for one event or a list (see
    ``celeryflow.ingest``). Other methods get FastAPI's own 405 (with ``Allow``)."""
    settings = IngestSettings(signing_key, max_bytes, tolerance)
    api = APIRouter()

    # The body is taken raw, not as a pydantic parameter: the signature covers the exact
    # bytes, and reading stops as soon as the limit is passed.
    @api.post(
        path,
        include_in_schema=include_in_schema,
        summary="Send events",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "anyOf": [_EVENT_SCHEMA, {"type": "array", "items": _EVENT_SCHEMA}]
                        }
                    }
                },
            }
        },
    )
    async def ingest(request: Request) -> JSONResponse:
        refused = settings.check_length(request.headers)
        if refused:
            return JSONResponse(refused[1], status_code=refused[0])
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > settings.max_bytes:
                break
        # flow.send writes to the store and the broker, both blocking: keep it off the loop.
        status, payload = await run_in_threadpool(
            settings.handle, flow, bytes(body), request.headers
        )
        return JSONResponse(payload, status_code=status)

    return api
