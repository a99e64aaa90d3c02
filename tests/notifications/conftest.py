"""Fixtures of the notifications tests: a channel layer of each kind."""

from collections.abc import Callable
from typing import Any

import pytest

from notifications.services import user_group_name
from tests.conftest import ChannelLayers
from tests.servers import DaphneServer


@pytest.fixture(params=["memory", "redis"])
def layer(request: pytest.FixtureRequest, channel_layers: ChannelLayers) -> Any:
    """Each test runs against both layers: the behaviour must not differ."""
    if request.param == "memory":
        return channel_layers("memory")
    return channel_layers("pubsub", redis_url=request.getfixturevalue("redis_url"))


async def member_of(layer: Any, user_id: int) -> str:
    channel: str = await layer.new_channel()
    await layer.group_add(user_group_name(user_id), channel)
    return channel


@pytest.fixture(scope="module")
def metrics_daphne(daphne_factory: Callable[..., DaphneServer], redis_url: str) -> DaphneServer:
    """A server of the module's own, so that its metrics move only with the module's tests (debug on)."""
    return daphne_factory(redis_url=redis_url)
