"""notifications.services: the one way events are written and published."""

import asyncio
import json
import logging
import threading
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import hypothesis
import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.db import connection, transaction
from hypothesis import example, given, settings
from hypothesis import strategies as st

from notifications import services
from notifications.exceptions import InvalidEventData, InvalidEventType
from notifications.frames import event_frame, event_frame_text
from notifications.models import Event, EventType, PendingEvent, Stream
from notifications.services import aevent_record, event_record, stream_ack
from tests.conftest import ChannelLayers
from tests.hostile import (
    DETAIL_MAX_CHARS,
    big_strings,
    hostile_text,
    json_ints,
    json_values,
    mostly,
    nested,
    non_json_scalars,
    python_keys,
    python_values,
    sendable,
)
from tests.notifications.conftest import member_of
from tests.servers import free_port

ROOT = Path(__file__).resolve().parent.parent.parent


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
        "created": event.created_at.timestamp(),
    }
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(layer.receive(theirs), timeout=0.2)
    assert await Event.objects.filter(pk=event.pk).aexists()
    assert not await PendingEvent.objects.filter(pk=event.pk).aexists()  # Published: out of the outbox.


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
    assert not await PendingEvent.objects.filter(pk=event.pk).aexists()


async def test_failed_publish_leaves_the_event_pending_and_does_not_raise(
    channel_layers: ChannelLayers, alice: Any, caplog: pytest.LogCaptureFixture
) -> None:
    channel_layers("pubsub", redis_url=f"redis://127.0.0.1:{free_port()}/0", prefix="down")
    with caplog.at_level(logging.WARNING, logger="notifications.services"):
        event = await record(alice.pk)
    await services.aevents_outcomes_recorded()  # The failed attempt is recorded just after the call returns.
    stored = await PendingEvent.objects.aget(pk=event.pk)
    assert stored.publish_attempts == 1
    assert "ConnectionError" in stored.last_error
    assert f"Publish failed for 1 event(s) from {event.pk}" in caplog.text


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


def test_a_refusal_names_the_value_briefly_whatever_it_is(alice: Any) -> None:
    arguments = {"user_id": alice.pk, "event": "agent_started", "run_id": uuid.uuid4(), "agent": "demo", "data": {}}
    huge = 10**4300  # Too long for repr(), which raises ValueError.
    with pytest.raises(InvalidEventType, match=r"^Unknown event <int>; expected one of agent_started, "):
        event_record(**{**arguments, "event": huge})
    with pytest.raises(InvalidEventData, match=r"^run_id must be a UUID, got <int>\.$"):
        event_record(**{**arguments, "run_id": huge})
    with pytest.raises(InvalidEventData, match=r"^run_id must be a UUID, got 'xxx+'\.\.\.\.$") as refused:
        event_record(**{**arguments, "run_id": "x" * 1_000_000})
    assert len(str(refused.value)) < 100


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
    from notifications import pgwrite

    users = [await sync_to_async(make_user)() for _ in range(20)]
    writes: list[int] = []
    # PostgreSQL marks on the event loop's own connections (pgwrite), other databases through the ORM.
    marker: Any
    if connection.vendor == "postgresql":
        marker, name = pgwrite, "aevents_mark_published"
        original_async = pgwrite.aevents_mark_published

        async def counted_async(*, event_ids: list[uuid.UUID]) -> None:
            writes.append(len(event_ids))
            await original_async(event_ids=event_ids)

        counted: Any = counted_async
    else:
        marker, name = services, "_events_mark_published"
        original = services._events_mark_published

        def counted(*, event_ids: list[uuid.UUID]) -> None:
            writes.append(len(event_ids))
            original(event_ids=event_ids)

    monkeypatch.setattr(marker, name, counted)
    await asyncio.gather(
        *(
            aevent_record(user_id=user.pk, event="agent_thinking", run_id=uuid.uuid4(), agent="demo", data={})
            for user in users
        )
    )
    await services.aevents_outcomes_recorded()  # Recorded just after the callers return.
    assert sum(writes) == 20  # every event marked, once
    assert len(writes) < 20  # in fewer writes than events
    assert await Event.objects.filter(pending__isnull=False).acount() == 0


# Properties: whatever an agent hands over, the event is stored as given or refused with the documented error.


@pytest.fixture
def carol(db: None, django_user_model: Any) -> Any:
    """A user in the test's transaction: nothing commits, so nothing is published."""
    return django_user_model.objects.create_user("carol", password=None)


