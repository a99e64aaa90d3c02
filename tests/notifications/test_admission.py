"""Admission under a connect storm (notifications/admission.py), over a real daphne.

Beyond ``WS_CONNECT_MAX_PENDING`` handshakes in progress, or once the oldest
has waited ``WS_CONNECT_MAX_WAIT_SECONDS``, the server answers at once with
4503 and a retry appointment; a client that honours it gets in on a later
try. Nothing crashes and no handshake hangs.
"""

import asyncio
import itertools
import json
from collections.abc import Callable
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from notifications.admission import Admission
from tests.servers import DaphneServer
from tests.wsclient import RECV_TIMEOUT_SECONDS, access_token

pytestmark = pytest.mark.e2e

CLIENTS = 100
RETRY_SECONDS = 0.2
RATE = 1000.0


async def connect_until_admitted(url: str, token: str, refusals: list[float]) -> dict[str, Any]:
    """Connect, waiting out each 4503's delay, until the server says hello; return the hello."""
    while True:
        async with connect(
            url,
            subprotocols=[Subprotocol("jwt"), Subprotocol(token)],
            open_timeout=RECV_TIMEOUT_SECONDS,
            ping_interval=None,
        ) as ws:
            try:
                frame = json.loads(await asyncio.wait_for(ws.recv(), RECV_TIMEOUT_SECONDS))
            except ConnectionClosed as exc:
                assert exc.rcvd is not None and exc.rcvd.code == 4503, exc
                delay = json.loads(exc.rcvd.reason)["retry_after"]
                refusals.append(delay)
            else:
                assert frame["type"] == "hello", frame
                return frame  # type: ignore[no-any-return]
        await asyncio.sleep(delay)


async def test_a_connect_storm_beyond_admission_gets_4503_with_a_delay_and_then_gets_in(
    daphne_factory: Callable[..., DaphneServer], redis_url: str, make_user: Callable[..., Any]
) -> None:
    server = daphne_factory(
        redis_url=redis_url,
        WS_CONNECT_MAX_PENDING="3",
        WS_CONNECT_RETRY_SECONDS=str(RETRY_SECONDS),
        WS_RECONNECT_RATE_PER_SECOND=str(RATE),
    )
    users = [await sync_to_async(make_user)() for _ in range(10)]
    refusals: list[float] = []
    async with asyncio.timeout(60):
        hellos = await asyncio.gather(
            *(connect_until_admitted(server.ws_url, access_token(users[n % 10]), refusals) for n in range(CLIENTS))
        )
    assert sorted(hello["user"]["id"] for hello in hellos) == sorted(users[n % 10].pk for n in range(CLIENTS))
    assert refusals, "a hundred connects at once with room for three should have been refused some"
    # Appointments: at least the base delay's lower half, and the refused of one burst spread at the
    # admission rate (WS_RECONNECT_RATE_PER_SECOND) beyond its upper half.
    assert all(0.5 * RETRY_SECONDS <= delay <= 1.5 * RETRY_SECONDS + len(refusals) / RATE for delay in refusals)
    assert len(set(refusals)) > 1, refusals
    server.assert_log_clean()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr("notifications.admission.time.monotonic", clock)
    return clock


def test_admission_refuses_once_the_oldest_handshake_waited_too_long_and_again_admits_when_it_leaves(
    clock: Clock, settings: Any
) -> None:
    settings.WS_CONNECT_MAX_PENDING, settings.WS_CONNECT_MAX_WAIT_SECONDS = 100, 5.0
    admission = Admission()
    first = admission.enter()
    clock.now += 3
    second = admission.enter()
    assert first is not None and second is not None
    clock.now += 2  # the first has now waited 5 s: the process is behind
    assert admission.enter() is None
    assert admission.waited_seconds() == 5.0
    admission.leave(first)  # the oldest is now the second, 2 s in
    assert admission.waited_seconds() == 2.0
    third = admission.enter()
    assert third is not None and admission.pending == 2
    admission.leave(third)  # leaving out of order: the second is still the oldest
    assert admission.waited_seconds() == 2.0
    admission.leave(second)
    assert admission.pending == 0 and admission.waited_seconds() == 0.0


def test_admission_refuses_beyond_the_cap_on_handshakes_in_progress(clock: Clock, settings: Any) -> None:
    settings.WS_CONNECT_MAX_PENDING, settings.WS_CONNECT_MAX_WAIT_SECONDS = 2, 5.0
    admission = Admission()
    tickets = [admission.enter(), admission.enter()]
    assert None not in tickets and admission.enter() is None
    admission.leave(tickets[0])  # type: ignore[arg-type]
    assert admission.enter() is not None


def test_refused_clients_get_successive_appointments_at_the_admission_rate(clock: Clock, settings: Any) -> None:
    settings.WS_CONNECT_RETRY_SECONDS = 2.0
    settings.WS_RECONNECT_RATE_PER_SECOND = 100.0
    settings.WS_RECONNECT_SPREAD_MAX_SECONDS = 30.0
    admission = Admission()
    delays = [admission.appointment_seconds() for _ in range(1000)]
    # The first comes back after the base delay; each next one at least a slot (10 ms) later
    # (to the ms they are rounded to).
    assert 1.0 <= delays[0] <= 3.0
    assert all(later >= earlier + 0.009 for earlier, later in itertools.pairwise(delays))
    # Once the schedule is past the base delay's spread (3 s, by the 200th), each is exactly one slot
    # after the one before: 1,000 refused at 100/s are spread over 10 s, not sent back together.
    assert all(
        later == pytest.approx(earlier + 0.01, abs=0.0011) for earlier, later in itertools.pairwise(delays[200:])
    )
    assert 3.0 <= delays[200] <= 5.0 and delays[-1] == pytest.approx(delays[200] + 7.99, abs=0.002)
    clock.now += 60  # the storm is long served: the next refusal starts over at the base delay
    assert 1.0 <= admission.appointment_seconds() <= 3.0


def test_appointments_are_capped_at_the_longest_spread(clock: Clock, settings: Any) -> None:
    settings.WS_CONNECT_RETRY_SECONDS = 2.0
    settings.WS_RECONNECT_RATE_PER_SECOND = 10.0
    settings.WS_RECONNECT_SPREAD_MAX_SECONDS = 4.0
    admission = Admission()
    delays = [admission.appointment_seconds() for _ in range(100)]
    assert max(delays) == 4.0 and delays[-1] == 4.0
