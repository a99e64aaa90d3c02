"""Channel layers configured to survive idle periods and connect bursts, and a batched publish."""

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from channels_redis.core import RedisChannelLayer
from channels_redis.pubsub import RedisPubSubChannelLayer
from channels_redis.utils import create_pool
from redis import asyncio as aioredis


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


async def pubsub_publish_many(layer: Any, messages: Sequence[tuple[str, Mapping[str, Any]]]) -> bool:
    """Publish (group, message) pairs in order, one pipelined round trip per Redis shard.

    Only for channels-redis' pub/sub layer, whose ``group_send`` is one
    ``PUBLISH`` per message: this sends the same bytes to the same channels,
    so consumers and other servers cannot tell the difference. Returns False,
    sending nothing, for any other layer. It reaches below the layer's public
    API (pinned in requirements.txt, and tested against a real Redis).
    """
    if not isinstance(layer, RedisPubSubChannelLayer):
        return False
    loop_layer = layer._get_layer()
    by_shard: dict[Any, list[tuple[str, bytes]]] = {}
    for group, message in messages:
        channel = loop_layer._get_group_channel_name(group)
        by_shard.setdefault(loop_layer._get_shard(channel), []).append((channel, layer.serialize(message)))
    await asyncio.gather(*(_publish_pipelined(shard, items) for shard, items in by_shard.items()))
    return True


async def _publish_pipelined(shard: Any, items: list[tuple[str, bytes]]) -> None:
    async with shard._lock:  # The shard's own lock, as its publish takes.
        shard._ensure_redis()
        pipeline = shard._redis.pipeline(transaction=False)
        for channel, data in items:
            pipeline.publish(channel, data)
        await pipeline.execute()
