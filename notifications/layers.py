"""Channel layer configured so that it survives idle periods and connect bursts."""

from typing import Any

from channels_redis.core import RedisChannelLayer
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
