"""REST: the agent catalogue and runs, scoped to their owner."""

import asyncio
import uuid
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from agents.models import AgentRun, RunStatus
from agents.supervisor import supervisor
from tests.agents.conftest import assert_lifecycle, run_events
from tests.wsclient import REFUSED_TOKENS, access_token


class client_for:
    """An async test client that sends ``token`` (by default the user's access token) with every request."""

    def __init__(self, user: Any, *, token: str | None = None) -> None:
        self.client = AsyncClient()
        self.headers = {"Authorization": f"Bearer {token or access_token(user)}"}

    async def get(self, path: str) -> Any:
        return await self.client.get(path, headers=self.headers)

    async def post(self, path: str, data: Any = None, content_type: str = "application/json") -> Any:
        return await self.client.post(path, data, content_type=content_type, headers=self.headers)


async def test_agents_are_listed_with_descriptions(alice: Any) -> None:
    response = await client_for(alice).get("/api/agents/")
    assert response.status_code == 200
    agents = {agent["name"]: agent for agent in response.json()}
    assert agents["calculator"]["description"].startswith("Evaluates an arithmetic expression")
    assert set(agents["demo"]["input"]) == {"steps", "delay", "fail"}
    assert agents["calculator"]["example"] == {"expression": "2*(3+4)"}


async def test_start_returns_201_and_the_run_completes(alice: Any) -> None:
    response = await client_for(alice).post(
        "/api/runs/", {"agent": "calculator", "input": {"expression": "2*(3+4)"}}, content_type="application/json"
    )
    assert response.status_code == 201
    body = response.json()
    assert body["agent"] == "calculator" and body["status"] == "queued" and body["input"] == {"expression": "2*(3+4)"}
    assert body["timeout_seconds"] == 60.0 and b'"timeout_seconds":60.0,' in response.content
    await asyncio.wait_for(supervisor.join(uuid.UUID(body["id"])), timeout=10)
    detail = (await client_for(alice).get(f"/api/runs/{body['id']}/")).json()
    assert detail["status"] == "completed" and detail["result"] == 14 and detail["error"] is None
    assert detail["duration_ms"] >= 0 and detail["finished_at"].endswith("Z")
    assert_lifecycle(await sync_to_async(run_events)(body["id"]))


async def test_run_input_comes_back_with_its_defaults_and_timeout_seconds_as_a_float(alice: Any) -> None:
    response = await client_for(alice).post("/api/runs/", {"agent": "demo", "timeout": 5})
    assert response.status_code == 201
    # The raw JSON, as a client in another language reads it.
    assert b'"input":{"steps":1,"delay":0.05,"fail":false}' in response.content
    assert b'"timeout_seconds":5.0,' in response.content
    run_id = response.json()["id"]
    await asyncio.wait_for(supervisor.join(uuid.UUID(run_id)), timeout=10)
    detail = await client_for(alice).get(f"/api/runs/{run_id}/")
    assert b'"timeout_seconds":5.0,' in detail.content
    assert detail.json()["input"] == {"steps": 1, "delay": 0.05, "fail": False}
    events = await sync_to_async(run_events)(run_id)
    assert events[0] == ("agent_started", {"input": {"steps": 1, "delay": 0.05, "fail": False}})


async def test_a_bad_start_body_details_its_fields(alice: Any) -> None:
    missing = await client_for(alice).post("/api/runs/", {"input": {}})
    assert missing.status_code == 400
    assert missing.json() == {"code": "invalid_message", "detail": {"agent": ["This field is required."]}}


LIMIT_RANGE = ["Ensure this value is greater than or equal to 1.", "Ensure this value is less than or equal to 200."]
NOT_AN_INTEGER = ["A valid integer is required."]
NOT_A_DATETIME = [
    "Datetime has wrong format. Use one of these formats instead: YYYY-MM-DDThh:mm[:ss[.uuuuuu]][+HH:MM|-HH:MM|Z]."
]


@pytest.mark.parametrize(
    ("query", "errors"),
    [
        ("limit=0", {"limit": LIMIT_RANGE[:1]}),
        ("limit=201", {"limit": LIMIT_RANGE[1:]}),
        ("limit=abc", {"limit": NOT_AN_INTEGER}),
        ("limit=1.5", {"limit": NOT_AN_INTEGER}),
        ("before=yesterday", {"before": NOT_A_DATETIME}),
        # An unencoded "+" is a space in a query string: the offset must be sent as %2B (or use Z).
        ("before=2026-11-21T19:55:38+00:00", {"before": NOT_A_DATETIME}),
        ("limit=0&before=x", {"limit": LIMIT_RANGE[:1], "before": NOT_A_DATETIME}),
    ],
)
async def test_bad_run_list_queries_are_400_with_field_errors(alice: Any, query: str, errors: Any) -> None:
    response = await client_for(alice).get(f"/api/runs/?{query}")
    assert (response.status_code, response.json()) == (400, errors)


async def test_run_list_pages_back_with_before(alice: Any) -> None:
    ids = []
    for _ in range(3):
        response = await client_for(alice).post("/api/runs/", {"agent": "test_hangs", "timeout": 30})
        ids.append(response.json()["id"])
    newest_first = (await client_for(alice).get("/api/runs/?limit=2")).json()["results"]
    assert [run["id"] for run in newest_first] == ids[:0:-1]
    before = newest_first[-1]["created_at"]
    older = {
        form: (await client_for(alice).get(f"/api/runs/?before={form}")).json()["results"]
        for form in (before, before.replace("Z", "%2B00:00"))
    }
    assert [[run["id"] for run in runs] for runs in older.values()] == [ids[:1], ids[:1]]
    # Empty values count as absent: the default limit, no before.
    everything = (await client_for(alice).get("/api/runs/?limit=&before=")).json()["results"]
    assert [run["id"] for run in everything] == ids[::-1]


