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
spells ``:`` as ``\u003a`` (a ``:`` the byte count cannot see), and one nested deeper than
``orjson.dumps`` goes. ``bench/duplicate_keys.py`` times the options.

orjson also reads an integer outside [-2^63, 2^64) as a float, rounded: stored, it would be
another number than the one sent. Only a run of 19 or more digits can be one, so a body
holding such a run (in a number or a string) takes the exact path too, which names each
such integer (``AmbiguousJSONError``, a 400) instead of storing it rounded.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from schema.errors import Errors, field_path

JSONDecodeError = orjson.JSONDecodeError

# The integers orjson reads as integers; the shortest it cannot (-2^63 - 1) has 19 digits.
_INT_MIN, _INT_END = -(2**63), 2**64
_LONG_DIGITS = re.compile(rb"\d{19}")
_OUT_OF_RANGE = "is an integer outside -2^63 … 2^64 - 1, which cannot be stored exactly"


class AmbiguousJSONError(ValueError):
    """The body is valid JSON, but it does not mean one thing: an object in it has a key
    twice, or an integer cannot be kept as sent (outside -2^63 … 2^64 - 1).

    ``errors`` names each as ``{"field", "message"}`` (``events[3].payload.url``), in
    document order; past ``MAX_ERRORS`` they are only counted (``errors.omitted``).
    """

    def __init__(self, errors: Errors) -> None:
        super().__init__(f"{len(errors) + errors.omitted} ambiguous value(s)")
        self.errors = errors


RepeatedKeyError = AmbiguousJSONError  # its first name (bench/duplicate_keys.py)


def loads(raw: bytes) -> Any:
    """Parse ``raw`` as JSON. Raises ``JSONDecodeError`` (not JSON) or
    ``AmbiguousJSONError`` (a repeated key, an integer beyond 64 bits)."""
    value = orjson.loads(raw)
    colons = raw.count(b":")
    if _LONG_DIGITS.search(raw) or (
        colons
        and (b"\\u003a" in raw or b"\\u003A" in raw or _colons_when_serialised(value) != colons)
    ):
        errors = _ambiguities(raw)
        if errors:
            raise AmbiguousJSONError(errors)
    return value


def _colons_when_serialised(value: Any) -> int:
    try:
        return orjson.dumps(value).count(b":")
    except orjson.JSONEncodeError:  # nested deeper than orjson writes (254 levels)
        return -1


def _repeated_keys(pairs: Iterable[tuple[str, Any]]) -> list[str]:
    """Each key that occurs more than once, once, in document order."""
    seen: set[str] = set()
    repeated: dict[str, None] = {}
    for key, _ in pairs:
        if key in seen:
            repeated[key] = None
        seen.add(key)
    return list(repeated)


def _ambiguities(raw: bytes) -> Errors:
    """Each repeated key and each integer beyond 64 bits with its path
    (``events[3].payload.url``), in document order: the exact path, taken only when the fast
    checks cannot vouch for the body.

    The standard library parses the body again with each object kept as the tuple of its
    pairs (``object_pairs_hook=tuple``: no Python call per object, nothing merged), then a
    walk visits objects and arrays in document order. Like every error answer it stays
    cheap: it stops once more problems are found than an answer lists
    (``errors.stopped``: there may be more), so a body of 70,000 such objects costs one
    parse in C and a walk through the first hundred.
    """
    try:
        value = json.loads(raw.decode(), object_pairs_hook=tuple)
    except RecursionError:
        # Nested deeper than the stdlib parser goes (~1000; orjson allows 1024). No body
        # of this service may nest that deep, so this is a 400 whatever its keys.
        return Errors([{"field": "body", "message": "is nested too deeply"}])
    errors = Errors()
    stack = [_worth_a_look((), [((), value)], top=True)]
    while stack:
        step = next(stack[-1], None)
        if step is None:
            stack.pop()
            continue
        path, item = step
        if type(item) is tuple:  # an object
            if len(dict(item)) != len(item):
                for key in _repeated_keys(item):
                    errors.add(field_path((*path, key)), "is repeated")
            stack.append(_worth_a_look(path, item))
        elif type(item) is list:
            stack.append(_worth_a_look(path, enumerate(item)))
        else:  # an integer orjson would have rounded
            errors.add(field_path(path), _OUT_OF_RANGE)
        if errors.omitted:  # more found than an answer lists: enough
            errors.stopped = True
            break
    return errors


def _worth_a_look(
    path: tuple[str | int, ...], pairs: Iterable[tuple[Any, Any]], top: bool = False
) -> Iterator[tuple[tuple[str | int, ...], Any]]:
    """The objects (tuples of pairs), arrays and integers beyond 64 bits among ``pairs``'
    values, with their paths (``top``: ``pairs`` is the document itself, at path ``()``)."""
    return (
        (k if top else (*path, k), v)
        for k, v in pairs
        if type(v) is tuple or type(v) is list or (type(v) is int and not _INT_MIN <= v < _INT_END)
    )
