"""The channel layer from every REDIS_URL form, against real Redis: one server, shards, Sentinel."""

import asyncio
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from channels.layers import InMemoryChannelLayer
from django.conf import settings
from django.utils.module_loading import import_string
from redis import asyncio as aioredis

from config.redis_urls import redis_channel_layers
from notifications.layers import (
    dispatch_merged,
    group_add_many,
    group_channel_receive,
    group_discard_many,
    new_group_channel,
    pubsub_publish_many,
)
from tests.conftest import SESSION_PREFIX
from tests.servers import RedisServer, free_port, wait_for

TIMEOUT_SECONDS = 5.0


@pytest.fixture(scope="module")
def shards(redis_server_factory: Any) -> list[RedisServer]:
    return [redis_server_factory(), redis_server_factory()]


@pytest.fixture(scope="module")
def sentinel(redis_server_factory: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis Sentinel watching a master of its own; yields a sentinel:// URL."""
    master = redis_server_factory()
    port = free_port()
    workdir = tmp_path_factory.mktemp("sentinel")
    config = Path(workdir / "sentinel.conf")
    config.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {workdir}\n"
        f"sentinel monitor themaster 127.0.0.1 {master.port} 1\n"
        "sentinel down-after-milliseconds themaster 5000\n"
    )
    binary = shutil.which("redis-server")
    assert binary is not None
    process = subprocess.Popen(
        [binary, str(config), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(lambda: _answers(port), timeout=10, what="redis sentinel")
        yield f"sentinel://127.0.0.1:{port}/themaster/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"SENTINEL get-master-addr-by-name themaster\r\n")
            return sock.recv(64).startswith(b"*2")
    except OSError:
        return False


def layer_for(redis_url: str, kind: str) -> Any:
    config = redis_channel_layers(
        redis_url=redis_url, layer=kind, prefix=f"{SESSION_PREFIX}layers", options=settings.REDIS_OPTIONS
    )["default"]
    return import_string(str(config["BACKEND"]))(**config["CONFIG"])  # type: ignore[arg-type]


async def close(layer: Any) -> None:
    """Close the layer's connections, and the Sentinel clients that channels-redis leaves open."""
    if hasattr(layer, "close_pools"):
        pools = [conn.connection_pool for loop in layer._layers.values() for conn in loop._connections.values()]
        await layer.flush()  # (the core layer's flush deletes its keys; this prefix is the test's own)
        await layer.close_pools()
    else:
        shards = layer._get_layer()._shards
        pools = [shard._redis.connection_pool for shard in shards if shard._redis is not None]
        await layer.flush()
    for pool in pools:
        for client in getattr(getattr(pool, "sentinel_manager", None), "sentinels", []):
            await client.aclose()


async def round_trip(layer: Any, groups: int, *, batched: bool = False) -> None:
    """Each of ``groups`` groups gets one message to its one member (joined one by one, or all in one batch)."""
    channels = [await layer.new_channel() for _ in range(groups)]
    if batched:
        await group_add_many(layer, [(f"g{index}", channel) for index, channel in enumerate(channels)])
    for index, channel in enumerate(channels):
        await layer.group_add(f"g{index}", channel)  # (again, when batched: joining twice is a no-op)
    for index in range(groups):
        await layer.group_send(f"g{index}", {"type": "test.message", "n": index})
    for index, channel in enumerate(channels):
        message = await asyncio.wait_for(layer.receive(channel), timeout=TIMEOUT_SECONDS)
        assert message == {"type": "test.message", "n": index}


@pytest.mark.parametrize("kind", ["pubsub", "core"])
async def test_sharded_across_two_servers(shards: list[RedisServer], kind: str) -> None:
    layer = layer_for(",".join(shard.url for shard in shards), kind)
    try:
        await round_trip(layer, groups=20)
        # Both shards hold part of it: subscriptions (pub/sub) or group keys (core).
        for shard in shards:
            client = aioredis.Redis.from_url(shard.url)
            try:
                held = await client.pubsub_channels() if kind == "pubsub" else await client.keys(f"{SESSION_PREFIX}*")
            finally:
                await client.aclose()
            assert len(held) > 0, f"{shard.url} holds none of the 20 groups"
    finally:
        await close(layer)


async def test_a_batch_is_published_in_order_across_two_servers_and_survives_a_script_flush(
    shards: list[RedisServer],
) -> None:
    layer = layer_for(",".join(shard.url for shard in shards), "pubsub")
    try:
        channels = [await layer.new_channel() for _ in range(10)]
        for index, channel in enumerate(channels):
            await layer.group_add(f"g{index}", channel)
        for attempt in range(2):
            # Each group gets three messages, interleaved with the others' in the batch.
            batch = [(f"g{index}", {"type": "test.message", "n": n}) for n in range(3) for index in range(10)]
            assert await pubsub_publish_many(layer, batch)
            for channel in channels:
                got = [await asyncio.wait_for(layer.receive(channel), timeout=TIMEOUT_SECONDS) for _ in range(3)]
                assert [message["n"] for message in got] == [0, 1, 2]
            if attempt == 0:
                # A server that lost its scripts (a restart, SCRIPT FLUSH) gets the script again.
                for shard in shards:
                    client = aioredis.Redis.from_url(shard.url)
                    try:
                        await client.script_flush()
                    finally:
                        await client.aclose()
    finally:
        await close(layer)


async def test_publish_many_leaves_other_layers_to_their_group_send() -> None:
    layer = InMemoryChannelLayer()
    assert not await pubsub_publish_many(layer, [("g", {"type": "test.message"})])


@pytest.mark.parametrize("kind", ["pubsub", "core"])
async def test_joined_in_one_batch_across_two_servers(shards: list[RedisServer], kind: str) -> None:
    layer = layer_for(",".join(shard.url for shard in shards), kind)
    try:
        await round_trip(layer, groups=20, batched=True)
        if kind == "pubsub":
            # One subscription per group, however many times it was joined.
            subscribed = [shard._subscribed_to for shard in layer._get_layer()._shards]
            assert sum(len(names) for names in subscribed) == 20 + 20  # the groups, and the channels' own
    finally:
        await close(layer)


@pytest.mark.parametrize("kind", ["pubsub", "core"])
async def test_a_consumers_channel_hears_its_groups_without_a_subscription_of_its_own(
    shards: list[RedisServer], kind: str
) -> None:
    layer = layer_for(shards[0].url, kind)
    try:
        channel = await new_group_channel(layer)
        await group_add_many(layer, [("g", channel)])
        await layer.group_send("g", {"type": "test.message"})
        assert await asyncio.wait_for(layer.receive(channel), timeout=TIMEOUT_SECONDS) == {"type": "test.message"}
        if kind == "pubsub":
            client = aioredis.Redis.from_url(shards[0].url)
            try:
                subscribed = {
                    name.decode() if isinstance(name, bytes) else name for name in await client.pubsub_channels()
                }
                assert subscribed == {layer._get_layer()._get_group_channel_name("g")}
            finally:
                await client.aclose()
    finally:
        await close(layer)


async def test_a_channel_gone_before_its_batched_join_does_not_fail_the_others(shards: list[RedisServer]) -> None:
    """A client that left while its join waited: the burst it was in still joins."""
    layer = layer_for(shards[0].url, "pubsub")
    try:
        staying = await new_group_channel(layer)
        await group_add_many(layer, [("g1", "specific.gone-already"), ("g2", staying)])
        await layer.group_send("g2", {"type": "test.message"})
        assert await asyncio.wait_for(layer.receive(staying), timeout=TIMEOUT_SECONDS) == {"type": "test.message"}
        assert "specific.gone-already" not in str(layer._get_layer().groups)
    finally:
        await close(layer)


async def subscribed_names(url: str) -> set[str]:
    client = aioredis.Redis.from_url(url)
    try:
        return {name.decode() if isinstance(name, bytes) else name for name in await client.pubsub_channels()}
    finally:
        await client.aclose()


async def test_a_cancelled_receive_drops_its_channel_without_waiting_for_the_shard(shards: list[RedisServer]) -> None:
    """A disconnect in a burst must not queue on the shard's lock (held here by a join or publish)."""
    layer = layer_for(shards[0].url, "pubsub")
    try:
        channel = await new_group_channel(layer)
        receiving = asyncio.ensure_future(group_channel_receive(layer, channel))
        await asyncio.sleep(0)
        shard = layer._get_layer()._get_shard(channel)
        async with shard._lock:
            receiving.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(receiving, timeout=TIMEOUT_SECONDS)
        assert channel not in layer._get_layer().channels
    finally:
        await close(layer)


class Stop(Exception):
    pass


async def test_merged_dispatch_takes_both_inputs_in_order_and_skips_what_does_not_decode(
    shards: list[RedisServer],
) -> None:
    layer = layer_for(shards[0].url, "pubsub")
    asgi: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    seen: list[dict[str, Any]] = []
    bad: list[Exception] = []
    second = asyncio.Event()

    async def dispatch(message: dict[str, Any]) -> None:
        seen.append(message)
        if message.get("n") == 2:
            second.set()
        if message["type"] == "websocket.disconnect":
            raise Stop

    try:
        channel = await new_group_channel(layer)
        await group_add_many(layer, [("g", channel)])
        serving = asyncio.ensure_future(
            dispatch_merged(layer, channel, receive=asgi.get, dispatch=dispatch, undecodable=bad.append)
        )
        asgi.put_nowait({"type": "websocket.receive", "text": "first"})
        await layer.group_send("g", {"type": "test.message", "n": 1})
        client = aioredis.Redis.from_url(shards[0].url)
        try:  # Bytes on the group's channel that are not a layer message.
            await client.publish(layer._get_layer()._get_group_channel_name("g"), b"\xc1 not msgpack")
        finally:
            await client.aclose()
        await layer.group_send("g", {"type": "test.message", "n": 2})
        await asyncio.wait_for(second.wait(), timeout=TIMEOUT_SECONDS)
        asgi.put_nowait({"type": "websocket.disconnect"})
        with pytest.raises(Stop):
            await asyncio.wait_for(serving, timeout=TIMEOUT_SECONDS)
        assert seen == [
            {"type": "websocket.receive", "text": "first"},
            {"type": "test.message", "n": 1},
            {"type": "test.message", "n": 2},
            {"type": "websocket.disconnect"},
        ]
        assert len(bad) == 1
        assert channel not in layer._get_layer().channels  # Gone from the layer with the connection.
    finally:
        await close(layer)


async def test_merged_dispatch_ends_with_the_servers_receive_failing(shards: list[RedisServer]) -> None:
    layer = layer_for(shards[0].url, "pubsub")

    async def broken() -> dict[str, Any]:
        raise OSError("the server went away")

    async def dispatch(message: dict[str, Any]) -> None:
        raise AssertionError(f"nothing to dispatch, got {message}")

    try:
        channel = await new_group_channel(layer)
        with pytest.raises(OSError, match="went away"):
            await asyncio.wait_for(
                dispatch_merged(layer, channel, receive=broken, dispatch=dispatch, undecodable=lambda exc: None),
                timeout=TIMEOUT_SECONDS,
            )
        assert not await dispatch_merged(
            InMemoryChannelLayer(), channel, receive=broken, dispatch=dispatch, undecodable=lambda exc: None
        )
    finally:
        await close(layer)


@pytest.mark.parametrize("kind", ["pubsub", "core"])
async def test_group_channel_receive_gets_the_groups_messages(shards: list[RedisServer], kind: str) -> None:
    layer = layer_for(shards[0].url, kind)
    try:
        channel = await new_group_channel(layer)
        await group_add_many(layer, [("g", channel)])
        await layer.group_send("g", {"type": "test.message", "n": 1})
        message = await asyncio.wait_for(group_channel_receive(layer, channel), timeout=TIMEOUT_SECONDS)
        assert message == {"type": "test.message", "n": 1}
    finally:
        await close(layer)


@pytest.mark.parametrize("kind", ["pubsub", "core"])
async def test_leaving_in_one_batch_unsubscribes_the_emptied_groups_only(shards: list[RedisServer], kind: str) -> None:
    layer = layer_for(shards[0].url, kind)
    try:
        channels = [await new_group_channel(layer) for _ in range(21)]
        # g0..g19 one member each; "shared" has two, of which one leaves.
        await group_add_many(layer, [(f"g{n}", channels[n]) for n in range(20)])
        await group_add_many(layer, [("shared", channels[0]), ("shared", channels[20])])
        await group_discard_many(layer, [(f"g{n}", channels[n]) for n in range(20)] + [("shared", channels[0])])
        await group_discard_many(layer, [("g0", channels[0]), ("never", channels[1])])  # not members: no-ops
        for n in range(20):
            await layer.group_send(f"g{n}", {"type": "test.message", "n": n})
        await layer.group_send("shared", {"type": "test.message", "n": "shared"})
        got = await asyncio.wait_for(group_channel_receive(layer, channels[20]), timeout=TIMEOUT_SECONDS)
        assert got == {"type": "test.message", "n": "shared"}
        for channel in channels[:20]:  # nothing for those that left (the shared message came after theirs)
            assert await_nothing(layer, channel)
        if kind == "pubsub":
            assert await subscribed_names(shards[0].url) == {layer._get_layer()._get_group_channel_name("shared")}
    finally:
        await close(layer)


def await_nothing(layer: Any, channel: str) -> bool:
    """The channel's queue is empty (pub/sub: messages already delivered to this process are queued)."""
    if kind_of(layer) != "pubsub":
        return True  # the core layer has no local queue; its group membership is checked by the send above
    queue = layer._get_layer().channels.get(channel)
    return queue is not None and queue.empty()


def kind_of(layer: Any) -> str:
    return "core" if hasattr(layer, "close_pools") else "pubsub"


async def test_a_group_joined_again_while_its_leave_waited_stays_subscribed(shards: list[RedisServer]) -> None:
    """A user reconnecting while its old connection's leave waits for the shard must keep hearing its group."""
    layer = layer_for(shards[0].url, "pubsub")
    try:
        old, new = await new_group_channel(layer), await new_group_channel(layer)
        await group_add_many(layer, [("g", old)])
        group_channel = layer._get_layer()._get_group_channel_name("g")
        shard = layer._get_layer()._get_shard(group_channel)
        async with shard._lock:  # the leave has emptied the group and waits to unsubscribe it
            leaving = asyncio.ensure_future(group_discard_many(layer, [("g", old)]))
            await asyncio.sleep(0)
            joining = asyncio.ensure_future(group_add_many(layer, [("g", new)]))
            await asyncio.sleep(0)
        await asyncio.wait_for(asyncio.gather(leaving, joining), timeout=TIMEOUT_SECONDS)
        assert group_channel in await subscribed_names(shards[0].url)
        await layer.group_send("g", {"type": "test.message"})
        got = await asyncio.wait_for(group_channel_receive(layer, new), timeout=TIMEOUT_SECONDS)
        assert got == {"type": "test.message"}
    finally:
        await close(layer)


@pytest.mark.parametrize("kind", ["pubsub", "core"])
async def test_through_sentinel(sentinel: str, kind: str) -> None:
    layer = layer_for(sentinel, kind)
    try:
        await round_trip(layer, groups=3)
    finally:
        await close(layer)
