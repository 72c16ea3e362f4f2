"""Validation problems as ``{"field", "message"}`` entries: the ``errors`` list of every
400 answer (``app.problems`` wraps them in RFC 9457 problem+json).

``field`` is a dotted path: ``("events", 3, "payload", "url")`` → ``events[3].payload.url``.
An answer lists at most ``MAX_ERRORS`` problems and counts the rest (``errors_omitted``):
describing 90,000 problems cost more than finding them, and made a 5.7 MB answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import ValidationError

MAX_ERRORS = 100  # the contract's cap on the ``errors`` of one answer
_SERVER_OWNED = {"event_id", "timestamp"}
_EVENT_TYPES = ("view", "click", "location")


class Errors(list[dict[str, str]]):
    """Problems as they are found: ``add`` keeps the first ``MAX_ERRORS`` and only counts
    the rest in ``omitted``. ``stopped`` is set by a check that gave up early once it had
    to omit something, so ``omitted`` is then a lower bound."""

    def __init__(self, entries: Iterable[dict[str, str]] = ()) -> None:
        super().__init__()
        self.omitted = 0
        self.stopped = False
        self.add_all(entries)

    @property
    def full(self) -> bool:
        return len(self) >= MAX_ERRORS

    def add(self, field: str, message: str) -> None:
        if self.full:
            self.omitted += 1
        else:
            self.append({"field": field, "message": message})

    def add_all(self, entries: Iterable[dict[str, str]]) -> None:
        for entry in entries:
            self.add(entry["field"], entry["message"])
        if isinstance(entries, Errors):
            self.omitted += entries.omitted
            self.stopped = self.stopped or entries.stopped

    def add_validation_error(self, exc: ValidationError, prefix: str = "") -> None:
        """Describe pydantic's errors while there is room; count the others."""
        seen: set[tuple[str, str]] = set()
        for done, error in enumerate(exc.errors(include_url=False, include_input=False)):
            if self.full:
                self.omitted += exc.error_count() - done
                return
            field = field_path(_strip_union_tags(tuple(error["loc"])), prefix)
            message = _message(error, field)
            if (field, message) not in seen:
                seen.add((field, message))
                self.add(field, message)


def field_path(loc: Sequence[int | str], prefix: str = "") -> str:
    """``("events", 3, "payload", "url")`` → ``events[3].payload.url``."""
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or "body"


def _strip_union_tags(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    """Pydantic puts the discriminator value into the path (``("view", "payload")``); drop it."""
    out: list[int | str] = []
    for i, part in enumerate(loc):
        after_event = i == 0 or isinstance(loc[i - 1], int)
        if after_event and part in _EVENT_TYPES and i + 1 < len(loc):
            continue
        out.append(part)
    return tuple(out)


def _message(error: dict[str, Any], field: str) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    name = field.rsplit(".", 1)[-1]
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        if name in _SERVER_OWNED:
            return "is assigned by the server and must not be sent"
        return "is not an allowed field"
    if kind == "union_tag_invalid":
        return "must be one of 'view', 'click', 'location'"
    if kind == "union_tag_not_found":
        return "is required (one of 'view', 'click', 'location')"
    if kind in {"string_type", "str_type"}:
        return "must be a string"
    if kind in {"float_type", "int_type"}:
        return "must be a number"
    if kind == "finite_number":
        return "must be a finite number"
    if kind in {"dict_type", "model_type", "model_attributes_type"}:
        return "must be an object"
    if kind == "list_type":
        return "must be an array"
    if kind == "string_too_short":
        n = ctx.get("min_length", 1)
        return "must not be empty" if n == 1 else f"must be at least {n} characters"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters"
    if kind == "too_short":
        return f"must have at least {ctx.get('min_length')} items"
    if kind == "too_long":
        return f"must have at most {ctx.get('max_length')} items"
    if kind == "literal_error":
        return f"must be {ctx.get('expected')}"
    return str(error["msg"])


def validation_errors(exc: ValidationError, prefix: str = "") -> Errors:
    """The errors of a pydantic ValidationError as ``{"field", "message"}`` (capped)."""
    errors = Errors()
    errors.add_validation_error(exc, prefix)
    return errors


def summary(errors: Sequence[dict[str, str]]) -> str:
    """A one-line ``detail`` naming the first problems and how many more there are."""
    parts = [f"{e['field']} {e['message']}" for e in errors[:3]]
    more = len(errors) - len(parts) + (errors.omitted if isinstance(errors, Errors) else 0)
    if isinstance(errors, Errors) and errors.stopped:
        return "; ".join(parts) + f" (and at least {more} more; the rest was not checked)"
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")