async def test_bad_starts_are_400_429_with_a_code(alice: Any, settings: Any) -> None:
    client = client_for(alice)
    unknown = await client.post("/api/runs/", {"agent": "nope"}, content_type="application/json")
    assert unknown.status_code == 400 and unknown.json()["code"] == "unknown_agent"
    not_object = await client.post("/api/runs/", {"agent": "demo", "input": [1]}, content_type="application/json")
    assert not_object.status_code == 400 and not_object.json()["code"] == "invalid_message"
    missing = await client.post("/api/runs/", {}, content_type="application/json")
    assert missing.status_code == 400 and missing.json()["code"] == "invalid_message"
    too_big = await client.post(
        "/api/runs/", {"agent": "demo", "input": {"x": "y" * 20_000}}, content_type="application/json"
    )
    assert too_big.status_code == 400 and "the limit is 16384" in too_big.json()["detail"]
    settings.AGENT_MAX_ACTIVE_RUNS_PER_USER = 1
    body = {"agent": "test_hangs", "timeout": 30}
    assert (await client.post("/api/runs/", body, content_type="application/json")).status_code == 201
    limited = await client.post("/api/runs/", body, content_type="application/json")
    assert limited.status_code == 429 and limited.json()["code"] == "too_many_runs"
    assert await AgentRun.objects.acount() == 1


async def test_runs_are_scoped_to_their_owner(alice: Any, bob: Any) -> None:
    started = await client_for(alice).post(
        "/api/runs/", {"agent": "test_hangs", "timeout": 30}, content_type="application/json"
    )
    run_id = started.json()["id"]
    mine = (await client_for(alice).get("/api/runs/")).json()["results"]
    assert [run["id"] for run in mine] == [run_id]
    assert (await client_for(bob).get("/api/runs/")).json()["results"] == []
    assert (await client_for(bob).get(f"/api/runs/{run_id}/")).status_code == 404
    assert (await client_for(bob).post(f"/api/runs/{run_id}/cancel/")).status_code == 404
    assert (await AgentRun.objects.aget(pk=run_id)).cancel_requested_at is None


async def test_cancel_is_202_then_409_once_ended(alice: Any) -> None:
    client = client_for(alice)
    run_id = (
        await client.post("/api/runs/", {"agent": "test_hangs", "timeout": 30}, content_type="application/json")
    ).json()["id"]
    cancelled = await client.post(f"/api/runs/{run_id}/cancel/")
    assert cancelled.status_code == 202
    await asyncio.wait_for(supervisor.join(uuid.UUID(run_id)), timeout=10)
    run = await AgentRun.objects.aget(pk=run_id)
    assert run.status == RunStatus.CANCELLED
    again = await client.post(f"/api/runs/{run_id}/cancel/")
    assert again.status_code == 409 and again.json()["code"] == "run_finished"


async def test_runs_need_a_token(transactional_db: None) -> None:
    assert (await AsyncClient().get("/api/runs/")).status_code == 401
    assert (await AsyncClient().get("/api/agents/")).status_code == 401


async def test_run_input_just_inside_the_depth_limit_reaches_the_agent(alice: Any, settings: Any) -> None:
    # The body is one level around the input, the input one around its field.
    inner = "[" * (settings.JSON_MAX_DEPTH - 2) + "]" * (settings.JSON_MAX_DEPTH - 2)
    body = '{"agent": "calculator", "input": {"expression": ' + inner + "}}"
    response = await client_for(alice).post("/api/runs/", body)
    # Parsed and handed to the agent's validator, which wants a string.
    assert response.status_code == 400
    assert response.json() == {
        "code": "invalid_message",
        "detail": "Invalid input for calculator: expression must be a non-empty string.",
    }
    deeper = await client_for(alice).post("/api/runs/", body.replace("[", "[[", 1).replace("]", "]]", 1))
    assert deeper.status_code == 400 and deeper.json()["code"] == "invalid_json"


async def test_run_input_with_a_lone_surrogate_is_invalid_json(alice: Any) -> None:
    body = '{"agent": "calculator", "input": {"expression": "1 + \\ud800"}}'
    response = await client_for(alice).post("/api/runs/", body)
    assert response.status_code == 400 and response.json()["code"] == "invalid_json"
    assert await AgentRun.objects.acount() == 0


@pytest.mark.parametrize("make_token", REFUSED_TOKENS.values(), ids=REFUSED_TOKENS.keys())
async def test_starting_a_run_needs_a_live_access_token(alice: Any, make_token: Any) -> None:
    body = {"agent": "calculator", "input": {"expression": "1+1"}}
    token = await sync_to_async(make_token)(alice)
    refused = await client_for(alice, token=token).post("/api/runs/", body)
    assert refused.status_code == 401 and refused.json()["code"] == "token_not_valid"
    assert await AgentRun.objects.acount() == 0
    started = await client_for(alice).post("/api/runs/", body)
    assert started.status_code == 201
    await asyncio.wait_for(supervisor.join(uuid.UUID(started.json()["id"])), timeout=10)
