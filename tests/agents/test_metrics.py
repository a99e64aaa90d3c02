"""Run metrics: started, ended by outcome, and duration; in this process and on a real server's /metrics."""

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from agents.models import AgentRun, RunStatus
from agents.services import arun_start, run_create, runs_reap_lost
from agents.supervisor import supervisor
from tests.scrape import local, scrape, value
from tests.servers import DaphneServer, http_request
from tests.wsclient import access_token, ws_connect


def run_counts(outcome: str) -> tuple[float, float, float]:
    return (
        local("agentstream_runs_started_total"),
        local("agentstream_runs_ended_total", outcome=outcome),
        local("agentstream_run_duration_seconds_count", outcome=outcome),
    )


@pytest.mark.parametrize(("input", "outcome"), [({"steps": 1, "delay": 0}, "completed"), ({"fail": True}, "exception")])
async def test_a_run_counts_its_start_its_end_by_outcome_and_its_duration(
    alice: Any, input: dict[str, Any], outcome: str
) -> None:
    before = run_counts(outcome)
    run = await arun_start(user_id=alice.pk, agent="demo", input=input)
    await asyncio.wait_for(supervisor.join(run.id), timeout=10)
    assert run_counts(outcome) == (before[0] + 1, before[1] + 1, before[2] + 1)


async def test_a_lost_run_counts_as_ended_lost(alice: Any) -> None:
    run = await sync_to_async(run_create)(user_id=alice.pk, agent="demo", input={})
    await AgentRun.objects.filter(pk=run.id).aupdate(status=RunStatus.RUNNING, started_at="2000-01-01T00:00:00Z")
    before = local("agentstream_runs_ended_total", outcome="lost")
    assert await sync_to_async(runs_reap_lost)(grace_seconds=0) == 1
    assert local("agentstream_runs_ended_total", outcome="lost") == before + 1
    assert local("agentstream_run_duration_seconds_sum", outcome="lost") > 25 * 365 * 86400


@pytest.fixture(scope="module")
def runs_daphne(daphne_factory: Callable[..., DaphneServer], redis_url: str) -> DaphneServer:
    """A server of the module's own, so that its run counts move only with this module's runs."""
    return daphne_factory(redis_url=redis_url)


@pytest.mark.e2e
async def test_a_run_started_over_rest_moves_the_servers_run_metrics(runs_daphne: DaphneServer, alice: Any) -> None:
    before = await asyncio.to_thread(scrape, runs_daphne.http_url)
    token = access_token(alice)
    async with ws_connect(runs_daphne.ws_url, token) as client:
        body = {"agent": "calculator", "input": {"expression": "6*7"}}
        answer = await asyncio.to_thread(http_request, f"{runs_daphne.http_url}/api/runs/", body=body, token=token)
        assert answer.status == 201, answer.body
        names: list[str] = []
        while not names or names[-1] != "agent_completed":
            [frame] = await client.events(1)
            names.append(frame["event"])
    # The run's end is counted just after it is written, and its events sent.
    async with asyncio.timeout(5):
        while True:
            after = await asyncio.to_thread(scrape, runs_daphne.http_url)
            if value(after, "agentstream_runs_ended_total", outcome="completed") > value(
                before, "agentstream_runs_ended_total", outcome="completed"
            ):
                break
            await asyncio.sleep(0.02)
    assert value(after, "agentstream_runs_started_total") == value(before, "agentstream_runs_started_total") + 1
    assert (
        value(after, "agentstream_runs_ended_total", outcome="completed")
        == value(before, "agentstream_runs_ended_total", outcome="completed") + 1
    )
    assert (
        value(after, "agentstream_run_duration_seconds_count", outcome="completed")
        == value(before, "agentstream_run_duration_seconds_count", outcome="completed") + 1
    )
    recorded = value(after, "agentstream_events_recorded_total") - value(before, "agentstream_events_recorded_total")
    published = value(after, "agentstream_events_published_total") - value(before, "agentstream_events_published_total")
    assert (recorded, published) == (len(names), len(names))
