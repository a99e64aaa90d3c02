"""agents.execution: one run's start, its events in order, its single end, its cancel request."""

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import OperationalError
from django.utils import timezone

from agents import execution as execution_module
from agents.exceptions import EventsUnavailable, LifecycleError
from agents.execution import UNAVAILABLE_MESSAGE, Outcome, RunExecution
from agents.models import AgentRun, RunStatus
from agents.registry import agent_get
from agents.runner import run_execute
from agents.services import run_create
from notifications.models import Event
from notifications.services import aevents_record_if
from tests.agents.conftest import run_events

aevents = sync_to_async(run_events)
WAIT_SECONDS = 5


async def queued_run(user: Any) -> AgentRun:
    return await sync_to_async(run_create)(user_id=user.pk, agent="demo", input={})


async def test_start_claims_a_queued_run_once(alice: Any) -> None:
    run = await queued_run(alice)
    execution = RunExecution(run)
    assert not execution.running
    assert await execution.start() is True
    assert execution.running
    assert (await AgentRun.objects.aget(pk=run.id)).status == RunStatus.RUNNING
    # Another execution of the same run (a second worker, say) finds it no longer queued.
    assert await RunExecution(run).start() is False
    assert [name for name, _ in await aevents(run.id)] == ["agent_started"]


async def test_finish_closes_open_calls_writes_one_end_and_the_context_can_emit_nothing_after(alice: Any) -> None:
    run = await queued_run(alice)
    observed: list[Event] = []
    execution = RunExecution(run, observer=observed.append)
    await execution.start()
    call_id = await execution.context.tool_started("word_count", {"text": "a b"})
    await execution.finish(Outcome(RunStatus.CANCELLED, kind="cancelled", message="Stopped."))
    await execution.finish(Outcome(RunStatus.COMPLETED, result=1))  # A no-op: the run has ended.
    with pytest.raises(LifecycleError, match="after the run's terminal event"):
        await execution.context.think("too late")
    events = await aevents(run.id)
    assert [name for name, _ in events] == ["agent_started", "tool_executing", "tool_completed", "agent_error"]
    assert events[2][1] == {
        "call_id": call_id,
        "tool": "word_count",
        "ok": False,
        "error": "Stopped.",
        "duration_ms": None,
    }
    assert events[3][1]["kind"] == "cancelled"
    assert [record.event for record in observed] == [name for name, _ in events]
    stored = await AgentRun.objects.aget(pk=run.id)
    assert stored.status == RunStatus.CANCELLED and stored.error == {"kind": "cancelled", "message": "Stopped."}


async def test_nothing_is_emitted_before_the_start(alice: Any) -> None:
    execution = RunExecution(await queued_run(alice))
    with pytest.raises(LifecycleError, match="before agent_started"):
        await execution.context.think("too early")
    assert await Event.objects.acount() == 0


async def test_cancel_records_the_request_and_its_reason(alice: Any) -> None:
    execution = RunExecution(await queued_run(alice))
    assert not execution.cancel_requested
    execution.cancel("The user stopped it.")
    assert execution.cancel_requested and execution.cancel_reason == "The user stopped it."
    assert not execution.running  # Only start() makes it running: the supervisor then cancels its task too.


