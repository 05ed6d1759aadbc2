"""``inngest.experimental.ai``: the model adapters of ``step.ai.infer``, which is not
supported (Inngest's AI gateway makes the call; here, call the model in ``step.run``).
Any name taken from this module raises NotSupportedError naming it."""

from __future__ import annotations

from typing import NoReturn

from .._errors import not_supported

__all__: list[str] = []


def __getattr__(name: str) -> NoReturn:
    if name.startswith("__"):
        raise AttributeError(name)
    raise not_supported(f"inngest.experimental.ai.{name}", "call the model inside step.run")
