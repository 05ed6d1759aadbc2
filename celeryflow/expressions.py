"""CEL expressions (the language Inngest uses): compiled once, cached, never ``eval``."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import cel

from .errors import ExpressionError

__all__ = ["Expression", "compile_expression"]


class Expression:
    """A compiled CEL program with its source, for error messages."""

    __slots__ = ("_program", "source")

    def __init__(self, source: str, program: Any) -> None:
        self.source = source
        self._program = program

    def evaluate(self, variables: dict[str, Any]) -> Any:
        try:
            return self._program.execute(variables)
        except Exception as exc:  # the binding raises KeyError, ValueError, TypeError...
            raise ExpressionError(f"CEL expression {self.source!r} failed: {exc}") from exc

    def matches(self, variables: dict[str, Any]) -> bool:
        """A filter: true only for a boolean true; a missing field or an error is a no-match."""
        try:
            return self._program.execute(variables) is True
        except Exception:
            return False

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"


@lru_cache(maxsize=4096)
def _compile(source: str) -> Expression:
    return Expression(source, cel.compile(source))


def compile_expression(source: str, where: str) -> Expression:
    """Compile ``source``; ``where`` names its owner in the error
    (e.g. "function 'welcome' trigger if_")."""
    if not isinstance(source, str) or not source.strip():
        raise ExpressionError(f"{where}: expected a CEL expression string, got {source!r}")
    try:
        return _compile(source)
    except ValueError as exc:
        raise ExpressionError(f"{where}: invalid CEL expression {source!r}: {exc}") from None
