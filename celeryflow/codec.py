"""JSON in and out of the store. Never pickle: a value that is not JSON is refused
with an error that names where it came from and its type."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from .errors import SerializationError

__all__ = ["from_json", "to_json", "to_jsonable"]


def _default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(type(value).__qualname__)


def to_json(value: Any, what: str) -> str:
    """Serialize ``value``; ``what`` names it in the error ("step 'charge' result")."""
    try:
        return json.dumps(value, default=_default, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        detail = str(exc)
        if isinstance(exc, TypeError) and " " not in detail:
            detail = f"a value of type {detail!r} is not JSON-serializable"
        elif "circular" in detail.lower():
            detail = "it contains a circular reference"
        elif "out of range" in detail.lower():
            detail = "NaN and infinity are not JSON"
        raise SerializationError(f"{what} must be JSON: {detail}") from None
    except RecursionError:
        raise SerializationError(f"{what} must be JSON: it is nested too deeply") from None


def to_jsonable(value: Any, what: str) -> Any:
    """The JSON-equivalent Python value (tuples become lists, models dicts)."""
    return json.loads(to_json(value, what))


def from_json(text: str | None) -> Any:
    return None if text is None else json.loads(text)
