"""Runs over a real daphne: start, watch, cancel, over the WebSocket and the API."""

import asyncio
import json
import signal
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from agents.models import AgentRun, RunStatus
from tests.agents.conftest import assert_lifecycle, run_events
from tests.servers import DaphneServer
from tests.wsclient import Client, access_token, ws_connect

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("server_log_clean", "runs_stopped")]

TERMINAL = {"agent_completed", "agent_error"}


async def start(client: Client, agent: str, run_input: dict[str, Any]) -> str:
    """Start a run; events of runs started earlier on this socket may come first, and are skipped."""
    await client.send({"type": "run.start", "agent": agent, "input": run_input})
    while (frame := await client.recv())["type"] == "event":
        pass
    assert frame["type"] == "run.accepted", frame
    return str(frame["run_id"])


async def watch(client: Client, run_id: str, *, timeout: float = 20) -> list[dict[str, Any]]:
    """Collect the run's events from the socket until its terminal event."""
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while not events or events[-1]["event"] not in TERMINAL:
            frame = await client.recv(timeout=timeout)
            assert frame["type"] == "event", frame
            assert frame["run_id"] == run_id, frame
            events.append(frame)
    return events


def as_pairs(events: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(event["event"], event["data"]) for event in events]


async def test_start_demo_and_watch_every_event_in_order(daphne: DaphneServer, alice: Any) -> None:
    async with ws_connect(daphne.ws_url, access_token(alice)) as client:
        run_id = await start(client, "demo", {"steps": 2, "delay": 0})
        events = await watch(client, run_id)
    assert_lifecycle(as_pairs(events))
    assert [event["seq"] for event in events] == list(range(1, len(events) + 1))
    assert [event["event"] for event in events].count("tool_completed") == 2
    assert events[-1]["data"]["result"] == {"steps": 2, "words": 21}
    assert as_pairs(events) == await sync_to_async(run_events)(run_id)


async def test_calculator_over_the_socket(daphne: DaphneServer, alice: Any) -> None:
    async with ws_connect(daphne.ws_url, access_token(alice)) as client:
        run_id = await start(client, "calculator", {"expression": "2*(3+4)"})
        events = await watch(client, run_id)
    assert_lifecycle(as_pairs(events))
    assert [event["event"] for event in events] == [
        "agent_started",
        "agent_thinking",
        "tool_executing",
        "tool_completed",
        "agent_thinking",
        "agent_completed",
    ]
    assert events[-1]["data"]["result"] == 14
    assert as_pairs(events) == await sync_to_async(run_events)(run_id)


async def test_cancel_over_the_socket(daphne: DaphneServer, alice: Any) -> None:
    async with ws_connect(daphne.ws_url, access_token(alice)) as client:
        run_id = await start(client, "demo", {"steps": 50, "delay": 0.2})
        first = await client.events(2)
        assert [event["event"] for event in first] == ["agent_started", "agent_thinking"]
        await client.send({"type": "run.cancel", "run_id": run_id})
        rest = await watch(client, run_id)
    assert_lifecycle(as_pairs(first + rest))
    assert rest[-1]["data"]["kind"] == "cancelled"
    assert rest[-1]["data"]["message"] == "The run was cancelled by the user."
    assert (await AgentRun.objects.aget(pk=run_id)).status == RunStatus.CANCELLED


async def test_run_messages_with_bad_input_get_errors(daphne: DaphneServer, alice: Any, bob: Any) -> None:
    async with ws_connect(daphne.ws_url, access_token(bob)) as other:
        other_run = await start(other, "demo", {"steps": 50, "delay": 0.2})
        async with ws_connect(daphne.ws_url, access_token(alice)) as client:
            cases: list[tuple[dict[str, Any], str]] = [
                ({"agent": "nope"}, "unknown_agent"),
                ({"agent": "demo", "input": [1]}, "invalid_message"),
                ({"agent": "demo", "input": {"steps": "many"}}, "invalid_message"),
                ({"agent": "demo", "timeout": 10_000}, "invalid_message"),
                ({"input": {}}, "invalid_message"),
            ]
            for fields, code in cases:
                await client.send({"type": "run.start", **fields}, checked=False)
                error = await client.expect("error")
                assert error["code"] == code, (fields, error)
            await client.send({"type": "run.cancel", "run_id": other_run})
            assert (await client.expect("error"))["code"] == "not_found"
            await client.send({"type": "run.cancel", "run_id": "not-a-uuid"}, checked=False)
            assert (await client.expect("error"))["code"] == "invalid_message"
            assert await client.settle() == []
        await other.send({"type": "run.cancel", "run_id": other_run})
        assert (await watch(other, other_run))[-1]["data"]["kind"] == "cancelled"
    assert await AgentRun.objects.filter(user=alice).acount() == 0


