"""``Inngest(serializer=...)`` and ``output_type=``: outputs that are not JSON.

As in the SDK, a step's or a function's output passes through the client's
serializer only when an ``output_type`` is given (``step.run(..., output_type=)``,
``create_function(output_type=)``; an ``on_failure`` handler's output always, with
``object``). What is stored must then be JSON: a pydantic model returned without a
serializer, or without an ``output_type``, fails the run with
``OutputUnserializableError`` (celeryflow's own API would dump the model). A memoized
step result, and an invoked function's output (``step.invoke``, with that function's
``output_type``), are read back through ``deserialize``, so the function sees models.
"""

from __future__ import annotations

import enum
import json
from typing import Any, Protocol

import pydantic

from ...codec import to_json
from ...errors import SerializationError
from ._errors import OutputUnserializableError

__all__ = [
    "EMPTY",
    "Empty",
    "PydanticSerializer",
    "Serializer",
    "deserialize",
    "serialize",
    "unserializable",
]


class Empty(enum.Enum):
    """No ``output_type`` given (``None`` is a type a user may pass)."""

    EMPTY = "empty"


EMPTY = Empty.EMPTY


class Serializer(Protocol):
    """The SDK's serializer protocol: to and from plain JSON values."""

    def serialize(self, obj: object, typ: object) -> object: ...

    def deserialize(self, obj: object, typ: object) -> object: ...


class PydanticSerializer(Serializer):
    """Dumps anything pydantic can (models, lists of them) to JSON values and
    validates stored JSON back into ``typ``."""

    def serialize(self, obj: object, typ: object) -> object:
        return pydantic.TypeAdapter(object).dump_python(obj, mode="json")

    def deserialize(self, obj: object, typ: object) -> object:
        return pydantic.TypeAdapter[object](typ).validate_python(obj)  # type: ignore[arg-type]


def serialize(serializer: Serializer | None, obj: Any, typ: object) -> Any:
    if serializer is None or typ is EMPTY:
        return obj
    return serializer.serialize(obj, typ)


def deserialize(serializer: Serializer | None, obj: Any, typ: object) -> Any:
    if serializer is None or typ is EMPTY:
        return obj
    return serializer.deserialize(obj, typ)


def unserializable(output: Any, step_id: str | None) -> OutputUnserializableError | None:
    """The SDK's error for an output that is not plain JSON (None when it is): what
    ``json.dumps`` refuses (a model, a datetime, an object), as the SDK checks, and
    what the store refuses (NaN)."""
    try:
        json.dumps(output)
        to_json(output, "output")
    except (TypeError, ValueError, SerializationError):
        prefix = "" if step_id is None else f'"{step_id}" '
        return OutputUnserializableError(f"{prefix}returned unserializable data")
    return None
