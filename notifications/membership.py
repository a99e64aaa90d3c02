"""How often a connection must re-join its user's group, for the channel layer in use.

- channels-redis' pub/sub layer: never. A group is a Redis subscription of
  this process; redis-py subscribes again by itself when it reconnects (a
  Redis restart included).
- A layer whose groups expire (``group_expiry``: channels-redis' core layer,
  the in-memory layer): when half the expiry has passed since the last join,
  and at once when Redis is seen to have lost this process's groups. That is
  checked once per heartbeat tick with a key this process keeps in each
  shard: a restarted or flushed Redis has lost it, and the groups with it.
- Any other layer: every heartbeat, as there is no telling.
"""

import asyncio
import logging
import uuid
from typing import Any

from channels_redis.core import RedisChannelLayer
from channels_redis.pubsub import RedisPubSubChannelLayer

logger = logging.getLogger(__name__)

REDIS_CHECK_TIMEOUT_SECONDS = 2.0


class Membership:
    """When the connections of one event loop must re-join their groups."""

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self.persistent = isinstance(layer, RedisPubSubChannelLayer)
        # (The pub/sub layer proxies unknown attributes to a per-loop object: do not ask it.)
        expiry = None if self.persistent else getattr(layer, "group_expiry", None)
        self.renew_after_seconds: float | None = expiry / 2 if isinstance(expiry, int | float) else None
        # Bumped each time the layer is seen to have lost its groups.
        self.epoch = 0
        prefix = "" if self.persistent else getattr(layer, "prefix", "asgi")
        self._marker = f"{prefix}:membership:{uuid.uuid4().hex}"

    def due(self, *, joined_at: float, joined_epoch: int, now: float) -> bool:
        """Whether a connection that last joined at ``joined_at`` (loop time) in ``joined_epoch`` joins again."""
        if self.persistent:
            return False
        if self.renew_after_seconds is None:
            return True
        return joined_epoch != self.epoch or now - joined_at >= self.renew_after_seconds

    async def check(self) -> None:
        """Look for the loss of this process's groups in Redis (a restart, a flush); bump ``epoch`` if so."""
        if not isinstance(self.layer, RedisChannelLayer):
            return
        expiry = max(int(self.layer.group_expiry), 1)
        try:
            async with asyncio.timeout(REDIS_CHECK_TIMEOUT_SECONDS):
                lost = await self._marker_lost(expiry)
        except Exception as exc:  # Redis down or slow: nothing to learn until it answers.
            logger.debug("Could not check the layer's group membership: %s", exc)
            return
        if lost:
            if self.epoch:
                logger.warning("Redis lost this process's group memberships; every connection joins again")
            self.epoch += 1

    async def _marker_lost(self, expiry: int) -> bool:
        lost = False
        for index in range(self.layer.ring_size):
            redis = self.layer.connection(index)
            # True when the key was missing, i.e. set just now. The first time too: a
            # connection may have joined before it, and Redis may have restarted since.
            if await redis.set(self._marker, 1, ex=expiry, nx=True):
                lost = True
            else:
                await redis.expire(self._marker, expiry)
        return lost
