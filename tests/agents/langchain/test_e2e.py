"""The built-in LangGraph agent from the API, the AG-UI endpoint (the official client) and run_agent."""

import asyncio
import json
from typing import Any

import pytest

from agents.models import AgentRun, RunStatus
from notifications.models import Event
from tests.agents.agui.conftest import agui_validate, sse_request
from tests.agents.agui.test_client import official_client
from tests.agents.conftest import assert_lifecycle, run_events
from tests.agents.test_run_agent_command import run as run_agent
from tests.servers import DaphneServer, http_request
from tests.wsclient import access_token

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("server_log_clean", "runs_stopped")]

LIFECYCLE = [
    "agent_started",
    *["agent_thinking", "agent_thinking", "tool_executing", "tool_completed", "agent_thinking"],
    "agent_completed",
]


async def test_it_runs_from_the_rest_api_and_its_stream_ends_after_one_terminal_event(
    daphne: DaphneServer, alice: Any
) -> None:
    token = access_token(alice)
    body = {"agent": "langgraph_words", "input": {"text": "one two three four"}}
    started = await asyncio.to_thread(http_request, f"{daphne.http_url}/api/runs/", body=body, token=token)
    assert started.status == 201, started.body
    run_id = started.json()["id"]
    # The run's AG-UI stream, from its start: it ends with the run.
    stream = await asyncio.to_thread(
        sse_request, f"{daphne.http_url}/api/ag-ui/langgraph_words/runs/{run_id}/", token=token
    )
    assert (stream.status, stream.ended, stream.events[-1].data["type"]) == (200, True, "RUN_FINISHED")
    assert stream.events[-1].data["result"] == "The text has 4 words."
    events = await asyncio.to_thread(run_events, run_id)
    assert [name for name, _ in events] == LIFECYCLE
    assert_lifecycle(events)
    assert (await AgentRun.objects.aget(pk=run_id)).status == RunStatus.COMPLETED


async def test_the_official_agui_client_accepts_a_langgraph_run(daphne: DaphneServer, alice: Any) -> None:
    url = f"{daphne.http_url}/api/ag-ui/langgraph_words/"
    code, report = await asyncio.to_thread(official_client, url, access_token(alice), {"input": {"text": "a b"}})
    assert (code, report["error"], report["warnings"], report["result"]) == (0, None, [], "The text has 2 words.")
    types = [event["type"] for event in report["events"]]
    assert types.count("TOOL_CALL_RESULT") == 1 and types.count("REASONING_MESSAGE_CONTENT") == 3
    for event in report["events"]:
        agui_validate(event)


def test_it_runs_from_run_agent(alice: Any) -> None:
    result = run_agent("langgraph_words", "--user", "alice", "--input", json.dumps({"text": "x y z"}))
    assert result.returncode == 0, result.stderr
    assert [line.split()[1] for line in result.stdout.splitlines()] == LIFECYCLE
    assert json.loads(result.stdout.splitlines()[-1].split(None, 2)[2])["result"] == "The text has 3 words."
    assert Event.objects.filter(user=alice).count() == len(LIFECYCLE)
