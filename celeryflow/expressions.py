"""CEL expressions (the language Inngest uses): compiled once, cached, never ``eval``.

Each setting says which names its expressions may use (a trigger's ``if_`` sees
``event``; a wait's or a cancel's ``if_`` sees ``event`` and ``async``), and an
expression naming anything else is refused when it is compiled: a misspelt
``evnt.data.plan`` would otherwise evaluate to an error on every event, which a
filter reads as "no match", and the function would silently never run.

The names come from the CEL library's own parser (``Program.variables()``), so a
word inside a string literal is never taken for one. That list also holds the
variables bound by a comprehension macro (the ``x`` in ``items.exists(x, x > 1)``);
those are found with a tokenizer that knows CEL's string literals.

What CEL sees of event data: a ``datetime`` is a CEL timestamp (a naive one is
taken as UTC), a ``Decimal`` a double, and a ``date``, ``time`` or ``UUID`` its
ISO / canonical text (``"2024-05-01"``, ``"12:30:00"``, ``"0b6f...-..."``), which
compares as text; ``bytes`` are CEL bytes.
"""

from __future__ import annotations

import difflib
import re
import uuid
from collections.abc import Iterable
from datetime import date, datetime, time
from functools import lru_cache
from typing import Any

import cel

from .errors import ExpressionError

__all__ = ["ASYNC", "EVENT", "Expression", "cel_value", "compile_expression"]

EVENT = ("event",)  # what a trigger's if_, a key or a priority may use
ASYNC = ("event", "async")  # a wait's or a cancel's if_: the run's event and the candidate

# The macros of the library that bind a variable: ``range.macro(var, ...)``.
_BINDING_MACROS = frozenset({"all", "exists", "exists_one", "existsOne", "map", "filter"})
_TOKEN = re.compile(
    r"""
    (?P<string>
        (?P<prefix>[rRbB]{0,2})
        (?P<quote>'''|\"\"\"|'|")
    )
    | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<number>\d[\w.]*)
    | (?P<space>\s+)
    | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)


def _skip_string(source: str, start: int, quote: str, raw: bool) -> int:
    """The index just after the string literal whose body starts at ``start``."""
    i = start
    while i < len(source):
        if not raw and source[i] == "\\":
            i += 2
            continue
        if source.startswith(quote, i):
            return i + len(quote)
        i += 1
    return len(source)


def _tokens(source: str) -> list[str]:
    """Identifiers and punctuation of ``source``; string literals become one ``"``."""
    out: list[str] = []
    i = 0
    while i < len(source):
        found = _TOKEN.match(source, i)
        if found is None:  # unreachable: the last alternative takes any character
            break
        if found["quote"]:
            raw = "r" in found["prefix"].lower()
            i = _skip_string(source, found.end(), found["quote"], raw)
            out.append('"')
            continue
        i = found.end()
        if not found["space"]:
            out.append(found.group())
    return out


def _bound_names(source: str) -> set[str]:
    """Variables bound by comprehension macros: ``. macro ( NAME ,``."""
    tokens = _tokens(source)
    return {
        tokens[i + 3]
        for i in range(len(tokens) - 4)
        if tokens[i] == "."
        and tokens[i + 1] in _BINDING_MACROS
        and tokens[i + 2] == "("
        and tokens[i + 4] == ","
    }


def cel_value(value: Any) -> Any:
    """``value`` as CEL can take it: see the module's docstring. Returns ``value``
    itself when nothing in it needed converting."""
    if isinstance(value, dict):
        converted = {k: cel_value(v) for k, v in value.items()}
        same = all(converted[k] is v for k, v in value.items())
        return value if same else converted
    if isinstance(value, list | tuple):
        items = [cel_value(v) for v in value]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    if isinstance(value, datetime):
        return value
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


class Expression:
    """A compiled CEL program with its source, for error messages."""

    __slots__ = ("_program", "names", "source")

    def __init__(self, source: str, program: Any) -> None:
        self.source = source
        self._program = program
        # the free names the expression uses (comprehension variables left out)
        referenced = set(program.variables())
        self.names = frozenset(referenced - _bound_names(source) if referenced else referenced)

    def _execute(self, variables: dict[str, Any]) -> Any:
        try:
            return self._program.execute(variables)
        except Exception:
            # Data holding a date, time or UUID cannot enter CEL as it is. Converting
            # costs a walk over the data, so it is done only when the plain call failed.
            converted = cel_value(variables)
            if converted is variables:
                raise
            return self._program.execute(converted)

    def evaluate(self, variables: dict[str, Any]) -> Any:
        try:
            return self._execute(variables)
        except Exception as exc:  # the binding raises KeyError, ValueError, TypeError...
            raise ExpressionError(f"CEL expression {self.source!r} failed: {exc}") from exc

    def matches(self, variables: dict[str, Any]) -> bool:
        """A filter: true only for a boolean true; a missing field or an error is a no-match."""
        try:
            return self._execute(variables) is True
        except Exception:
            return False

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"


@lru_cache(maxsize=4096)
def _compile(source: str) -> Expression:
    return Expression(source, cel.compile(source))


def _shown(source: str) -> str:
    return source if len(source) <= 60 else source[:57] + "..."


def compile_expression(source: str, where: str, roots: Iterable[str] = EVENT) -> Expression:
    """Compile ``source``, which may use only the names ``roots``; ``where`` names its
    owner in the error (e.g. "function 'welcome' trigger if_")."""
    if not isinstance(source, str) or not source.strip():
        raise ExpressionError(f"{where}: expected a CEL expression string, got {source!r}")
    try:
        expression = _compile(source)
    except ValueError as exc:
        raise ExpressionError(f"{where}: invalid CEL expression {source!r}: {exc}") from None
    allowed = tuple(roots)
    unknown = sorted(expression.names.difference(allowed))
    if unknown:
        name = unknown[0]
        close = difflib.get_close_matches(name, allowed, n=1)
        hint = (
            f"did you mean {close[0]!r}?"
            if close
            else f"it can use {', '.join(repr(r) for r in allowed)}"
        )
        raise ExpressionError(f"{where}: unknown name {name!r} in {_shown(source)!r}; {hint}")
    return expression
