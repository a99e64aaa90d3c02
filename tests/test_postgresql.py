"""config.postgresql: the process-wide view of a database outage (the outage itself: tests/test_outages.py),
and the pool's check before a loan."""

from typing import Any

import psycopg
import pytest

from config.postgresql.base import DatabaseUnavailable, Outage
from config.postgresql.pool import check_unless_just_lent
from tests.conftest import SCRATCH_PG_URL


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


def test_a_connection_lent_moments_ago_is_not_checked_and_an_idle_one_is(settings: Any, clock: Clock) -> None:
    settings.DB_POOL_CHECK_IDLE_SECONDS = 1.0
    with psycopg.connect(SCRATCH_PG_URL, autocommit=True) as connection:
        check_unless_just_lent(connection)  # first loan: checked, and it answers
        with psycopg.connect(SCRATCH_PG_URL, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", [connection.info.backend_pid])
        clock.now += 0.5
        check_unless_just_lent(connection)  # lent half a second ago: no round trip, so nothing noticed
        clock.now += 1.5
        with pytest.raises(psycopg.OperationalError):
            check_unless_just_lent(connection)  # idle for longer: checked, and found dead
