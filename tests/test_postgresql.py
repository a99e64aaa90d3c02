"""config.postgresql: the process-wide view of a database outage (the outage itself: tests/test_outages.py)."""

import pytest

from config.postgresql.base import DatabaseUnavailable, Outage


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr("config.postgresql.base.time.monotonic", clock)
    return clock


def test_a_healthy_database_admits_every_attempt(clock: Clock) -> None:
    outage = Outage()
    assert [outage.admit(probe_seconds=0.5) for _ in range(3)] == [False, False, False]


def test_while_down_one_probe_per_interval_goes_ahead_and_the_rest_fail_at_once(clock: Clock) -> None:
    outage = Outage()
    outage.failed(probe_seconds=0.5, error=OSError("refused"))
    with pytest.raises(DatabaseUnavailable, match=r"unreachable for 0.0 s; the next attempt is in 0.5 s"):
        outage.admit(probe_seconds=0.5)
    clock.now += 0.5
    assert outage.admit(probe_seconds=0.5) is True  # This caller probes...
    with pytest.raises(DatabaseUnavailable):
        outage.admit(probe_seconds=0.5)  # ...and the others do not wait for it.
    outage.failed(probe_seconds=0.5, error=OSError("still refused"))
    clock.now += 0.4
    with pytest.raises(DatabaseUnavailable, match=r"unreachable for 0.9 s"):
        outage.admit(probe_seconds=0.5)
    clock.now += 0.1
    assert outage.admit(probe_seconds=0.5) is True
    outage.recovered()
    assert outage.down_since is None
    assert outage.admit(probe_seconds=0.5) is False


def test_the_outage_is_logged_once_when_it_starts_and_once_when_it_ends(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    outage = Outage()
    outage.failed(probe_seconds=0.5, error=OSError("refused"))
    clock.now += 3
    outage.failed(probe_seconds=0.5, error=OSError("refused"))
    outage.recovered()
    outage.recovered()
    assert [record.getMessage() for record in caplog.records] == [
        "The database is unreachable (refused); failing fast until a probe gets through",
        "The database is reachable again after 3.0 s",
    ]
