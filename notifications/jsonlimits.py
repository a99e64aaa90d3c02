"""Limits on JSON that crosses the service's edges: nesting depth and encoded size.

Python's ``json`` parses and encodes recursively, so a document nested a few
thousand levels deep raises ``RecursionError`` (a 500, or a 1011 on a
socket) instead of a clear answer. Everything a client sends is parsed here,
and everything stored as JSON is measured here, with the depth checked first.
"""

import json
import math
from typing import Any

from django.conf import settings

from .exceptions import InvalidJson

NUL_REFUSED = "Strings with NUL characters (\\u0000) are refused."


def json_parse(text: str | bytes, *, max_depth: int | None = None) -> Any:
    """Parse one JSON document; raise ``InvalidJson`` if it is malformed or nested too deeply.

    ``NaN`` and ``Infinity``, which Python's parser accepts, are refused: they are not JSON. So
    is a number too large for a float (``1e999``), which Python would read as infinity, and so are
    strings with NUL characters, which PostgreSQL cannot store. So is a string holding a lone
    surrogate (``"\\ud800"``, an escape without its pair): it parses, but no UTF-8 text can carry
    it, so it could be neither stored nor sent back (an error frame quoting it, or a pong echoing
    it, would fail).

    ``max_depth`` defaults to ``JSON_MAX_DEPTH``: the number of arrays and
    objects that may enclose one another (``{"a": [1]}`` is 2 deep).
    """
    limit = settings.JSON_MAX_DEPTH if max_depth is None else max_depth
    try:
        value = json.loads(text, parse_constant=_constant_refuse, parse_float=_float_finite)
    except RecursionError:  # The C parser bails out cleanly, long before the stack is at risk.
        raise InvalidJson(_too_deep(limit)) from None
    except ValueError as exc:  # (UnicodeDecodeError included.)
        raise InvalidJson(f"Not valid JSON: {exc}") from None
    json_encoded_size(value, max_depth=limit)  # The depth, NUL, and strings that UTF-8 can carry.
    return value


def json_value_check(value: object, *, max_depth: int) -> None:
    """Raise ``InvalidJson`` if lists and dicts in ``value`` nest deeper than ``max_depth``, or a string holds NUL.

    PostgreSQL cannot store NUL (``\\u0000``) in JSON, so it is refused
    here rather than failing the write. Iterative, so it cannot overflow the
    stack itself, and it stops at the first level past the limit, so a cycle
    ends there too.
    """
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            if "\x00" in node:
                raise InvalidJson(NUL_REFUSED)
            continue
        if isinstance(node, dict):
            if any(isinstance(key, str) and "\x00" in key for key in node):
                raise InvalidJson(NUL_REFUSED)
            children: Any = node.values()
        elif isinstance(node, list | tuple):
            children = node
        else:
            continue
        if depth > max_depth:
            raise InvalidJson(_too_deep(max_depth))
        stack.extend((child, depth + 1) for child in children)


def json_encoded_size(value: object, *, max_depth: int) -> int:
    """Return the size in bytes of ``value`` as compact JSON; raise ``InvalidJson`` if it is not JSON.

    Not JSON here: nested deeper than ``max_depth``, a string with NUL, NaN
    or infinity, a value of a type JSON does not have, or a string with a
    lone surrogate.
    """
    json_value_check(value, max_depth=max_depth)
    try:
        encoded = json.dumps(value, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise InvalidJson(f"Not JSON-serialisable: {exc}") from None
    try:
        return len(encoded.encode())
    except UnicodeEncodeError as exc:
        lone = exc.object[exc.start : exc.end][:1]
        raise InvalidJson(f"A string holds a lone surrogate ({lone!r}), which UTF-8 cannot carry.") from None


def _constant_refuse(name: str) -> None:
    raise ValueError(f"{name} is not a JSON value")


def _float_finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]}{'...' if len(text) > 20 else ''} is out of range for a number")
    return value


def _too_deep(limit: int) -> str:
    return f"JSON nested more than {limit} levels deep is refused."
