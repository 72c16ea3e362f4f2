"""The events clients send, as strict pydantic models: the one definition of what is valid.

``POST /events``, ``POST /events/batch`` and ``generate_events.py`` all validate through
these models, so every stored event satisfies the same rules (see the API contract).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from schema.errors import Errors, validation_errors

EVENT_TYPES: tuple[str, ...] = ("view", "click", "location")

# Size limits (characters for strings, bytes for bodies).
MAX_EVENT_BODY_BYTES = 64 * 1024
MAX_BATCH_BODY_BYTES = 1024 * 1024
MAX_BATCH_EVENTS = 1000
MAX_PAYLOAD_BYTES = 16 * 1024
MAX_PAYLOAD_DEPTH = 8
MAX_USER_ID_CHARS = 256


def _not_blank(value: str) -> str:
    if not value.strip():
        raise PydanticCustomError("blank", "must not be only whitespace")
    return value


def _no_nul(value: str) -> str:
    # PostgreSQL's text cannot hold U+0000, so no backend stores one in user_id (payload
    # strings may hold it: payloads are stored as JSON text, where it is escaped).
    if "\x00" in value:
        raise PydanticCustomError("nul", "must not contain the NUL character")
    return value


def _within(low: float, high: float | None) -> AfterValidator:
    def check(value: float) -> float:
        if value < low or (high is not None and value > high):
            bounds = f"between {low:g} and {high:g}" if high is not None else f">= {low:g}"
            raise PydanticCustomError("out_of_range", "must be " + bounds)
        return value

    return AfterValidator(check)


def _depth(value: Any) -> int:
    """Nesting depth of a JSON value: a scalar is 0, ``{}`` is 1, ``{"a": {}}`` is 2."""
    if isinstance(value, dict):
        children: Any = value.values()
    elif isinstance(value, list):
        children = value
    else:
        return 0
    deepest = 0  # a loop, not max() over a generator: this runs for every event
    for child in children:
        if isinstance(child, (dict, list)):
            deepest = max(deepest, _depth(child))
    return 1 + deepest


# A required string: not empty, not only whitespace, no NUL. The pattern only documents
# that (OpenAPI); _not_blank and _no_nul enforce it, with our messages.
UserId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_USER_ID_CHARS,
        json_schema_extra={"pattern": r"^[^\u0000]*[^\s\u0000][^\u0000]*$"},
    ),
    AfterValidator(_not_blank),
    AfterValidator(_no_nul),
]
Url = Annotated[
    str,
    Field(min_length=1, max_length=2048, json_schema_extra={"pattern": r"\S"}),
    AfterValidator(_not_blank),
]
# A JSON number: ints are accepted, bools, strings, NaN and infinities are not.
# json_schema_extra documents the bounds (OpenAPI); _within enforces them with our messages.
Latitude = Annotated[
    float,
    Field(allow_inf_nan=False, json_schema_extra={"minimum": -90, "maximum": 90}),
    _within(-90, 90),
]
Longitude = Annotated[
    float,
    Field(allow_inf_nan=False, json_schema_extra={"minimum": -180, "maximum": 180}),
    _within(-180, 180),
]
Accuracy = Annotated[
    float, Field(allow_inf_nan=False, json_schema_extra={"minimum": 0}), _within(0, None)
]


class _Payload(BaseModel):
    """A payload keeps keys it does not know (``extra="allow"``) but checks its size."""

    model_config = ConfigDict(strict=True, extra="allow")

    @model_validator(mode="before")
    @classmethod
    def _bounded(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if _depth(data) > MAX_PAYLOAD_DEPTH:
                raise PydanticCustomError(
                    "too_deep",
                    "must be nested at most {depth} levels deep",
                    {"depth": MAX_PAYLOAD_DEPTH},
                )
            try:
                size = len(orjson.dumps(data))
            except TypeError as exc:  # only reachable from Python callers, not JSON
                raise PydanticCustomError("not_json", "must be JSON-serialisable") from exc
            if size > MAX_PAYLOAD_BYTES:
                raise PydanticCustomError(
                    "too_large",
                    "must be at most {limit} bytes serialized (is {size})",
                    {"limit": MAX_PAYLOAD_BYTES, "size": size},
                )
        return data


class ViewPayload(_Payload):
    url: Url
    title: Annotated[str, Field(max_length=1024)] | None = None


class ClickPayload(_Payload):
    element_id: Annotated[str, Field(max_length=1024)] | None = None
    text: Annotated[str, Field(max_length=2048)] | None = None
    xpath: Annotated[str, Field(max_length=2048)] | None = None


class LocationPayload(_Payload):
    latitude: Latitude
    longitude: Longitude
    accuracy: Accuracy | None = None


class _Event(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    user_id: UserId


class ViewEvent(_Event):
    event_type: Literal["view"]
    payload: ViewPayload


class ClickEvent(_Event):
    event_type: Literal["click"]
    payload: ClickPayload


class LocationEvent(_Event):
    event_type: Literal["location"]
    payload: LocationPayload


EventIn = Annotated[ViewEvent | ClickEvent | LocationEvent, Field(discriminator="event_type")]


class _UntypedEvent(_Event):
    """Used only to report the other fields' problems when ``event_type`` is itself wrong."""

    event_type: Any = None
    payload: dict[str, Any]