def as_json(value: Any) -> Any:
    """``value`` as a client reads it: JSON types, and numbers compared by their decimal value.

    Data is stored as JSON, so what reads back is its JSON form: a tuple comes
    back a list and an int key a string, as in the live frame. PostgreSQL's
    jsonb keeps numbers as decimals (``1e+23`` comes back as the int
    100000000000000000000000), which is the same JSON number.
    """
    return json.loads(json.dumps(value), parse_float=Decimal, parse_int=Decimal)


event_names = mostly(
    st.sampled_from(EventType.values), hostile_text | big_strings(max_size=10_000) | st.none() | non_json_scalars
)
agent_names = mostly(
    st.sampled_from(["demo", "calculator", "x" * 100]), hostile_text | st.just("x" * 101) | st.none() | st.integers()
)
run_ids = mostly(
    st.uuids() | st.uuids().map(str) | st.uuids().map(lambda run_id: run_id.hex) | st.uuids().map(lambda u: u.urn),
    hostile_text | big_strings(max_size=10_000) | st.none() | json_ints | non_json_scalars,
)
event_data = st.one_of(
    st.dictionaries(python_keys, python_values, max_size=4),
    st.dictionaries(hostile_text, json_values(text=hostile_text), max_size=4),
    st.builds(lambda blob: {"blob": blob}, big_strings(max_size=300_000)),
    st.builds(lambda value, depth: {"deep": nested(value, depth)}, json_values(max_leaves=2), st.integers(30, 50)),
    python_values,
)


@example(event="agent_started", agent="demo", run_id=uuid.UUID(int=1), data={"\ud800": None})
@example(event="agent_started", agent="demo", run_id=uuid.UUID(int=1), data={"x": "a\x00"})
@example(event="agent_started", agent="\ud800", run_id=uuid.UUID(int=1), data={})
@example(event="agent_started", agent="demo\x00", run_id=uuid.UUID(int=1), data={})
@settings(max_examples=200)
@given(event=event_names, agent=agent_names, run_id=run_ids, data=event_data)
def test_any_event_is_stored_as_given_or_refused(carol: Any, event: Any, agent: Any, run_id: Any, data: Any) -> None:
    """Through the public ``event_record`` (``_event_validate`` is private, and storing is half the
    property): it stores the event, which reads back as given and can be sent to a client, live and
    replayed alike; or it raises ``InvalidEventType``/``InvalidEventData`` and stores nothing.

    Each example runs in a savepoint that is rolled back, so examples do not see each other's rows.
    """
    with transaction.atomic():
        try:
            record = event_record(user_id=carol.pk, event=event, run_id=run_id, agent=agent, data=data)
        except (InvalidEventType, InvalidEventData) as exc:
            hypothesis.event(f"refused: {type(exc).__name__}")
            assert 0 < len(str(exc)) <= DETAIL_MAX_CHARS  # It names what is wrong; it does not echo it whole.
            assert not Event.objects.filter(user=carol).exists()
            return
        hypothesis.event("stored")
        stored = Event.objects.get(pk=record.pk)
        assert (stored.event, stored.agent) == (event, agent)
        assert stored.run_id == (run_id if isinstance(run_id, uuid.UUID) else uuid.UUID(str(run_id)))
        assert as_json(stored.data) == as_json(data)
        live, replayed = sendable(event_frame(record)), sendable(event_frame(stored))
        assert as_json(json.loads(live)) == as_json(json.loads(replayed))
        transaction.set_rollback(True)


async def test_a_returned_event_does_not_say_it_is_pending_once_it_is_published(layer: Any, alice: Any) -> None:
    event = await record(alice.pk)
    await services.aevents_outcomes_recorded()
    assert not await PendingEvent.objects.filter(pk=event.pk).aexists()
    assert await sync_to_async(lambda: event.outbox)() is None  # No outbox row cached on it from its writing.


async def test_a_synchronously_recorded_event_does_not_say_it_is_pending_once_it_is_published(
    transactional_db: None, redis_layer: Any, alice: Any
) -> None:
    def recorded() -> Event:
        return event_record(user_id=alice.pk, event="agent_started", run_id=uuid.uuid4(), agent="demo", data={})

    event = await sync_to_async(recorded)()
    assert not await PendingEvent.objects.filter(pk=event.pk).aexists()
    assert await sync_to_async(lambda: event.outbox)() is None
