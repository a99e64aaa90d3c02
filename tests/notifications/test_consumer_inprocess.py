"""The consumer in this process, so its own asyncio tasks can be checked.

Every async test here runs under ``no_task_leaks``: a heartbeat task or a
layer reader left running after the socket ends fails the test.
"""

import asyncio
import json
import logging
import time
import uuid
from types import SimpleNamespace
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from autobahn.exception import Disconnected
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from rest_framework_simplejwt.tokens import AccessToken

from config.asgi import application
from notifications import consumers
from notifications.consumers import NotificationConsumer
from notifications.frames import event_frame_text
from notifications.models import Event
from notifications.services import _event_write, aevent_record, user_group_name
from tests.conftest import ChannelLayers
from tests.servers import free_port
from tests.wsclient import access_token

PATH = "/ws/notifications/"


@pytest.fixture
def memory_layer(settings: Any, channel_layers: ChannelLayers) -> None:
    channel_layers("memory")
    settings.WS_HEARTBEAT_SECONDS = 0.05


def communicator(user: Any) -> WebsocketCommunicator:
    return WebsocketCommunicator(application, PATH, subprotocols=["jwt", access_token(user)])


def raw_scope(token: str) -> dict[str, Any]:
    """The scope of a connection offering ``token``, for driving the consumer's ASGI callables by hand."""
    return {"type": "websocket", "path": PATH, "headers": [], "subprotocols": ["jwt", token]}


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


async def test_layer_down_at_connect_closes_4503(channel_layers: ChannelLayers, settings: Any, alice: Any) -> None:
    channel_layers("pubsub", redis_url=f"redis://127.0.0.1:{free_port()}/0", prefix="down")
    client = communicator(alice)
    connected, subprotocol = await client.connect(timeout=10)
    assert (connected, subprotocol) == (True, "jwt")
    closed = await client.receive_output(timeout=5)
    await client.wait(timeout=5)
    assert (closed["type"], closed["code"]) == ("websocket.close", 4503)
    # With a delay to come back after, spread around WS_CONNECT_RETRY_SECONDS.
    retry_after = json.loads(closed["reason"])["retry_after"]
    assert 0.5 * settings.WS_CONNECT_RETRY_SECONDS <= retry_after <= 1.5 * settings.WS_CONNECT_RETRY_SECONDS


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

    app = asyncio.create_task(NotificationConsumer.as_asgi()(raw_scope(access_token(alice)), receive, send))
    await incoming.put({"type": "websocket.connect"})
    await asyncio.wait_for(greeted.wait(), timeout=5)
    peer_closed = True
    await incoming.put({"type": "websocket.receive", "text": '{"type": "ping"}'})
    await incoming.put({"type": "websocket.disconnect", "code": 1000})
    with caplog.at_level(logging.DEBUG):
        await asyncio.wait_for(app, timeout=5)
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.send"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_hello_gives_whole_heartbeat_seconds_as_an_integer(
    settings: Any, channel_layers: ChannelLayers, alice: Any
) -> None:
    channel_layers("memory")
    settings.WS_HEARTBEAT_SECONDS = 25.0
    client = communicator(alice)
    await client.connect(timeout=5)
    hello = await client.receive_from(timeout=5)
    assert '"heartbeat_seconds":25}' in hello
    await client.disconnect(timeout=5)


@pytest.fixture
def quiet_heartbeat(settings: Any, channel_layers: ChannelLayers) -> None:
    """A heartbeat that never comes during the test: only the live path can deliver."""
    channel_layers("memory")
    settings.WS_HEARTBEAT_SECONDS = 3600


def _log_only(user_id: int, count: int) -> list[Event]:
    """Write events to the log without publishing them (as if their publish was lost)."""
    return [
        _event_write(user_id=user_id, event="agent_thinking", run_id=uuid.uuid4(), agent="demo", data={"n": n})
        for n in range(count)
    ]


async def _publish_raw(event: Event, *, user_id: int | None = None) -> None:
    await get_channel_layer().group_send(
        user_group_name(event.user_id),
        {
            "type": "notification.event",
            "user_id": event.user_id if user_id is None else user_id,
            "seq": event.seq,
            "frame": event_frame_text(event),
        },
    )


async def _connected(user: Any) -> WebsocketCommunicator:
    client = communicator(user)
    await client.connect(timeout=5)
    assert (await client.receive_json_from(timeout=5))["type"] == "hello"
    return client


@pytest.mark.usefixtures("quiet_heartbeat")
async def test_live_event_after_a_gap_is_preceded_by_the_missing_ones(alice: Any) -> None:
    client = await _connected(alice)
    events = await sync_to_async(_log_only)(alice.pk, 4)
    await _publish_raw(events[3])  # 1 to 3 were never published.
    received = [await client.receive_json_from(timeout=5) for _ in range(4)]
    assert [frame["seq"] for frame in received] == [1, 2, 3, 4]
    assert [frame["id"] for frame in received] == [str(event.id) for event in events]
    await client.disconnect(timeout=5)


