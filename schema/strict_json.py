r"""Request bodies as JSON, strictly: orjson's grammar plus "no object repeats a key".

orjson rejects what RFC 8259 leaves out (NaN, Infinity, invalid UTF-8, lone surrogate
escapes, trailing data) but keeps the last of two equal keys without a word; other parsers
keep the first, so ``{"event_type": "view", "event_type": "click"}`` means different things
to different readers. ``loads`` refuses it.

How, cheaply: the body has one ``:`` per key it sends plus every ``:`` inside its strings.
orjson's re-serialisation of the parsed value has one per key it kept plus the same ``:``
inside the same strings (it never escapes ``:``). So the counts differ exactly when a key
was dropped, i.e. repeated; then, and only then, the standard library parses the body again
with a hook to name each repeated key. Two cases go straight to that exact path: a body that
spells a character as ``\u003X`` (``\u003a`` is a ``:`` the byte count cannot see), and one
nested deeper than ``orjson.dumps`` goes. ``bench/duplicate_keys.py`` times the options.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from schema.errors import field_path

JSONDecodeError = orjson.JSONDecodeError


class RepeatedKeyError(ValueError):
    """The body is valid JSON, but an object in it has a key twice.

    ``errors`` names each repeated key as ``{"field", "message"}``
    (``events[3].payload.url``), in document order.
    """

    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__(f"{len(errors)} repeated key(s)")
        self.errors = errors


def loads(raw: bytes) -> Any:
    """Parse ``raw`` as JSON. Raises ``JSONDecodeError`` (not JSON) or ``RepeatedKeyError``."""
    value = orjson.loads(raw)
    colons = raw.count(b":")
    if colons and (b"\\u003" in raw or _colons_when_serialised(value) != colons):
        errors = _repeated(raw)
        if errors:
            raise RepeatedKeyError(errors)
    return value


def _colons_when_serialised(value: Any) -> int:
    try:
        return orjson.dumps(value).count(b":")
    except orjson.JSONEncodeError:  # nested deeper than orjson writes (254 levels)
        return -1


class _Object(dict[str, Any]):
    """A parsed object that remembers which of its keys were repeated."""

    repeated: list[str]


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = _Object(pairs)
    seen: set[str] = set()
    obj.repeated = []
    for key, _ in pairs:
        if key in seen and key not in obj.repeated:
            obj.repeated.append(key)
        seen.add(key)
    return obj


def _repeated(raw: bytes) -> list[dict[str, str]]:
    """Each repeated key with its path; the slow path, taken only for a bad body."""
    try:
        value = json.loads(raw.decode(), object_pairs_hook=_pairs)
    except RecursionError:
        # Nested deeper than the stdlib parser goes (~1000; orjson allows 1024). No body
        # of this service may nest that deep, so this is a 400 whatever its keys.
        return [{"field": "body", "message": "is nested too deeply"}]
    errors = []
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    while stack:
        item, path = stack.pop()
        if isinstance(item, _Object):
            errors += [
                {"field": field_path((*path, key)), "message": "is repeated"}
                for key in item.repeated
            ]
            children = [(v, (*path, k)) for k, v in item.items()]
        elif isinstance(item, list):
            children = [(v, (*path, i)) for i, v in enumerate(item)]
        else:
            continue
        stack.extend(reversed(children))  # depth first, in document order
    return errors
