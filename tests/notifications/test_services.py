"""notifications.services: the one way events are written and published."""

import asyncio
import logging
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.db import connection, transaction

from config.settings import redis_channel_layers
from notifications.exceptions import InvalidEventData, InvalidEventType
from notifications.frames import event_frame, event_frame_text
from notifications.models import Event, Stream
from notifications.services import aevent_record, event_record, stream_ack, user_group_name
from tests.conftest import SESSION_PREFIX
from tests.servers import free_port

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.fixture(params=["memory", "redis"])
async def layer(request: pytest.FixtureRequest, settings: Any) -> Any:
    """Each test runs against both layers: the behaviour must not differ."""
    if request.param == "memory":
        settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    else:
        redis_url = request.getfixturevalue("redis_url")
        settings.CHANNEL_LAYERS = redis_channel_layers(redis_url=redis_url, layer="pubsub", prefix=SESSION_PREFIX)
    layer = get_channel_layer()
    yield layer
    await layer.flush()


async def member_of(layer: Any, user_id: int) -> str:
    channel: str = await layer.new_channel()
    await layer.group_add(user_group_name(user_id), channel)
    return channel


async def record(user_id: int, event: str = "agent_thinking", **data: Any) -> Event:
    return await aevent_record(user_id=user_id, event=event, run_id=uuid.uuid4(), agent="demo", data=data)


async def test_record_publishes_the_frame_to_the_users_group_only(layer: Any, alice: Any, bob: Any) -> None:
    mine = await member_of(layer, alice.pk)
    theirs = await member_of(layer, bob.pk)
    event = await record(alice.pk, thought="hi", step=1)
    message = await asyncio.wait_for(layer.receive(mine), timeout=2)
    assert message == {
        "type": "notification.event",
        "user_id": alice.pk,
        "seq": 1,
        "frame": event_frame_text(event),
    }
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(layer.receive(theirs), timeout=0.2)
    stored = await Event.objects.aget(pk=event.pk)
    assert stored.published_at is not None
    assert stored.publish_attempts == 0


async def test_seqs_are_per_user_and_gapless(layer: Any, alice: Any, bob: Any) -> None:
    for _ in range(3):
        await record(alice.pk)
    await record(bob.pk)
    await record(alice.pk)
    rows = await sync_to_async(
        lambda: list(Event.objects.order_by("user_id", "seq").values_list("user__username", "seq"))
    )()
    assert rows == [("alice", 1), ("alice", 2), ("alice", 3), ("alice", 4), ("bob", 1)]
    assert await sync_to_async(lambda: Stream.objects.get(user=alice).last_seq)() == 4


def test_concurrent_writers_for_one_user_get_unique_gapless_seqs(alice: Any, bob: Any) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def writer(user_id: int) -> None:
        try:
            start.wait(timeout=10)
            for step in range(20):
                event_record(
                    user_id=user_id, event="agent_thinking", run_id=uuid.uuid4(), agent="demo", data={"step": step}
                )
        except BaseException as exc:  # Reported below; a thread cannot fail the test itself.
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=writer, args=(user.pk,)) for user in (alice, alice, alice, alice, bob, bob)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    assert sorted(Event.objects.filter(user=alice).values_list("seq", flat=True)) == list(range(1, 81))
    assert sorted(Event.objects.filter(user=bob).values_list("seq", flat=True)) == list(range(1, 41))


async def test_publish_waits_for_commit_and_a_rollback_publishes_nothing(layer: Any, alice: Any) -> None:
    # Two members: the pub/sub layer unsubscribes a channel whose receive is
    # cancelled, so the one that times out cannot be reused.
    channel = await member_of(layer, alice.pk)
    watcher = await member_of(layer, alice.pk)

    def rolled_back() -> None:
        with pytest.raises(RuntimeError), transaction.atomic():
            event_record(user_id=alice.pk, event="agent_started", run_id=uuid.uuid4(), agent="demo", data={})
            raise RuntimeError("abandon the run")

    def committed() -> Event:
        with transaction.atomic():
            return event_record(user_id=alice.pk, event="agent_started", run_id=uuid.uuid4(), agent="demo", data={})

    await database_sync_to_async(rolled_back)()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(layer.receive(watcher), timeout=0.2)
    assert await Event.objects.acount() == 0

    event = await database_sync_to_async(committed)()
    message = await asyncio.wait_for(layer.receive(channel), timeout=2)
    assert message["seq"] == event.seq == 1  # The rolled-back seq was given back.
    assert (await Event.objects.aget(pk=event.pk)).published_at is not None


