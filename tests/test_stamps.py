"""Server stamps: the fast timestamp formatting equals ``format_ts`` for every instant."""

from __future__ import annotations

from datetime import timedelta

import uuid_utils
from hypothesis import given
from hypothesis import strategies as st

from ingest.stamps import _EPOCH, stamp_events, timestamp_of
from schema.timestamps import format_ts

LAST = 253_402_300_799_999_999  # 9999-12-31T23:59:59.999999Z, in microseconds


@given(st.integers(min_value=0, max_value=LAST))
def test_timestamp_of_equals_format_ts(micros: int) -> None:
    assert timestamp_of(micros) == format_ts(_EPOCH + timedelta(microseconds=micros))


def test_second_boundaries_and_fixed_width() -> None:
    for micros in (0, 999_999, 1_000_000, 1_735_689_599_999_999, 1_735_689_600_000_000):
        text = timestamp_of(micros)
        assert text == format_ts(_EPOCH + timedelta(microseconds=micros))
        assert len(text) == 27


def test_stamps_agree_with_their_uuid_to_the_millisecond() -> None:
    for event_id, timestamp in stamp_events(500):
        ms = uuid_utils.UUID(event_id).timestamp
        assert timestamp[:23] == timestamp_of(ms * 1000)[:23]  # …T14:03:07.123