async def test_too_many_runs(daphne: DaphneServer, alice: Any) -> None:
    async with ws_connect(daphne.ws_url, access_token(alice)) as client:
        runs = [await start(client, "demo", {"steps": 50, "delay": 0.2}) for _ in range(5)]
        await client.send({"type": "run.start", "agent": "demo"})
        while (frame := await client.recv())["type"] == "event":
            pass
        assert frame["type"] == "error" and frame["code"] == "too_many_runs"
        for run_id in runs:
            await client.send({"type": "run.cancel", "run_id": run_id})
        ended: set[str] = set()
        async with asyncio.timeout(20):
            while len(ended) < 5:
                frame = await client.recv()
                if frame["type"] == "event" and frame["event"] == "agent_error":
                    ended.add(frame["run_id"])
    assert ended == set(runs)


async def test_run_started_through_the_api_streams_to_the_socket(daphne: DaphneServer, alice: Any) -> None:
    token = access_token(alice)
    async with ws_connect(daphne.ws_url, token) as client:
        body = await asyncio.to_thread(
            _post, f"{daphne.http_url}/api/runs/", token, {"agent": "calculator", "input": {"expression": "6*7"}}
        )
        events = await watch(client, body["id"])
    assert events[-1]["data"]["result"] == 42


def _post(url: str, token: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 201
        return json.loads(response.read())


async def test_twenty_users_running_at_once_each_see_only_their_own(daphne: DaphneServer, make_user: Any) -> None:
    users = [await sync_to_async(make_user)() for _ in range(20)]
    contexts = [ws_connect(daphne.ws_url, access_token(user)) for user in users]
    clients = await asyncio.gather(*(context.__aenter__() for context in contexts))
    try:
        run_ids = await asyncio.gather(*(start(client, "demo", {"steps": 2, "delay": 0.01}) for client in clients))
        watched = await asyncio.gather(
            *(watch(client, run_id, timeout=30) for client, run_id in zip(clients, run_ids, strict=True))
        )
        for run_id, events in zip(run_ids, watched, strict=True):
            assert_lifecycle(as_pairs(events))
            assert {event["run_id"] for event in events} == {run_id}
            assert [event["seq"] for event in events] == list(range(1, len(events) + 1))
        leftovers = await asyncio.gather(*(client.settle() for client in clients))
        assert leftovers == [[]] * 20
    finally:
        await asyncio.gather(*(context.__aexit__(None, None, None) for context in contexts))


async def test_server_shutdown_cancels_runs_and_records_it(
    daphne_factory: Callable[..., DaphneServer], redis_url: str, alice: Any
) -> None:
    server = daphne_factory(redis_url=redis_url)
    async with ws_connect(server.ws_url, access_token(alice)) as client:
        run_ids = [await start(client, "demo", {"steps": 50, "delay": 0.2}) for _ in range(2)]
        await client.events(2)
        server.signal(signal.SIGTERM)
        assert await asyncio.wait_for(asyncio.to_thread(server.wait), timeout=10) == 0
    for run_id in run_ids:
        events = await sync_to_async(run_events)(uuid.UUID(run_id))
        assert_lifecycle(events)
        assert events[-1][1]["kind"] == "cancelled"
        assert events[-1][1]["message"] == "The run was cancelled because the server is shutting down."
        assert (await AgentRun.objects.aget(pk=run_id)).status == RunStatus.CANCELLED
    server.assert_log_clean()
