"""JSON in and out of the store, as Celery's own JSON serializer writes it.

kombu's JSON (what ``task_serializer="json"`` uses) round-trips ``datetime``,
``date``, ``time``, ``Decimal``, ``UUID`` and ``bytes`` as
``{"__type__": ..., "__value__": ...}`` markers, and Celery users pass them every
day. Event data, step results, run outputs and invoke data are written the same
way and read back as the same types. Exactly what comes back is accepted (types
registered with ``kombu.utils.json.register_type`` under a marker included);
anything kombu would only flatten one way (an object with ``__json__``, a type
registered without a marker, a set, an arbitrary object) is refused with an error
that names where it came from and its type. A dict that is itself shaped like a
marker (exactly the keys ``__type__`` and ``__value__``) is refused too: it would
come back as something else. Never pickle.
"""

from __future__ import annotations

import json
from typing import Any

from kombu.utils.json import JSONEncoder as KombuEncoder
from kombu.utils.json import loads as kombu_loads
from pydantic import BaseModel

from .errors import SerializationError

__all__ = ["canonical", "from_json", "to_json", "to_jsonable"]

_MARKER = frozenset({"__type__", "__value__"})
_MARKER_TEXT = '"__type__"'


class _Encoder(KombuEncoder):
    """kombu's encoder, restricted to what its decoder gives back; counts the
    markers it writes so that a marker-shaped dict of the user's is caught."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.markers = 0

    def default(self, o: Any) -> Any:
        if isinstance(o, BaseModel):
            return o.model_dump(mode="json")
        name = type(o).__qualname__
        if getattr(o, "__json__", None) is not None:
            raise TypeError(name)  # kombu would write what __json__ returns, one way
        try:
            encoded = super().default(o)  # type: ignore[no-untyped-call]
        except TypeError:
            raise TypeError(name) from None
        if isinstance(encoded, dict) and encoded.keys() == _MARKER:
            self.markers += 1
            return encoded
        raise TypeError(name)  # a one-way transformation (Django's lazy strings, ...)


def _count_markers(text: str) -> int:
    found = 0

    def hook(obj: dict[str, Any]) -> dict[str, Any]:
        nonlocal found
        found += obj.keys() == _MARKER
        return obj

    json.loads(text, object_hook=hook)
    return found


def to_json(value: Any, what: str, *, sort_keys: bool = False) -> str:
    """Serialize ``value``; ``what`` names it in the error ("step 'charge' result")."""
    encoder = _Encoder(allow_nan=False, separators=(",", ":"), sort_keys=sort_keys)
    try:
        text = encoder.encode(value)
    except (TypeError, ValueError) as exc:
        detail = str(exc)
        if isinstance(exc, TypeError) and " " not in detail:
            detail = f"a value of type {detail!r} is not JSON-serializable"
        elif "circular" in detail.lower():
            detail = "it contains a circular reference"
        elif "out of range" in detail.lower():
            detail = "NaN and infinity are not JSON"
        elif "digits" in detail:  # int -> str is capped (sys.get_int_max_str_digits)
            detail = f"an integer has too many digits: {detail.partition(';')[0]}"
        raise SerializationError(f"{what} must be JSON: {detail}") from None
    except RecursionError:
        raise SerializationError(f"{what} must be JSON: it is nested too deeply") from None
    if _MARKER_TEXT in text and _count_markers(text) != encoder.markers:
        raise SerializationError(
            f"{what} must be JSON: it holds a dict with exactly the keys '__type__' and "
            "'__value__', which kombu's JSON reserves for its type markers"
        )
    return text


def from_json(text: str | None) -> Any:
    """The value ``to_json`` wrote, with its types (datetime, Decimal, ...) back."""
    if text is None:
        return None
    if _MARKER_TEXT not in text:
        return json.loads(text)  # no markers: the stdlib's C decoder, no hook per dict
    return kombu_loads(text)  # type: ignore[no-untyped-call]


def to_jsonable(value: Any, what: str) -> Any:
    """``value`` as it will come back from the store (tuples become lists, models
    dicts, the kombu types stay): a value accepted here is stored as it is."""
    return from_json(to_json(value, what))


def canonical(value: Any) -> str:
    """One text per value (sorted keys), to compare values by type and content."""
    return to_json(value, "value", sort_keys=True)
