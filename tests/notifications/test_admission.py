"""Admission under a connect storm (notifications/admission.py), over a real daphne.

Beyond ``WS_CONNECT_MAX_PENDING`` handshakes in progress the server answers
at once with 4503 and a retry delay; a client that honours it gets in on a
later try. Nothing crashes and no handshake hangs.
"""

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from tests.servers import DaphneServer
from tests.wsclient import RECV_TIMEOUT_SECONDS, access_token

pytestmark = pytest.mark.e2e

CLIENTS = 100
RETRY_SECONDS = 0.2


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
        redis_url=redis_url, WS_CONNECT_MAX_PENDING="3", WS_CONNECT_RETRY_SECONDS=str(RETRY_SECONDS)
    )
    users = [await sync_to_async(make_user)() for _ in range(10)]
    refusals: list[float] = []
    async with asyncio.timeout(60):
        hellos = await asyncio.gather(
            *(connect_until_admitted(server.ws_url, access_token(users[n % 10]), refusals) for n in range(CLIENTS))
        )
    assert sorted(hello["user"]["id"] for hello in hellos) == sorted(users[n % 10].pk for n in range(CLIENTS))
    assert refusals, "a hundred connects at once with room for three should have been refused some"
    assert all(0.5 * RETRY_SECONDS <= delay <= 1.5 * RETRY_SECONDS for delay in refusals), refusals
    server.assert_log_clean()
