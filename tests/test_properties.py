"""Hypothesis properties: the validators never crash, and counts are exact.

* ``check_event`` / ``check_batch`` on arbitrary JSON values either return a model or a
  non-empty list of ``{field, message}`` errors, never raise; an accepted event survives
  the log's JSON round trip unchanged.
* The exactness invariant: for random event sets (timestamps anywhere in a few days,
  including day edges) and random filters, every analytics answer equals ``COUNT(*)`` on
  the log with the same filter.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schema.events import EVENT_TYPES, check_batch, check_event
from tests.databases import Database
from tests.helpers import append, log_count, row

# --- validators -------------------------------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
json_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
_payloads = st.fixed_dictionaries(
    {},
    optional={
        "url": st.text(max_size=30) | json_values,
        "title": st.none() | st.text(max_size=30),
        "element_id": st.none() | st.text(max_size=10),
        "text": st.text(max_size=10) | st.integers(),
        "xpath": st.none() | st.text(max_size=10),
        "latitude": st.floats() | st.integers() | st.text(max_size=3),
        "longitude": st.floats() | st.integers(min_value=-200, max_value=200),
        "accuracy": st.none() | st.floats(),
        "extra": json_values,
    },
)
# Mostly event-shaped objects (so the deep rules run), sometimes anything at all.
events_ish = (
    st.fixed_dictionaries(
        {},
        optional={
            "user_id": st.text(max_size=10) | json_values,
            "event_type": st.sampled_from([*EVENT_TYPES, "View", "", "scroll"]) | json_values,
            "payload": _payloads | json_values,
            "event_id": st.text(max_size=5),
        },
    )
    | json_values
)
FAST = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)


def _well_formed(errors: list[dict[str, str]]) -> None:
    assert errors
    for error in errors:
        assert set(error) == {"field", "message"}
        assert isinstance(error["field"], str)  # "" only when the offending key is ""
        assert isinstance(error["message"], str) and error["message"]


@FAST
@given(events_ish)
def test_check_event_returns_a_model_or_errors_and_never_raises(value: Any) -> None:
    event, errors = check_event(value)
    if event is None:
        _well_formed(errors)
        return
    assert errors == []
    assert event.event_type in EVENT_TYPES
    # What the log stores (orjson of the payload as sent) reads back as the same payload.
    assert orjson.loads(orjson.dumps(value["payload"])) == value["payload"]
    again, errors = check_event(orjson.loads(orjson.dumps(value)))
    assert errors == [] and again == event


@FAST
@given(st.fixed_dictionaries({"events": st.lists(events_ish, max_size=5)}) | json_values)
def test_check_batch_is_all_or_nothing_and_never_raises(value: Any) -> None:
    events, errors = check_batch(value)
    if errors:
        _well_formed(errors)
        assert events == []
        for error in errors:
            assert (
                error["field"] == "body"
                or not error["field"].startswith("events[")
                or (int(error["field"][7 : error["field"].index("]")]) < len(value["events"]))
            )
    else:
        assert len(events) == len(value["events"]) >= 1
        assert all(check_event(e)[1] == [] for e in value["events"])


# --- exactness invariant ------------------------------------------------------------------

BASE = datetime(2025, 3, 30, tzinfo=UTC)  # spans a DST change nowhere: UTC throughout
SPAN_US = 4 * 24 * 3600 * 1_000_000


def _ts(offset_us: int) -> str:
    return (BASE + timedelta(microseconds=offset_us)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# Offsets cluster at day edges (midnight ± 1 µs) as well as anywhere in the span.
_edges = st.sampled_from([d * 86_400_000_000 + e for d in range(5) for e in (-1, 0, 1)])
_offsets = (_edges | st.integers(min_value=0, max_value=SPAN_US)).filter(
    lambda x: 0 <= x <= SPAN_US
)
event_sets = st.lists(st.tuples(st.sampled_from(EVENT_TYPES), _offsets), max_size=40)


@st.composite
def bounds(draw: st.DrawFn) -> str | None:
    kind = draw(st.sampled_from(["none", "day", "instant", "offset"]))
    offset = draw(st.integers(min_value=-86_400_000_000, max_value=SPAN_US + 86_400_000_000))
    at = BASE + timedelta(microseconds=offset)
    if kind == "none":
        return None
    if kind == "day":
        return at.strftime("%Y-%m-%d")
    if kind == "instant":
        return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    hours = draw(st.integers(min_value=-12, max_value=14))
    local = at.astimezone(timezone(timedelta(hours=hours)))
    return local.isoformat()


def _range(start: str | None, end: str | None) -> tuple[str, str]:
    """The reference ``[lo, hi)`` of log timestamps for the contract's bound rules."""
    lo, hi = "", "~"
    if start is not None:
        lo = start + "T00:00:00.000000Z" if len(start) == 10 else _utc(start)
    if end is not None:
        if len(end) == 10:
            day = datetime.fromisoformat(end).replace(tzinfo=UTC) + timedelta(days=1)
            hi = day.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        else:
            instant = datetime.fromisoformat(end.replace("Z", "+00:00")).astimezone(UTC)
            hi = (instant + timedelta(microseconds=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return lo, hi


def _utc(text: str) -> str:
    instant = datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
    return instant.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@pytest.mark.slow
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
@given(
    events=event_sets,
    filters=st.lists(
        st.tuples(st.none() | st.sampled_from(EVENT_TYPES), bounds(), bounds()),
        min_size=1,
        max_size=4,
    ),
)
async def test_api_counts_equal_count_star_on_the_log(
    client: TestClient, db: Database, events: list[tuple[str, int]], filters: list
) -> None:
    # One database for all examples: the log grows, and the reference is always the log.
    await append(client, [row(kind, _ts(offset)) for kind, offset in events])
    for event_type, start, end in filters:
        params = {
            k: v
            for k, v in (("event_type", event_type), ("start_date", start), ("end_date", end))
            if v is not None
        }
        response = await client.get("/analytics/event-counts", params=params)
        if response.status == 400:
            body = await response.json(content_type=None)
            assert {e["field"] for e in body["errors"]} == {"start_date"}, (params, body)
            lo, hi = _range(start, end)
            assert lo >= hi, params  # only a start after the end is refused
            continue
        assert response.status == 200, await response.text()
        lo, hi = _range(start, end)
        expected = log_count(db, event_type, lo, hi) if lo < hi else 0
        assert (await response.json())["total_events"] == expected, params

        by_type_params = {k: v for k, v in params.items() if k != "event_type"}
        by_type = await (
            await client.get("/analytics/event-counts-by-type", params=by_type_params)
        ).json()
        for kind in EVENT_TYPES:
            want = log_count(db, kind, lo, hi) if lo < hi else 0
            assert by_type.get(kind, 0) == want, (by_type_params, kind)
            assert kind in by_type or want == 0

        if start is not None and end is not None:
            days = (
                await (await client.get("/analytics/event-counts-by-day", params=params)).json()
            )["days"]
            total = sum(d[k] for d in days for k in ((event_type,) if event_type else EVENT_TYPES))
            assert total == expected, params
