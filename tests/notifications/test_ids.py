"""notifications.ids: version 7 UUIDs, ordered by their millisecond and random within it."""

import time
import uuid

import pytest

from notifications.ids import uuid7


def test_a_uuid7_has_version_7_the_rfc_variant_and_the_time_in_milliseconds() -> None:
    before_ms = time.time_ns() // 1_000_000
    made = uuid7()
    after_ms = time.time_ns() // 1_000_000
    assert made.version == 7 and made.variant == uuid.RFC_4122
    assert before_ms <= made.int >> 80 <= after_ms
    assert uuid.UUID(str(made)) == made


def test_uuid7s_sort_by_their_millisecond(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter(range(1_700_000_000_000_000_000, 1_700_000_000_100_000_000, 1_000_000))  # one ms apart
    monkeypatch.setattr(time, "time_ns", lambda: next(clock))
    made = [uuid7() for _ in range(100)]
    assert made == sorted(made)
    assert sorted(made, key=str) == made  # The text form sorts the same way (the admin's and the API's).


def test_uuid7s_of_one_millisecond_differ_in_their_74_random_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time_ns", lambda: 1_700_000_000_000_000_000)
    made = [uuid7() for _ in range(10_000)]
    assert len(set(made)) == 10_000
    assert {value.int >> 80 for value in made} == {1_700_000_000_000}
    assert all(value.version == 7 and value.variant == uuid.RFC_4122 for value in made)
