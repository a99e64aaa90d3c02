"""The consumer's metrics on a real daphne, read from its /metrics: connects, disconnects, resumes, deliveries."""

import asyncio
import uuid
from typing import Any

import pytest

from notifications.models import Stream
from notifications.services import aevent_record
from tests.scrape import Samples, scrape, value
from tests.servers import DaphneServer
from tests.wsclient import access_token, ws_connect

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("redis_layer")]

SCRAPE_WAIT_SECONDS = 5.0


async def ascrape(server: DaphneServer) -> Samples:
    return await asyncio.to_thread(scrape, server.http_url)


async def until(server: DaphneServer, name: str, expected: float, **labels: str) -> Samples:
    """Scrape until the sample has the expected value (the server counts a close a moment after the client)."""
    async with asyncio.timeout(SCRAPE_WAIT_SECONDS):
        while value(samples := await ascrape(server), name, **labels) != expected:  # noqa: ASYNC110 (another process)
            await asyncio.sleep(0.02)
    return samples


async def test_a_connect_and_a_disconnect_move_the_gauge_and_count_by_close_code(
    metrics_daphne: DaphneServer, alice: Any
) -> None:
    before = await ascrape(metrics_daphne)
    opened = value(before, "agentstream_ws_connects_total", result="opened")
    closed = value(before, "agentstream_ws_disconnects_total", code="4000")
    async with ws_connect(metrics_daphne.ws_url, access_token(alice)) as client:
        during = await ascrape(metrics_daphne)
        assert value(during, "agentstream_ws_connections") == value(before, "agentstream_ws_connections") + 1
        assert value(during, "agentstream_ws_connects_total", result="opened") == opened + 1
        await client.ws.close(code=4000)
    after = await until(metrics_daphne, "agentstream_ws_disconnects_total", closed + 1, code="4000")
    assert value(after, "agentstream_ws_connections") == value(before, "agentstream_ws_connections")


async def test_a_refused_connect_counts_by_its_close_code_and_opens_nothing(metrics_daphne: DaphneServer) -> None:
    before = await ascrape(metrics_daphne)
    async with ws_connect(metrics_daphne.ws_url, "not-a-token", hello=False) as client:
        assert await client.first_close_code() == 4401
    after = await until(
        metrics_daphne,
        "agentstream_ws_connects_total",
        value(before, "agentstream_ws_connects_total", result="4401") + 1,
        result="4401",
    )
    assert value(after, "agentstream_ws_connects_total", result="opened") == value(
        before, "agentstream_ws_connects_total", result="opened"
    )


async def test_live_events_count_as_delivered_and_resumes_count_without_their_replays(
    metrics_daphne: DaphneServer, alice: Any
) -> None:
    before = await ascrape(metrics_daphne)
    delivered = value(before, "agentstream_event_delivery_seconds_count")
    async with ws_connect(metrics_daphne.ws_url, access_token(alice)) as client:
        run_id = uuid.uuid4()
        for step in range(3):
            await aevent_record(user_id=alice.pk, event="agent_thinking", run_id=run_id, agent="demo", data={"s": step})
        await client.events(3)
        live = await ascrape(metrics_daphne)
        assert value(live, "agentstream_event_delivery_seconds_count") == delivered + 3
        # Every one within a second of its recording: the live path, not a heartbeat.
        assert (
            value(live, "agentstream_event_delivery_seconds_bucket", le="1.0")
            == value(before, "agentstream_event_delivery_seconds_bucket", le="1.0") + 3
        )

        await client.send({"type": "resume", "after": 0})
        await client.events(3)
        assert (await client.expect("resumed"))["truncated"] is False
        await Stream.objects.filter(user_id=alice.pk).aupdate(pruned_seq=1)
        await client.send({"type": "resume", "after": 0})
        await client.events(3)
        assert (await client.expect("resumed"))["truncated"] is True
        await client.send({"type": "resume", "after": 99})
        assert (await client.expect("error"))["code"] == "invalid_message"

        after = await ascrape(metrics_daphne)
    assert value(after, "agentstream_ws_resumes_total") == value(before, "agentstream_ws_resumes_total") + 2
    assert (
        value(after, "agentstream_ws_resumes_truncated_total")
        == value(before, "agentstream_ws_resumes_truncated_total") + 1
    )
    assert (
        value(after, "agentstream_ws_resumes_refused_total")
        == value(before, "agentstream_ws_resumes_refused_total") + 1
    )
    assert value(after, "agentstream_event_delivery_seconds_count") == delivered + 3
