"""Faults end to end: Redis dying under a live client, server shutdown, idle and bursty connections."""

import asyncio
import json
import signal
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from notifications.models import Event
from notifications.services import aevent_record
from tests.conftest import ChannelLayers
from tests.servers import DaphneServer, RedisServer
from tests.wsclient import access_token, ws_connect

pytestmark = pytest.mark.e2e


async def emit(user_id: int, count: int) -> None:
    run_id = uuid.uuid4()
    for step in range(count):
        await aevent_record(user_id=user_id, event="agent_thinking", run_id=run_id, agent="demo", data={"step": step})


@pytest.mark.parametrize("layer", ["pubsub", "core"])
async def test_redis_restart_under_a_live_client_loses_nothing(
    redis_server_factory: Callable[[], RedisServer],
    daphne_factory: Callable[..., DaphneServer],
    channel_layers: ChannelLayers,
    alice: Any,
    layer: str,
) -> None:
    redis = redis_server_factory()
    server = daphne_factory(
        redis_url=redis.url, CHANNEL_LAYER=layer, WS_HEARTBEAT_SECONDS="0.2", REDIS_BRPOP_TIMEOUT_SECONDS="0.5"
    )
    channel_layers("pubsub", redis_url=redis.url)
    async with ws_connect(server.ws_url, access_token(alice)) as client:
        await emit(alice.pk, 5)
        seen = await client.events(5)

        await sync_to_async(redis.stop)()
        await emit(alice.pk, 5)  # Publishing fails: these stay pending in the log.
        pending = await sync_to_async(
            lambda: list(Event.objects.filter(pending__isnull=False).values_list("seq", flat=True))
        )()
        assert sorted(pending) == [6, 7, 8, 9, 10]
        # The heartbeat reads them from the log even while Redis is down.
        seen += await client.events(5)

        await sync_to_async(redis.start)()
        await emit(alice.pk, 5)
        seen += await client.events(5, timeout=15)
        assert [event["seq"] for event in seen] == list(range(1, 16))
        assert await client.quiet() == []
    # The connection survived: no consumer crashed. (channels-redis itself
    # logs its reconnect attempts while Redis is down.)
    assert "Exception inside application" not in server.log()


async def test_server_shutdown_closes_clients_with_1001(
    daphne_factory: Callable[..., DaphneServer], redis_url: str, alice: Any
) -> None:
    server = daphne_factory(redis_url=redis_url)
    async with (
        ws_connect(server.ws_url, access_token(alice)) as one,
        ws_connect(server.ws_url, access_token(alice)) as two,
    ):
        server.signal(signal.SIGTERM)
        assert await one.closed() == 1001
        assert await two.closed() == 1001
    assert await asyncio.to_thread(server.wait) == 0
    server.assert_log_clean()


@pytest.mark.parametrize("layer", ["pubsub", "core"])
async def test_idle_connections_survive_many_read_timeouts(
    daphne_factory: Callable[..., DaphneServer], redis_url: str, make_user: Any, layer: str
) -> None:
    # The core layer blocks on Redis for REDIS_BRPOP_TIMEOUT_SECONDS per read;
    # shortened here, and the socket timeout kept above it as the settings
    # require, 300 idle sockets sit through about ten blocking reads.
    server = daphne_factory(
        redis_url=redis_url,
        CHANNEL_LAYER=layer,
        REDIS_BRPOP_TIMEOUT_SECONDS="0.1",
        REDIS_SOCKET_TIMEOUT_SECONDS="0.3",
        WS_HEARTBEAT_SECONDS="60",
    )
    user = await sync_to_async(make_user)()
    token = access_token(user)
    contexts = [ws_connect(server.ws_url, token) for _ in range(300)]
    clients = await asyncio.gather(*(context.__aenter__() for context in contexts))
    try:
        await asyncio.sleep(0.2)  # Connections idle; no frames are due before the heartbeat.
        for _ in range(4):
            await asyncio.gather(*(client.send({"type": "ping"}) for client in clients))
            pongs = await asyncio.gather(*(client.recv() for client in clients))
            assert pongs == [{"type": "pong"}] * 300
            await asyncio.sleep(0.25)
    finally:
        await asyncio.gather(*(context.__aexit__(None, None, None) for context in contexts))
    server.assert_log_clean()


@pytest.mark.parametrize("layer", ["pubsub", "core"])
async def test_burst_of_200_connects_and_disconnects_raises_nothing(
    daphne_factory: Callable[..., DaphneServer], redis_url: str, make_user: Any, layer: str
) -> None:
    # A pool far smaller than the burst: connects must queue for a Redis
    # connection, not fail with MaxConnectionsError.
    server = daphne_factory(redis_url=redis_url, CHANNEL_LAYER=layer, REDIS_MAX_CONNECTIONS="10")
    user = await sync_to_async(make_user)()
    token = access_token(user)
    for _ in range(2):
        contexts = [ws_connect(server.ws_url, token) for _ in range(200)]
        await asyncio.gather(*(context.__aenter__() for context in contexts))
        await asyncio.gather(*(context.__aexit__(None, None, None) for context in contexts))
    async with ws_connect(server.ws_url, token) as client:
        await client.send({"type": "ping"})
        assert await client.recv() == {"type": "pong"}
    server.assert_log_clean()


async def test_a_stopping_server_tells_each_client_when_to_come_back(
    daphne_factory: Callable[..., DaphneServer], redis_url: str, alice: Any
) -> None:
    # 30 clients and a rate of 10 a second: come back within 3 s, each at its own moment.
    server = daphne_factory(redis_url=redis_url, WS_RECONNECT_RATE_PER_SECOND="10")
    token = access_token(alice)
    contexts = [ws_connect(server.ws_url, token) for _ in range(30)]
    clients = await asyncio.gather(*(context.__aenter__() for context in contexts))
    try:
        server.signal(signal.SIGTERM)
        closes = await asyncio.gather(*(client.close_frame() for client in clients))
    finally:
        await asyncio.gather(*(context.__aexit__(None, None, None) for context in contexts))
    assert {code for code, _ in closes} == {1001}
    delays = [json.loads(reason)["retry_after"] for _, reason in closes]
    assert all(0 <= delay <= 3 for delay in delays), delays
    assert len(set(delays)) > 1, delays  # spread, not one instant for all
    assert await asyncio.to_thread(server.wait) == 0
    server.assert_log_clean()


async def test_a_stopping_server_accepts_no_new_connections(
    daphne_factory: Callable[..., DaphneServer], redis_url: str, alice: Any
) -> None:
    # A client that never answers the close keeps the server in its close grace for up to 5 s.
    server = daphne_factory(redis_url=redis_url, SHUTDOWN_CLOSE_GRACE_SECONDS="5")
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(
            (
                "GET /ws/notifications/ HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                f"Sec-WebSocket-Protocol: jwt, {access_token(alice)}\r\n\r\n"
            ).encode()
        )
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 101")
        server.signal(signal.SIGTERM)
        # Read up to the server's close frame (0x88), and do not answer it.
        async with asyncio.timeout(5):
            while b"\x88" not in await reader.read(4096):
                pass
        with pytest.raises(ConnectionRefusedError):
            _, late = await asyncio.open_connection("127.0.0.1", server.port)
            late.close()
    finally:
        writer.close()
        await writer.wait_closed()
    assert await asyncio.to_thread(server.wait) == 0