async def test_failed_publish_leaves_the_event_pending_and_does_not_raise(
    settings: Any, alice: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings.CHANNEL_LAYERS = redis_channel_layers(
        redis_url=f"redis://127.0.0.1:{free_port()}/0", layer="pubsub", prefix="down"
    )
    with caplog.at_level(logging.WARNING, logger="notifications.services"):
        event = await record(alice.pk)
    await get_channel_layer().flush()
    stored = await Event.objects.aget(pk=event.pk)
    assert stored.published_at is None
    assert stored.publish_attempts == 1
    assert "ConnectionError" in stored.last_error
    assert f"Publish failed for event {event.pk}" in caplog.text


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"event": "agent_exploded"}, InvalidEventType),
        ({"data": ["not", "an", "object"]}, InvalidEventData),
        ({"data": {"when": object()}}, InvalidEventData),
        ({"data": {"x": float("nan")}}, InvalidEventData),
        ({"data": {"x": "\ud800"}}, InvalidEventData),
        ({"data": {"blob": "x" * (256 * 1024)}}, InvalidEventData),
        ({"run_id": "not-a-uuid"}, InvalidEventData),
        ({"agent": ""}, InvalidEventData),
        ({"agent": "demo\x00"}, InvalidEventData),
        ({"agent": "\udfff"}, InvalidEventData),
    ],
)
def test_invalid_events_are_refused_and_nothing_is_stored(alice: Any, kwargs: dict[str, Any], error: type) -> None:
    arguments = {"user_id": alice.pk, "event": "agent_started", "run_id": uuid.uuid4(), "agent": "demo", "data": {}}
    with pytest.raises(error):
        event_record(**{**arguments, **kwargs})
    assert not Event.objects.exists()
    assert not Stream.objects.filter(last_seq__gt=0).exists()


def test_event_frame_is_the_documented_shape(alice: Any) -> None:
    event = event_record(user_id=alice.pk, event="agent_started", run_id=uuid.uuid4(), agent="demo", data={"input": {}})
    frame = event_frame(event)
    assert list(frame) == ["type", "id", "seq", "event", "run_id", "agent", "created_at", "data"]
    assert frame["created_at"].endswith("Z")


def test_ack_never_moves_backwards(alice: Any) -> None:
    event_record(user_id=alice.pk, event="agent_started", run_id=uuid.uuid4(), agent="demo", data={})
    stream_ack(user_id=alice.pk, seq=5)
    stream_ack(user_id=alice.pk, seq=3)
    assert Stream.objects.get(user=alice).acked_seq == 5


def test_only_the_services_module_calls_group_send() -> None:
    callers = sorted(
        str(path.relative_to(ROOT))
        for folder in ("config", "notifications")
        for path in (ROOT / folder).rglob("*.py")
        if "group_send(" in path.read_text()
    )
    assert callers == ["notifications/services.py"]


async def test_concurrent_publishes_are_marked_together(
    layer: Any, make_user: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from notifications import services

    users = [await sync_to_async(make_user)() for _ in range(20)]
    writes: list[int] = []
    original = services._events_mark_published

    def counted(*, event_ids: list[uuid.UUID]) -> None:
        writes.append(len(event_ids))
        original(event_ids=event_ids)

    monkeypatch.setattr(services, "_events_mark_published", counted)
    await asyncio.gather(
        *(
            aevent_record(user_id=user.pk, event="agent_thinking", run_id=uuid.uuid4(), agent="demo", data={})
            for user in users
        )
    )
    assert sum(writes) == 20  # every event marked, once
    assert len(writes) < 20  # in fewer writes than events
    assert await Event.objects.filter(published_at__isnull=True).acount() == 0
