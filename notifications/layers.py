"""Channel layers configured to survive idle periods and connect bursts, and batched publishes and joins."""

import asyncio
import contextlib
import hashlib
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from channels_redis.core import RedisChannelLayer
from channels_redis.pubsub import RedisPubSubChannelLayer
from channels_redis.utils import create_pool
from redis import asyncio as aioredis
from redis.exceptions import NoScriptError


class RedisCoreChannelLayer(RedisChannelLayer):
    """The channels-redis core layer with a pool that waits instead of failing.

    The stock pool raises ``MaxConnectionsError`` as soon as more coroutines
    than ``max_connections`` need Redis at once, which a burst of connects or
    disconnects does. A blocking pool makes them queue for up to ``timeout``
    seconds instead.
    """

    def __init__(self, *args: Any, brpop_timeout_seconds: float = 5.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # How long one blocking read waits for a message. redis-py's socket
        # timeout must stay above it, or idle reads fail with TimeoutError.
        self.brpop_timeout = brpop_timeout_seconds

    def create_pool(self, index: int) -> aioredis.ConnectionPool:
        host: dict[str, Any] = dict(self.hosts[index])
        if "address" not in host:
            pool: aioredis.ConnectionPool = create_pool(host)  # Sentinel: channels-redis' own, following the master.
            return pool
        address = host.pop("address")
        return aioredis.BlockingConnectionPool.from_url(address, **host)


# A whole batch's PUBLISHes in one command: one to pack and one reply to read instead of one each
# (redis-py's per-command work in a pipeline was a fifth of the drainer's time).
_PUBLISH_ALL = """
for i = 1, #ARGV, 2 do
    redis.call('PUBLISH', ARGV[i], ARGV[i + 1])
end
return #ARGV / 2
"""
_PUBLISH_ALL_SHA = hashlib.sha1(_PUBLISH_ALL.encode()).hexdigest()  # noqa: S324  # Redis names scripts by SHA-1.


async def pubsub_publish_many(layer: Any, messages: Sequence[tuple[str, Mapping[str, Any]]]) -> bool:
    """Publish (group, message) pairs in order, in one command per Redis shard.

    Only for channels-redis' pub/sub layer, whose ``group_send`` is one
    ``PUBLISH`` per message: this makes the same ``PUBLISH``es of the same
    bytes to the same channels, from a Lua script, so consumers and other
    servers cannot tell the difference. Returns False, sending nothing, for
    any other layer. It reaches below the layer's public API (pinned in
    requirements.txt, and tested against a real Redis).
    """
    if not isinstance(layer, RedisPubSubChannelLayer):
        return False
    loop_layer = layer._get_layer()
    by_shard: dict[Any, list[tuple[str, bytes]]] = {}
    for group, message in messages:
        channel = loop_layer._get_group_channel_name(group)
        by_shard.setdefault(loop_layer._get_shard(channel), []).append((channel, layer.serialize(message)))
    await asyncio.gather(*(_publish_all(shard, items) for shard, items in by_shard.items()))
    return True


async def _publish_all(shard: Any, items: list[tuple[str, bytes]]) -> None:
    args = [part for item in items for part in item]
    async with shard._lock:  # The shard's own lock, as its publish takes.
        shard._ensure_redis()
        try:
            await shard._redis.evalsha(_PUBLISH_ALL_SHA, 0, *args)
        except NoScriptError:
            # The server does not have the script yet (it started since, say); nothing was published.
            await shard._redis.script_load(_PUBLISH_ALL)
            await shard._redis.evalsha(_PUBLISH_ALL_SHA, 0, *args)


async def group_add_many(layer: Any, pairs: Sequence[tuple[str, str]]) -> None:
    """Add each (group, channel) pair; on the pub/sub layer, one ``SUBSCRIBE`` per Redis shard for all.

    channels-redis' pub/sub ``group_add`` subscribes one group at a time, a
    round trip and a write each; a burst of connects then spends much of its
    time writing them. This does what ``group_add`` does for each pair (the
    layer's group map, then the shard's subscriptions under its lock), with
    every new group of a shard in one command; a channel whose consumer has
    already gone is skipped (``group_add`` would raise, failing the whole
    burst for one departed client). Other layers get ``group_add`` for each
    pair, all at once.
    """
    if not isinstance(layer, RedisPubSubChannelLayer):
        await asyncio.gather(*(layer.group_add(group, channel) for group, channel in pairs))
        return
    loop_layer = layer._get_layer()
    by_shard: dict[Any, list[str]] = {}
    for group, channel in pairs:
        if channel not in loop_layer.channels:
            # Its consumer has gone (the layer drops a channel when its reader is
            # cancelled) while the join waited: nothing to join, and the others
            # in the batch must not fail for it.
            continue
        group_channel = loop_layer._get_group_channel_name(group)
        loop_layer.groups.setdefault(group_channel, set()).add(channel)
        by_shard.setdefault(loop_layer._get_shard(group_channel), []).append(group_channel)
    await asyncio.gather(*(_subscribe_many(shard, names) for shard, names in by_shard.items()))


async def _subscribe_many(shard: Any, names: list[str]) -> None:
    async with shard._lock:  # As the shard's own subscribe does.
        new = [name for name in dict.fromkeys(names) if name not in shard._subscribed_to]
        if not new:
            return
        shard._ensure_redis()
        shard._ensure_receiver()
        await shard._pubsub.subscribe(*new)
        shard._subscribed_to.update(new)


async def new_group_channel(layer: Any) -> str:
    """A channel for this process's consumer that only ever receives through its groups.

    channels-redis' pub/sub ``new_channel`` subscribes to the new channel in
    Redis (a write and a round trip per connect, and a subscription per
    socket) so that ``layer.send(channel, ...)`` can reach it. Nothing in this
    service sends to one connection's channel; its consumers hear only their
    user's group. Here the pub/sub layer gets the channel's queue and no
    subscription; other layers get their own ``new_channel``.
    """
    if not isinstance(layer, RedisPubSubChannelLayer):
        name: str = await layer.new_channel()
        return name
    loop_layer = layer._get_layer()
    name = f"{loop_layer.prefix}specific.{uuid.uuid4().hex}"
    loop_layer.channels[name] = asyncio.Queue()
    return name


async def group_channel_receive(layer: Any, channel: str) -> dict[str, Any]:
    """Receive the next message of a channel made by ``new_group_channel``.

    channels-redis' pub/sub ``receive``, when cancelled (every disconnect),
    unsubscribes the channel under its shard's lock, although this channel
    was never subscribed: a burst of disconnects then queues on that lock
    behind the joins and publishes, and each one cancelled again while
    waiting logs a traceback. Here the channel's queue is read directly and
    dropped on cancellation, with no lock and no Redis command. Other layers,
    and a channel this process did not make, get the layer's ``receive``.
    """
    if not isinstance(layer, RedisPubSubChannelLayer):
        message: dict[str, Any] = await layer.receive(channel)
        return message
    loop_layer = layer._get_layer()
    queue = loop_layer.channels.get(channel)
    if queue is None:
        message = await layer.receive(channel)
        return message
    try:
        data = await queue.get()
    except (asyncio.CancelledError, GeneratorExit):
        loop_layer.channels.pop(channel, None)
        raise
    message = layer.deserialize(data)
    return message


@dataclass(frozen=True, slots=True)
class _ReceiveFailed:
    error: BaseException


async def dispatch_merged(
    layer: Any,
    channel: str,
    *,
    receive: Callable[[], Awaitable[dict[str, Any]]],
    dispatch: Callable[[dict[str, Any]], Awaitable[None]],
    undecodable: Callable[[Exception], None],
) -> bool:
    """Dispatch a connection's ASGI messages and its channel's layer messages in arrival order, one at a time.

    For a channel ``new_group_channel`` made on the pub/sub layer; returns
    False at once for any other. channels' ``await_many_dispatch`` makes a
    task for every message and waits on both inputs again after each: a
    task, and a wake-up of each, per live event per connection. Here the
    layer puts each raw message into the channel's queue as it arrives, as it
    always did, and a task that lives as long as the connection moves ASGI
    messages into the same queue: one wake-up per message. A layer message
    that does not decode is handed to ``undecodable`` and skipped. On the way
    out the channel leaves the layer, and the task is cancelled and awaited.
    """
    if not isinstance(layer, RedisPubSubChannelLayer):
        return False
    loop_layer = layer._get_layer()
    inbox = loop_layer.channels.get(channel)
    if not isinstance(inbox, asyncio.Queue):
        return False

    async def pump() -> None:
        try:
            while True:
                inbox.put_nowait(await receive())
        except Exception as exc:  # The server's receive failed: the connection ends with it.
            inbox.put_nowait(_ReceiveFailed(exc))

    pumping = asyncio.ensure_future(pump())
    try:
        while True:
            item = await inbox.get()
            if isinstance(item, bytes):
                try:
                    message = layer.deserialize(item)
                except Exception as exc:  # Not one of ours (another deployment on this Redis?).
                    undecodable(exc)
                    continue
            elif isinstance(item, _ReceiveFailed):
                raise item.error
            else:
                message = item
            await dispatch(message)
    finally:
        loop_layer.channels.pop(channel, None)
        pumping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pumping


async def group_discard_many(layer: Any, pairs: Sequence[tuple[str, str]]) -> None:
    """Remove each (group, channel) pair; on the pub/sub layer, one ``UNSUBSCRIBE`` per shard for the emptied groups.

    What ``group_discard`` does for each pair, with the groups that lost
    their last member here unsubscribed in one command per shard: a server
    closing 10,000 sockets (a deploy) otherwise sends 10,000 commands one at
    a time under the shard's lock. A group someone joined again while this
    waited for the lock stays subscribed.
    """
    if not isinstance(layer, RedisPubSubChannelLayer):
        await asyncio.gather(*(layer.group_discard(group, channel) for group, channel in pairs))
        return
    loop_layer = layer._get_layer()
    by_shard: dict[Any, list[str]] = {}
    for group, channel in pairs:
        group_channel = loop_layer._get_group_channel_name(group)
        members = loop_layer.groups.get(group_channel)
        if not members or channel not in members:
            continue
        members.discard(channel)
        if not members:
            del loop_layer.groups[group_channel]
            by_shard.setdefault(loop_layer._get_shard(group_channel), []).append(group_channel)
    await asyncio.gather(*(_unsubscribe_many(loop_layer, shard, names) for shard, names in by_shard.items()))


async def _unsubscribe_many(loop_layer: Any, shard: Any, names: list[str]) -> None:
    async with shard._lock:  # As the shard's own unsubscribe does.
        gone = [name for name in dict.fromkeys(names) if name in shard._subscribed_to and name not in loop_layer.groups]
        if not gone:
            return
        shard._ensure_redis()
        shard._ensure_receiver()
        await shard._pubsub.unsubscribe(*gone)
        shard._subscribed_to.difference_update(gone)
