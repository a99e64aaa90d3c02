"""The consumer in this process, so its own asyncio tasks can be checked.

Every async test here runs under ``no_task_leaks``: a heartbeat task or a
layer reader left running after the socket ends fails the test.
"""

import asyncio
import logging
import uuid
from typing import Any

import pytest
from autobahn.exception import Disconnected
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator

from config.asgi import application
from config.settings import redis_channel_layers
from notifications.consumers import NotificationConsumer
from notifications.services import aevent_record
from tests.servers import free_port
from tests.wsclient import access_token

PATH = "/ws/notifications/"


@pytest.fixture
def memory_layer(settings: Any) -> None:
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    settings.WS_HEARTBEAT_SECONDS = 0.05


def communicator(user: Any) -> WebsocketCommunicator:
    return WebsocketCommunicator(application, PATH, subprotocols=["jwt", access_token(user)])


@pytest.mark.usefixtures("memory_layer")
async def test_heartbeats_run_and_stop_with_the_connection(alice: Any) -> None:
    client = communicator(alice)
    connected, subprotocol = await client.connect(timeout=5)
    assert (connected, subprotocol) == (True, "jwt")
    assert (await client.receive_json_from(timeout=5))["type"] == "hello"
    assert await client.receive_json_from(timeout=5) == {"type": "heartbeat", "last_seq": 0}
    await client.disconnect(timeout=5)


@pytest.mark.usefixtures("memory_layer")
async def test_disconnect_in_the_middle_of_a_replay_leaves_no_task(alice: Any) -> None:
    run_id = uuid.uuid4()
    for step in range(50):
        await aevent_record(user_id=alice.pk, event="agent_thinking", run_id=run_id, agent="demo", data={"step": step})
    client = communicator(alice)
    await client.connect(timeout=5)
    await client.receive_json_from(timeout=5)
    await client.send_json_to({"type": "resume", "after": 0})
    first = await client.receive_json_from(timeout=5)
    assert first["seq"] == 1
    await client.disconnect(timeout=5)


async def test_layer_down_at_connect_closes_4503(settings: Any, alice: Any) -> None:
    settings.CHANNEL_LAYERS = redis_channel_layers(
        redis_url=f"redis://127.0.0.1:{free_port()}/0", layer="pubsub", prefix="down"
    )
    client = communicator(alice)
    connected, subprotocol = await client.connect(timeout=10)
    assert (connected, subprotocol) == (True, "jwt")
    assert await client.receive_output(timeout=5) == {"type": "websocket.close", "code": 4503}
    await client.wait(timeout=5)
    await get_channel_layer().flush()


@pytest.mark.usefixtures("memory_layer")
async def test_send_racing_the_peers_close_is_not_an_error(alice: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Daphne raises autobahn's Disconnected for a send after the peer's close
    frame but before its disconnect message: the consumer must end cleanly."""
    incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    sent: list[dict[str, Any]] = []
    greeted = asyncio.Event()
    peer_closed = False

    async def receive() -> dict[str, Any]:
        return await incoming.get()

    async def send(message: dict[str, Any]) -> None:
        if peer_closed:
            raise Disconnected("Attempt to send on a closed protocol")
        sent.append(message)
        if len(sent) == 2:  # accept, hello
            greeted.set()

    scope = {"type": "websocket", "path": PATH, "headers": [], "subprotocols": ["jwt", access_token(alice)]}
    app = asyncio.create_task(NotificationConsumer.as_asgi()(scope, receive, send))
    await incoming.put({"type": "websocket.connect"})
    await asyncio.wait_for(greeted.wait(), timeout=5)
    peer_closed = True
    await incoming.put({"type": "websocket.receive", "text": '{"type": "ping"}'})
    await incoming.put({"type": "websocket.disconnect", "code": 1000})
    with caplog.at_level(logging.DEBUG):
        await asyncio.wait_for(app, timeout=5)
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.send"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_hello_gives_whole_heartbeat_seconds_as_an_integer(settings: Any, alice: Any) -> None:
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    settings.WS_HEARTBEAT_SECONDS = 25.0
    client = communicator(alice)
    await client.connect(timeout=5)
    hello = await client.receive_from(timeout=5)
    assert '"heartbeat_seconds":25}' in hello
    await client.disconnect(timeout=5)
