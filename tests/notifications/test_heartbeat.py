"""The per-process heartbeat (notifications/heartbeat.py, membership.py).

One read per slot decides which connections are behind; only those read the
log; a lost layer message still costs a connection at most one heartbeat, on
both Redis layers, and group membership survives a Redis restart.
"""

import asyncio
import uuid
from collections.abc import Callable, Collection
from typing import Any

import pytest
import redis.asyncio as aioredis
from asgiref.sync import sync_to_async
from channels.layers import InMemoryChannelLayer
from channels_redis.core import RedisChannelLayer
from channels_redis.pubsub import RedisPubSubChannelLayer
from django.db import OperationalError

from notifications.heartbeat import Heartbeats
from notifications.membership import Membership
from notifications.selectors import UserState
from notifications.services import aevent_record, user_group_name
from tests.conftest import ChannelLayers
from tests.servers import DaphneServer, RedisServer, free_port
from tests.wsclient import access_token, ws_connect


class Connection:
    """A connection as the heartbeat sees it: it records the states it was given."""

    def __init__(self, user_id: int) -> None:
        self.user_id = user_id
        self.beats: list[tuple[UserState | None, bool]] = []

    async def beat(self, state: UserState | None, *, rejoin: bool) -> None:
        self.beats.append((state, rejoin))


class Reads:
    def __init__(self) -> None:
        self.calls: list[set[int]] = []
        self.fail = False

    async def __call__(self, user_ids: Collection[int]) -> dict[int, UserState]:
        self.calls.append(set(user_ids))
        if self.fail:
            raise OperationalError("the database is down")
        return {
            user_id: UserState(user_id=user_id, username=f"u{user_id}", active=True, last_seq=user_id)
            for user_id in user_ids
            if user_id != 404
        }


async def beats_of(connections: list[Connection], count: int) -> None:
    """Wait (bounded) until every connection has beaten ``count`` times."""
    async with asyncio.timeout(10):
        while any(len(connection.beats) < count for connection in connections):  # noqa: ASYNC110 (beats come from the hub's task)
            await asyncio.sleep(0.01)


def hub(reads: Reads, *, slots: int = 4, layer: Any = None) -> Heartbeats:
    return Heartbeats(
        interval_seconds=0.2,
        slot_count=slots,
        membership=Membership(layer or RedisPubSubChannelLayer()),
        read=reads,
    )


async def test_one_read_per_slot_for_all_its_connections_and_every_connection_beats() -> None:
    reads = Reads()
    heartbeats = hub(reads, slots=4)
    connections = [Connection(user_id) for user_id in [1, 2, 3, 4, 5, 6, 7, 404]]
    for connection in connections:
        heartbeats.add(connection)
    try:
        await beats_of(connections, 3)
    finally:
        for connection in connections:
            await heartbeats.discard(connection)
    # Eight connections over four slots: each read asks for one slot's two users, not for all eight.
    assert all(len(call) == 2 for call in reads.calls), reads.calls
    assert set().union(*reads.calls) == {1, 2, 3, 4, 5, 6, 7, 404}
    # Each connection got its own user's state; a user that is gone comes as None.
    for connection in connections:
        user_id = connection.user_id
        expected = None if user_id == 404 else UserState(user_id, f"u{user_id}", active=True, last_seq=user_id)
        assert {state for state, _ in connection.beats} == {expected}
    assert heartbeats.task is None


async def test_while_the_database_is_down_no_connection_beats_and_then_they_do() -> None:
    reads = Reads()
    reads.fail = True
    heartbeats = hub(reads, slots=1)
    connection = Connection(1)
    heartbeats.add(connection)
    try:
        async with asyncio.timeout(10):
            while len(reads.calls) < 3:  # noqa: ASYNC110 (reads come from the hub's task)
                await asyncio.sleep(0.01)
        assert connection.beats == []
        reads.fail = False
        await beats_of([connection], 1)
    finally:
        await heartbeats.discard(connection)


async def test_the_task_stops_with_the_last_connection_and_starts_with_the_next() -> None:
    reads = Reads()
    heartbeats = hub(reads, slots=2)
    one, two = Connection(1), Connection(2)
    heartbeats.add(one)
    heartbeats.add(two)
    first = heartbeats.task
    assert first is not None
    await heartbeats.discard(one)
    assert heartbeats.task is first and not first.done()
    await heartbeats.discard(two)
    assert first.done() and heartbeats.task is None
    three = Connection(3)
    heartbeats.add(three)
    await beats_of([three], 1)
    await heartbeats.discard(three)
    assert len(heartbeats) == 0