async def test_a_start_the_database_refuses_makes_the_run_unavailable(
    alice: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = await queued_run(alice)
    calls = 0

    async def down_once(**kwargs: Any) -> list[Event]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OperationalError("the database is down")
        return await aevents_record_if(**kwargs)

    monkeypatch.setattr(execution_module, "aevents_record_if", down_once)
    execution = RunExecution(run)
    assert await execution.start() is True  # Its end is this execution's to write.
    assert execution.unavailable
    with pytest.raises(EventsUnavailable):
        await execution.context.think("lost")
    await execution.finish(Outcome(RunStatus.FAILED, kind="unavailable", message=UNAVAILABLE_MESSAGE))
    assert [name for name, _ in await aevents(run.id)] == ["agent_error"]
    assert (await AgentRun.objects.aget(pk=run.id)).status == RunStatus.FAILED


async def test_end_abandon_stops_retrying_the_end_and_leaves_the_run_to_the_reaper(
    alice: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = await queued_run(alice)
    execution = RunExecution(run)
    await execution.start()
    attempts = 0
    tried = asyncio.Event()

    async def down(**kwargs: Any) -> list[Event]:
        nonlocal attempts
        attempts += 1
        tried.set()
        raise OperationalError("the database is down")

    monkeypatch.setattr(execution_module, "aevents_record_if", down)
    finishing = asyncio.create_task(execution.finish(Outcome(RunStatus.COMPLETED, result=1)))
    try:
        await asyncio.wait_for(tried.wait(), timeout=WAIT_SECONDS)
        execution.end_abandon()
        await asyncio.wait_for(asyncio.shield(finishing), timeout=WAIT_SECONDS)
    finally:
        finishing.cancel()
        await asyncio.wait([finishing])
    assert attempts >= 2  # The retry after the abandon finds the database still down, and gives up.
    with pytest.raises(LifecycleError):
        await execution.context.think("after the end")
    assert [name for name, _ in await aevents(run.id)] == ["agent_started"]
    assert (await AgentRun.objects.aget(pk=run.id)).status == RunStatus.RUNNING


# A restart: the run goes on after its worker died (agents.restart).


async def run_left_by_a_dead_worker(user: Any) -> tuple[AgentRun, str]:
    """A run that an earlier attempt started, thought twice in, and left with a tool call open."""
    run = await queued_run(user)
    earlier = RunExecution(run)
    await earlier.start()
    await earlier.context.think("one")
    await earlier.context.think("two")
    call_id = await earlier.context.tool_started("word_count", {"text": "a b"})
    return await AgentRun.objects.aget(pk=run.id), call_id  # (the attempt is abandoned here, as by a SIGKILL)


async def test_a_restart_closes_the_open_calls_says_so_and_counts_the_steps_on(alice: Any) -> None:
    run, call_id = await run_left_by_a_dead_worker(alice)
    execution = RunExecution(run, restart=1)
    assert await execution.start() is True
    await execution.context.think("three")
    await execution.finish(Outcome(RunStatus.COMPLETED, result="done"))
    events = await aevents(run.id)
    assert [name for name, _ in events] == [
        "agent_started",
        "agent_thinking",
        "agent_thinking",
        "tool_executing",
        "tool_completed",  # The call the dead attempt left open, failed.
        "agent_thinking",  # Starting again.
        "agent_thinking",
        "agent_completed",
    ]
    assert events[4][1] == {
        "call_id": call_id,
        "tool": "word_count",
        "ok": False,
        "error": "The worker running this call stopped; the run starts again.",
        "duration_ms": None,
    }
    assert events[5][1] == {
        "thought": "The worker running this run stopped; it starts again from the beginning (restart 1 of at most 3).",
        "step": 3,
    }
    assert events[6][1] == {"thought": "three", "step": 4}
    assert (await AgentRun.objects.aget(pk=run.id)).status == RunStatus.COMPLETED


async def test_a_restart_of_a_run_that_has_ended_meanwhile_writes_nothing(alice: Any) -> None:
    run, _ = await run_left_by_a_dead_worker(alice)
    await RunExecution(run).finish(Outcome(RunStatus.FAILED, kind="lost", message="Lost."))
    before = await aevents(run.id)
    assert await RunExecution(run, restart=1).start() is False
    assert await aevents(run.id) == before


async def test_a_restarted_runs_timeout_counts_from_its_first_start(alice: Any) -> None:
    run, _ = await run_left_by_a_dead_worker(alice)
    await AgentRun.objects.filter(pk=run.id).aupdate(started_at=timezone.now() - timedelta(seconds=60))
    run = await AgentRun.objects.aget(pk=run.id)
    status = await asyncio.wait_for(
        run_execute(agent_get("test_hangs"), RunExecution(run, restart=1), timeout_seconds=30), timeout=WAIT_SECONDS
    )
    assert status == RunStatus.TIMED_OUT
    names = [name for name, _ in await aevents(run.id)]
    assert names.count("agent_started") == 1 and names[-1] == "agent_error"
