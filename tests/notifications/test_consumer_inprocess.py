"""The consumer in this process, so its own asyncio tasks can be checked.

Every async test here runs under ``no_task_leaks``: a heartbeat task or a
layer reader left running after the socket ends fails the test.
"""

import uuid
from typing import Any

import pytest
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator

from config.asgi import application
from config.settings import redis_channel_layers
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