class EventBatch(BaseModel):
    """The ``POST /events/batch`` body; each event is validated on its own (see ``check_batch``)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    events: Annotated[list[EventIn], Field(min_length=1, max_length=MAX_BATCH_EVENTS)]


Event = ViewEvent | ClickEvent | LocationEvent
event_adapter: TypeAdapter[Event] = TypeAdapter(EventIn)
_untyped_adapter: TypeAdapter[_UntypedEvent] = TypeAdapter(_UntypedEvent)


def check_event(obj: Any, prefix: str = "") -> tuple[Event | None, Errors]:
    """Validate one decoded JSON event; return the model or the problems found (the first
    ``MAX_ERRORS`` described, the rest counted in ``.omitted``).

    ``prefix`` is the event's place in a batch (``events[3]``) for the error paths.
    """
    errors = Errors()
    return _check_event(obj, prefix, errors), errors


def _check_event(obj: Any, prefix: str, errors: Errors) -> Event | None:
    """Validate one event, adding its problems to ``errors``; the model if it is valid."""
    try:
        return event_adapter.validate_python(obj)
    except ValidationError as exc:
        found = validation_errors(exc, prefix)
    tag_errors = [e for e in found if e["field"] == (prefix or "body") and "one of" in e["message"]]
    if tag_errors and isinstance(obj, dict):
        # The discriminator failed, so pydantic checked nothing else: report the rest too.
        field = f"{prefix}.event_type" if prefix else "event_type"
        found = Errors([{"field": field, "message": tag_errors[0]["message"]}])
        try:
            _untyped_adapter.validate_python(obj)
        except ValidationError as exc:
            found.add_validation_error(exc, prefix)
    errors.add_all(found)
    return None


def check_batch(obj: Any) -> tuple[list[Event], Errors]:
    """Validate a batch body; all or nothing: any error means no events.

    Checking stops at the first event after which more problems were found than an answer
    lists (``errors.stopped``): later events may hold more, so ``omitted`` is a lower bound.
    """
    errors = Errors()
    if not isinstance(obj, dict):
        errors.add("body", "must be a JSON object")
        return [], errors
    for key in obj:
        if key != "events":
            errors.add(key, "is not an allowed field")
    raw = obj.get("events")
    if raw is None:
        errors.add("events", "is required")
    elif not isinstance(raw, list):
        errors.add("events", "must be an array")
    elif not 1 <= len(raw) <= MAX_BATCH_EVENTS:
        errors.add("events", f"must hold 1 to {MAX_BATCH_EVENTS} events (has {len(raw)})")
    else:
        events = []
        for i, item in enumerate(raw):
            if errors.omitted:  # more found than an answer lists: enough
                errors.stopped = True
                break
            event = _check_event(item, f"events[{i}]", errors)
            if event is not None:
                events.append(event)
        if not errors:
            return events, errors
    return [], errors


class Accepted(BaseModel):
    """The 202 answer to ``POST /events``."""

    event_id: Annotated[
        str, Field(description="lowercase UUID version 7", json_schema_extra={"format": "uuid"})
    ]
    timestamp: Annotated[
        str,
        Field(
            description="when the server received the event: UTC, microseconds",
            json_schema_extra={
                "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$",
            },
        ),
    ]


class BatchAccepted(BaseModel):
    """The 202 answer to ``POST /events/batch``."""

    accepted: int
    events: list[Accepted]


class ErasureRequest(BaseModel):
    """``POST /admin/erasures``: whose events to erase (the same rules as an event's)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    user_id: UserId