def test_membership_is_renewed_only_as_often_as_the_layer_needs() -> None:
    pubsub = Membership(RedisPubSubChannelLayer())
    assert not pubsub.due(joined_at=0, joined_epoch=0, now=10**9)

    expiring = Membership(InMemoryChannelLayer(group_expiry=100))
    assert not expiring.due(joined_at=0, joined_epoch=0, now=49)
    assert expiring.due(joined_at=0, joined_epoch=0, now=50)
    expiring.epoch += 1  # the layer lost its groups
    assert expiring.due(joined_at=0, joined_epoch=0, now=1)

    class Unknown:
        pass

    assert Membership(Unknown()).due(joined_at=0, joined_epoch=0, now=0)


async def test_the_core_layer_notices_that_redis_lost_its_groups(
    redis_server_factory: Callable[[], RedisServer],
) -> None:
    server = redis_server_factory()
    layer = RedisChannelLayer(hosts=[{"address": server.url}], prefix="membership")
    membership = Membership(layer)
    try:
        # The first look: connections may have joined before it, so they join again once.
        await membership.check()
        assert membership.epoch == 1
        await membership.check()
        assert membership.epoch == 1
        client = aioredis.from_url(server.url)
        await client.flushall()
        await client.aclose()
        await membership.check()
        assert membership.epoch == 2
        await membership.check()
        assert membership.epoch == 2
        # Redis unreachable: nothing learnt, nothing raised.
        await sync_to_async(server.stop)()
        await membership.check()
        assert membership.epoch == 2
        await sync_to_async(server.start)()  # (for the layer to close its connections cleanly)
    finally:
        await layer.flush()


# End to end: a real daphne on each layer.


@pytest.mark.e2e
@pytest.mark.parametrize("layer", ["pubsub", "core"])
async def test_an_event_whose_layer_message_was_lost_arrives_within_one_heartbeat(
    daphne_factory: Callable[..., DaphneServer], redis_url: str, channel_layers: ChannelLayers, alice: Any, layer: str
) -> None:
    server = daphne_factory(redis_url=redis_url, CHANNEL_LAYER=layer, WS_HEARTBEAT_SECONDS="0.5")
    async with ws_connect(server.ws_url, access_token(alice)) as client:
        # Published into a Redis nobody listens on: only the log has it.
        channel_layers("pubsub", redis_url=f"redis://127.0.0.1:{free_port()}/0", prefix="nowhere")
        await aevent_record(user_id=alice.pk, event="agent_started", run_id=uuid.uuid4(), agent="demo", data={})
        # The first heartbeat after the commit may come from a read made before it; the second cannot.
        frames: list[dict[str, Any]] = []
        while sum(frame["type"] == "heartbeat" for frame in frames) < 2:
            frames.append(await client.recv(heartbeats=True, timeout=10))
        assert [frame["seq"] for frame in frames if frame["type"] == "event"] == [1], frames
    server.assert_log_clean()


@pytest.mark.e2e
@pytest.mark.parametrize("layer", ["pubsub", "core"])
async def test_the_group_is_joined_again_after_a_redis_restart(
    redis_server_factory: Callable[[], RedisServer],
    daphne_factory: Callable[..., DaphneServer],
    channel_layers: ChannelLayers,
    alice: Any,
    layer: str,
) -> None:
    redis = redis_server_factory()
    server = daphne_factory(redis_url=redis.url, CHANNEL_LAYER=layer, WS_HEARTBEAT_SECONDS="0.5")
    publisher = channel_layers("pubsub" if layer == "pubsub" else "core", redis_url=redis.url)
    group = user_group_name(alice.pk)

    async def members() -> int:
        client = aioredis.from_url(redis.url)  # (a new connection each time: Redis restarts in between)
        try:
            if isinstance(publisher, RedisPubSubChannelLayer):
                channel = publisher._get_layer()._get_group_channel_name(group)
                return int(dict(await client.pubsub_numsub(channel))[channel.encode()])
            return int(await client.zcard(publisher._group_key(group)))
        finally:
            await client.aclose()

    async def members_back() -> None:
        async with asyncio.timeout(15):
            while await members() == 0:  # noqa: ASYNC110 (Redis is polled)
                await asyncio.sleep(0.1)

    async with ws_connect(server.ws_url, access_token(alice)) as ws:
        assert await members() == 1
        await sync_to_async(redis.stop)()
        await sync_to_async(redis.start)()
        assert await members() == 0  # Redis kept nothing.
        await members_back()
        await aevent_record(user_id=alice.pk, event="agent_started", run_id=uuid.uuid4(), agent="demo", data={})
        assert [event["seq"] for event in await ws.events(1)] == [1]
    assert "Exception inside application" not in server.log()
