"""Delivery over a real daphne: isolation, order, completeness, resume, ack."""

import asyncio
import uuid
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from notifications.models import Event, Stream
from notifications.services import aevent_record
from tests.conftest import ChannelLayers
from tests.servers import DaphneServer, free_port
from tests.wsclient import Client, access_token, ws_connect

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("server_log_clean", "redis_layer")]


async def emit(user_id: int, count: int, *, run_id: uuid.UUID | None = None, event: str = "agent_thinking") -> None:
    run_id = run_id or uuid.uuid4()
    for step in range(count):
        await aevent_record(
            user_id=user_id, event=event, run_id=run_id, agent="demo", data={"thought": f"step {step}", "step": step}
        )


def of_run_events(frames: list[dict[str, Any]], run_id: str) -> list[dict[str, Any]]:
    return [frame for frame in frames if frame["type"] == "event" and frame["run_id"] == run_id]


def assert_in_order(events: list[dict[str, Any]], first: int, last: int) -> None:
    assert [e["seq"] for e in events] == list(range(first, last + 1))


async def test_event_frame_has_the_documented_shape(daphne: DaphneServer, alice: Any) -> None:
    run_id = uuid.uuid4()
    async with ws_connect(daphne.ws_url, access_token(alice)) as client:
        record = await aevent_record(
            user_id=alice.pk, event="tool_completed", run_id=run_id, agent="demo", data={"ok": True, "result": 14}
        )
        [frame] = await client.events(1)
    assert frame == {
        "type": "event",
        "id": str(record.id),
        "seq": 1,
        "event": "tool_completed",
        "run_id": str(run_id),
        "agent": "demo",
        "created_at": record.created_at.isoformat().replace("+00:00", "Z"),
        "data": {"ok": True, "result": 14},
    }


async def test_burst_of_500_arrives_in_order_once_each(daphne: DaphneServer, alice: Any) -> None:
    async with ws_connect(daphne.ws_url, access_token(alice)) as client:
        # Five concurrent writers for one user: seqs interleave, publishes race.
        await asyncio.gather(*(emit(alice.pk, 100) for _ in range(5)))
        events = await client.events(500, timeout=30)
        assert_in_order(events, 1, 500)
        assert len({e["id"] for e in events}) == 500
        assert await client.settle() == []


async def test_users_see_only_their_own_events_with_20_emitting_at_once(daphne: DaphneServer, make_user: Any) -> None:
    users = [await sync_to_async(make_user)() for _ in range(20)]
    # Each user's stream starts at a different seq, so a leaked frame could
    # not hide behind a seq the receiver already has.
    for index, user in enumerate(users):
        await sync_to_async(_bulk_events)(user.pk, count=index * 20)
    per_user = 15
    async with _connect_all(daphne, users) as clients:
        runs = {user.pk: uuid.uuid4() for user in users}
        await asyncio.gather(*(emit(user.pk, per_user, run_id=runs[user.pk]) for user in users))
        received = await asyncio.gather(*(client.events(per_user, timeout=30) for client in clients))
        for index, (user, events) in enumerate(zip(users, received, strict=True)):
            assert_in_order(events, index * 20 + 1, index * 20 + per_user)
            assert {e["run_id"] for e in events} == {str(runs[user.pk])}
        live = await sync_to_async(
            lambda: {str(i) for i in Event.objects.filter(run_id__in=runs.values()).values_list("id", flat=True)}
        )()
        assert {e["id"] for events in received for e in events} == live
        extra = await asyncio.gather(*(client.settle() for client in clients))
        assert extra == [[]] * len(users)


class _connect_all:
    def __init__(self, daphne: DaphneServer, users: list[Any]) -> None:
        self.contexts = [ws_connect(daphne.ws_url, access_token(user)) for user in users]

    async def __aenter__(self) -> list[Client]:
        return list(await asyncio.gather(*(context.__aenter__() for context in self.contexts)))

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.gather(*(context.__aexit__(None, None, None) for context in self.contexts))


async def test_two_connections_of_one_user_both_get_everything(daphne: DaphneServer, alice: Any, bob: Any) -> None:
    token = access_token(alice)
    async with ws_connect(daphne.ws_url, token) as one, ws_connect(daphne.ws_url, token) as two:
        async with ws_connect(daphne.ws_url, access_token(bob)) as other:
            await emit(alice.pk, 5)
            assert_in_order(await one.events(5), 1, 5)
            assert_in_order(await two.events(5), 1, 5)
            assert await other.settle() == []


async def test_resume_after_disconnect_replays_the_gap_then_goes_live(daphne: DaphneServer, alice: Any) -> None:
    token = access_token(alice)
    async with ws_connect(daphne.ws_url, token) as client:
        await emit(alice.pk, 3)
        seen = await client.events(3)
    await emit(alice.pk, 4)  # Missed while disconnected.
    async with ws_connect(daphne.ws_url, token) as client:
        await client.send({"type": "resume", "after": seen[-1]["seq"]})
        replayed = await client.events(4)
        assert_in_order(replayed, 4, 7)
        assert await client.recv() == {"type": "resumed", "after": 3, "last_seq": 7, "count": 4, "truncated": False}
        await emit(alice.pk, 2)
        assert_in_order(await client.events(2), 8, 9)
        assert await client.settle() == []


async def test_resume_from_zero_replays_everything_even_if_already_sent(daphne: DaphneServer, alice: Any) -> None:
    async with ws_connect(daphne.ws_url, access_token(alice)) as client:
        await emit(alice.pk, 3)
        await client.events(3)
        await client.send({"type": "resume", "after": 0})
        assert_in_order(await client.events(3), 1, 3)
        assert await client.recv() == {"type": "resumed", "after": 0, "last_seq": 3, "count": 3, "truncated": False}


