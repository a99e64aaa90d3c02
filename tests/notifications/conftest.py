"""Fixtures of the notifications tests: a channel layer of each kind."""

from typing import Any

import pytest
from channels.layers import get_channel_layer

from config.redis_urls import redis_channel_layers
from notifications.services import user_group_name
from tests.conftest import SESSION_PREFIX


@pytest.fixture(params=["memory", "redis"])
async def layer(request: pytest.FixtureRequest, settings: Any) -> Any:
    """Each test runs against both layers: the behaviour must not differ."""
    if request.param == "memory":
        settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    else:
        redis_url = request.getfixturevalue("redis_url")
        settings.CHANNEL_LAYERS = redis_channel_layers(
            redis_url=redis_url, layer="pubsub", prefix=SESSION_PREFIX, options=settings.REDIS_OPTIONS
        )
    layer = get_channel_layer()
    yield layer
    await layer.flush()


async def member_of(layer: Any, user_id: int) -> str:
    channel: str = await layer.new_channel()
    await layer.group_add(user_group_name(user_id), channel)
    return channel
