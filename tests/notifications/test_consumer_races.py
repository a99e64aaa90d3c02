"""Races end to end: closes and disconnects in the middle of delivery.

In each case no exception escapes, nothing is logged as an error, and a
reconnect-and-resume still gets every event.
"""

import asyncio
import uuid
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from notifications.services import aevent_record
from tests.servers import DaphneServer
from tests.wsclient import Client, access_token, ws_connect

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("server_log_clean", "redis_layer")]


async def emit(user_id: int, count: int) -> None:
    run_id = uuid.uuid4()
    for step in range(count):
        await aevent_record(user_id=user_id, event="agent_thinking", run_id=run_id, agent="demo", data={"step": step})


async def drain(client: Client) -> list[int]:
    """Read event seqs until the connection ends, however it ends."""
    seqs = []
    try:
        while True:
            frame = await client.recv()
            if frame["type"] == "event":
                seqs.append(frame["seq"])
    except ConnectionClosed:
        return seqs


async def resume_gets_the_rest(url: str, token: str, *, after: int, last: int) -> None:
    async with ws_connect(url, token) as client:
        await client.send({"type": "resume", "after": after})
        events = await client.events(last - after, timeout=20)
        assert [event["seq"] for event in events] == list(range(after + 1, last + 1))
        resumed = await client.expect("resumed")
        assert resumed["last_seq"] == last


async def test_events_arriving_while_the_client_disconnects(daphne: DaphneServer, alice: Any) -> None:
    token = access_token(alice)
    async with ws_connect(daphne.ws_url, token) as client:
        producer = asyncio.create_task(emit(alice.pk, 200))
        seen = [event["seq"] for event in await client.events(20)]
    await producer
    assert seen == list(range(1, 21))
    await resume_gets_the_rest(daphne.ws_url, token, after=seen[-1], last=200)


async def test_server_closes_while_sends_are_in_flight(daphne: DaphneServer, alice: Any) -> None:
    token = access_token(alice)
    async with ws_connect(daphne.ws_url, token) as client:
        producer = asyncio.create_task(emit(alice.pk, 300))
        await client.events(5)
        for index in range(200):  # Flood: the server closes 4429 mid-stream.
            await client.send({"type": "ping", "ref": index})
        seqs = await drain(client)
        assert client.ws.close_code == 4429
    await producer
    assert seqs == list(range(6, 6 + len(seqs)))
    await resume_gets_the_rest(daphne.ws_url, token, after=5 + len(seqs), last=300)


async def test_client_and_server_close_at_once(daphne: DaphneServer, alice: Any) -> None:
    token = access_token(alice)
    async with ws_connect(daphne.ws_url, token) as client:
        producer = asyncio.create_task(emit(alice.pk, 100))
        await client.events(3)
        for index in range(60):  # Enough to make the server close 4429...
            await client.send({"type": "ping", "ref": index})
        await client.ws.close()  # ...while the client closes too.
    await producer
    await resume_gets_the_rest(daphne.ws_url, token, after=0, last=100)


async def test_disconnect_during_resume(daphne: DaphneServer, alice: Any) -> None:
    token = access_token(alice)
    await emit(alice.pk, 300)
    async with ws_connect(daphne.ws_url, token) as client:
        await client.send({"type": "resume", "after": 0})
        await client.events(10)
    async with ws_connect(daphne.ws_url, token) as client:
        await client.send({"type": "resume", "after": 0})  # Closed before the replay can finish.
    await emit(alice.pk, 5)
    await resume_gets_the_rest(daphne.ws_url, token, after=10, last=305)