async def test_replies_come_in_the_order_of_the_requests(daphne: DaphneServer, alice: Any) -> None:
    """Messages sent back to back, unanswered, are handled one at a time: each reply before the next message's."""
    await emit(alice.pk, 3)
    async with ws_connect(daphne.ws_url, access_token(alice)) as client:
        await client.send({"type": "ping", "ref": 1})
        await client.send({"type": "resume", "after": 1})
        await client.send("{not json")
        await client.send({"type": "ack", "seq": 3})  # (no reply)
        await client.send({"type": "auth", "token": access_token(alice)})
        await client.send({"type": "run.start", "agent": "demo", "input": {"delay": 0}})
        await client.send('{"type": "nope"}')
        await client.send({"type": "ping", "ref": 2})
        frames = []
        while (frame := await client.recv()) != {"type": "pong", "ref": 2}:
            frames.append(frame)
        accepted = next(frame["run_id"] for frame in frames if frame["type"] == "run.accepted")
        # The run's own events are not replies: they may come in between, but only after run.accepted.
        of_run = [f["type"] for f in frames if f.get("run_id") == accepted]
        assert of_run[0] == "run.accepted" and set(of_run[1:]) <= {"event"}
        replies = [
            (f["type"], f.get("seq") or f.get("code")) for f in frames if f not in of_run_events(frames, accepted)
        ]
        assert replies == [
            ("pong", None),
            ("event", 2),
            ("event", 3),
            ("resumed", None),
            ("error", "invalid_json"),
            ("auth.ok", None),
            ("run.accepted", None),
            ("error", "unknown_type"),
        ]
        # Let the run end here, not under the next test.
        while not any(frame["event"] == "agent_completed" for frame in of_run_events(frames, accepted)):
            frames += await client.events(1)


async def test_resume_past_the_end_is_refused(daphne: DaphneServer, alice: Any) -> None:
    async with ws_connect(daphne.ws_url, access_token(alice)) as client:
        await emit(alice.pk, 2)
        await client.events(2)
        await client.send({"type": "resume", "after": 99})
        error = await client.expect("error")
        assert error == {
            "type": "error",
            "code": "invalid_message",
            "detail": "Cannot resume after 99: the last event is 2.",
        }
        await emit(alice.pk, 1)
        assert_in_order(await client.events(1), 3, 3)


async def test_resume_replays_more_than_one_batch(daphne: DaphneServer, alice: Any) -> None:
    await emit(alice.pk, 1)
    await sync_to_async(_bulk_events)(alice.pk, count=1200)
    async with ws_connect(daphne.ws_url, access_token(alice)) as client:
        await client.send({"type": "resume", "after": 0})
        assert_in_order(await client.events(1201, timeout=30), 1, 1201)
        assert (await client.recv())["count"] == 1201


def _bulk_events(user_id: int, *, count: int) -> None:
    """Fill the log quickly (as if written long ago): seqs continue the stream."""
    from django.db.models import F
    from django.utils import timezone

    stream, _ = Stream.objects.get_or_create(user_id=user_id)
    run_id = uuid.uuid4()
    Event.objects.bulk_create(
        Event(
            user_id=user_id,
            seq=stream.last_seq + i,
            event="agent_thinking",
            run_id=run_id,
            agent="demo",
            data={"step": i},
            created_at=timezone.now(),
        )
        for i in range(1, count + 1)
    )
    Stream.objects.filter(user_id=user_id).update(last_seq=F("last_seq") + count)


async def test_ack_is_stored_per_user_and_never_moves_back(daphne: DaphneServer, alice: Any) -> None:
    async with ws_connect(daphne.ws_url, access_token(alice)) as client:
        await emit(alice.pk, 5)
        await client.events(5)
        await client.send({"type": "ack", "seq": 4})
        await client.send({"type": "ack", "seq": 2})
        await client.send({"type": "ack", "seq": 6})
        error = await client.expect("error")
        assert error["code"] == "invalid_message"
        assert "Cannot ack 6" in error["detail"]
        # The server handles a connection's messages in order, so after the
        # pong every ack before it has been stored.
        await client.send({"type": "ping"})
        await client.expect("pong")
    acked = await sync_to_async(lambda: Stream.objects.get(user_id=alice.pk).acked_seq)()
    assert acked == 4


async def test_heartbeat_reports_the_last_seq_sent(daphne_beating: DaphneServer, alice: Any) -> None:
    async with ws_connect(daphne_beating.ws_url, access_token(alice)) as client:
        await emit(alice.pk, 2)
        await client.events(2)
        assert await client.expect("heartbeat") == {"type": "heartbeat", "last_seq": 2}


async def test_event_whose_publish_failed_arrives_with_the_next_heartbeat(
    daphne_beating: DaphneServer, alice: Any, channel_layers: ChannelLayers
) -> None:
    async with ws_connect(daphne_beating.ws_url, access_token(alice)) as client:
        await emit(alice.pk, 1)
        # This process publishes into a Redis nobody listens on: the layer
        # message is lost, as on a Redis outage, and only the log has it.
        channel_layers("pubsub", redis_url=f"redis://127.0.0.1:{free_port()}/0", prefix="nowhere")
        await emit(alice.pk, 2)
        assert await Event.objects.filter(pending__isnull=False).acount() == 2
        events = await client.events(3)
        assert_in_order(events, 1, 3)
        assert await client.quiet() == []