@pytest.mark.usefixtures("quiet_heartbeat")
async def test_duplicate_and_stale_live_events_are_dropped(alice: Any) -> None:
    client = await _connected(alice)
    events = await sync_to_async(_log_only)(alice.pk, 3)
    for event in (events[0], events[1], events[0], events[1], events[2], events[2]):
        await _publish_raw(event)
    received = [await client.receive_json_from(timeout=5) for _ in range(3)]
    assert [frame["seq"] for frame in received] == [1, 2, 3]
    await client.send_json_to({"type": "ping"})
    assert await client.receive_json_from(timeout=5) == {"type": "pong"}
    await client.disconnect(timeout=5)


@pytest.mark.usefixtures("quiet_heartbeat")
async def test_layer_event_for_another_user_is_dropped(alice: Any, bob: Any) -> None:
    client = await _connected(alice)
    [bobs] = await sync_to_async(_log_only)(bob.pk, 1)
    [alices] = await sync_to_async(_log_only)(alice.pk, 1)
    # Bob's frame, wrongly addressed to Alice's group (as another deployment
    # sharing the Redis prefix could): it must not reach her.
    await get_channel_layer().group_send(
        user_group_name(alice.pk),
        {"type": "notification.event", "user_id": bob.pk, "seq": 1, "frame": event_frame_text(bobs)},
    )
    await _publish_raw(alices)
    frame = await client.receive_json_from(timeout=5)
    assert frame["id"] == str(alices.id)
    await client.disconnect(timeout=5)


@pytest.mark.usefixtures("quiet_heartbeat")
async def test_resume_past_the_replay_limit_is_refused(alice: Any, settings: Any) -> None:
    settings.WS_RESUME_MAX_EVENTS = 5
    await sync_to_async(_log_only)(alice.pk, 8)
    client = await _connected(alice)
    await client.send_json_to({"type": "resume", "after": 2})
    error = await client.receive_json_from(timeout=5)
    assert error["code"] == "invalid_message"
    assert "would replay 6 events, more than 5" in error["detail"]
    await client.send_json_to({"type": "resume", "after": 3})
    assert [(await client.receive_json_from(timeout=5))["seq"] for _ in range(5)] == [4, 5, 6, 7, 8]
    assert await client.receive_json_from(timeout=5) == {
        "type": "resumed",
        "after": 3,
        "last_seq": 8,
        "count": 5,
        "truncated": False,
    }
    await client.disconnect(timeout=5)


@pytest.mark.usefixtures("quiet_heartbeat")
async def test_a_replay_ends_with_4401_when_the_token_expires_during_it(
    alice: Any, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No frame goes out at or after the token's exp, even in the middle of a replay.

    The consumer's clock reaches the token's exp once six events are out, in
    the replay's second batch. Its timer sleeps until the real exp, minutes
    away, so only the check before each send can end the replay in time.
    """
    settings.WS_REPLAY_BATCH_SIZE = 4
    await sync_to_async(_log_only)(alice.pk, 20)
    token = AccessToken.for_user(alice)
    expires_at = float(token["exp"])
    sent: list[tuple[float, dict[str, Any]]] = []  # (the consumer's clock, the message)

    def frame_type(message: dict[str, Any]) -> str | None:
        return json.loads(message["text"])["type"] if message["type"] == "websocket.send" else None

    def clock() -> float:
        events_out = sum(frame_type(message) == "event" for _, message in sent)
        return expires_at if events_out >= 6 else time.time()

    monkeypatch.setattr(consumers, "time", SimpleNamespace(time=clock))
    incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    over = asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        sent.append((clock(), message))
        if message["type"] == "websocket.close" or frame_type(message) == "resumed":
            over.set()

    app = asyncio.create_task(NotificationConsumer.as_asgi()(raw_scope(str(token)), incoming.get, send))
    await incoming.put({"type": "websocket.connect"})
    await incoming.put({"type": "websocket.receive", "text": '{"type": "resume", "after": 0}'})
    try:
        await asyncio.wait_for(over.wait(), timeout=5)
    finally:
        await incoming.put({"type": "websocket.disconnect", "code": 1000})
        await asyncio.wait_for(app, timeout=5)
    frames = [json.loads(message["text"]) for _, message in sent if frame_type(message)]
    assert [frame["type"] for frame in frames] == ["hello"] + ["event"] * 6
    assert [frame["seq"] for frame in frames[1:]] == [1, 2, 3, 4, 5, 6]
    assert sent[-1][1] == {"type": "websocket.close", "code": 4401}
    assert all(at < expires_at for at, message in sent if message["type"] == "websocket.send")
