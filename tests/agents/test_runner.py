"""agents.runner and agents.supervisor: lifecycle order, exactly one end, timeouts, cancels."""

import asyncio
import threading
import time
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import connection

from agents.exceptions import LifecycleError, TooManyRuns, UnknownAgent
from agents.models import AgentRun, RunStatus
from agents.services import arun_cancel, arun_start, run_create, runs_reap_lost
from agents.supervisor import SupervisorClosed, supervisor
from notifications import services
from notifications.models import Event
from tests.agents.conftest import assert_lifecycle, run_events, saved_contexts
from tests.conftest import LIFECYCLE_OF_TWO_STEPS

aevents = sync_to_async(run_events)


async def finished(run: AgentRun) -> tuple[AgentRun, list[tuple[str, dict[str, Any]]]]:
    await asyncio.wait_for(supervisor.join(run.id), timeout=10)
    return await AgentRun.objects.aget(pk=run.id), await aevents(run.id)


async def test_demo_runs_its_steps_in_lifecycle_order(alice: Any) -> None:
    run = await arun_start(user_id=alice.pk, agent="demo", input={"steps": 2, "delay": 0})
    run, events = await finished(run)
    assert [name for name, _ in events] == LIFECYCLE_OF_TWO_STEPS
    assert_lifecycle(events)
    assert events[0][1] == {"input": {"steps": 2, "delay": 0, "fail": False}}
    assert events[1][1]["step"] == 1 and "Step 1 of 2" in events[1][1]["thought"]
    executing, completed = events[2][1], events[3][1]
    assert executing == {
        "call_id": executing["call_id"],
        "tool": "word_count",
        "args": {"text": executing["args"]["text"]},
    }
    assert completed["call_id"] == executing["call_id"]
    assert completed["ok"] is True and completed["result"] == len(executing["args"]["text"].split())
    assert isinstance(completed["duration_ms"], int)
    assert events[-1][1]["result"] == run.result == {"steps": 2, "words": 21}
    assert run.status == RunStatus.COMPLETED
    assert run.started_at is not None and run.finished_at is not None and run.error is None


async def test_calculator_answers_14(alice: Any) -> None:
    run = await arun_start(user_id=alice.pk, agent="calculator", input={"expression": "2*(3+4)"})
    run, events = await finished(run)
    assert_lifecycle(events)
    assert run.status == RunStatus.COMPLETED and run.result == 14
    assert events[-1] == ("agent_completed", {"result": 14, "duration_ms": events[-1][1]["duration_ms"]})
    tool_calls = [data for name, data in events if name == "tool_executing"]
    assert tool_calls == [{"call_id": tool_calls[0]["call_id"], "tool": "calculate", "args": {"expression": "2*(3+4)"}}]


async def test_calculator_bad_expression_is_one_clear_agent_error(alice: Any) -> None:
    run = await arun_start(user_id=alice.pk, agent="calculator", input={"expression": "2*(3+"})
    run, events = await finished(run)
    assert_lifecycle(events)
    assert events[-2][0] == "tool_completed" and events[-2][1]["ok"] is False
    assert events[-1][0] == "agent_error"
    assert events[-1][1]["kind"] == "exception"
    assert events[-1][1]["message"] == "Tool calculate failed: '2*(3+' is not a valid arithmetic expression."
    assert run.status == RunStatus.FAILED
    assert run.error == {"kind": "exception", "message": events[-1][1]["message"]}


async def test_exception_in_agent_is_one_agent_error_without_internals(alice: Any) -> None:
    run = await arun_start(user_id=alice.pk, agent="test_raises", input={})
    run, events = await finished(run)
    assert_lifecycle(events)
    assert events[-1][1]["kind"] == "exception"
    assert events[-1][1]["message"] == "The agent failed with an internal error (KeyError)."
    assert "internal detail" not in str(events) and "Traceback" not in str(events)


async def test_demo_fail_knob_ends_in_agent_error(alice: Any) -> None:
    run = await arun_start(user_id=alice.pk, agent="demo", input={"fail": True, "delay": 0})
    run, events = await finished(run)
    assert_lifecycle(events)
    assert [name for name, _ in events][:4] == ["agent_started", "agent_thinking", "tool_executing", "tool_completed"]
    assert events[-1][1]["message"] == "Failing on purpose: the input asked for fail=true."
    assert run.status == RunStatus.FAILED


async def test_exception_in_tool_is_reported_on_the_call_and_ends_the_run(alice: Any) -> None:
    run = await arun_start(user_id=alice.pk, agent="test_tool_explodes", input={})
    run, events = await finished(run)
    assert_lifecycle(events)
    completed = events[-2][1]
    assert completed["ok"] is False and "result" not in completed
    assert completed["error"] == "The agent failed with an internal error (RuntimeError)."
    assert events[-1][1]["kind"] == "exception"
    assert "hunter2" not in str(events[-2:])  # The error carries no internals.


@pytest.mark.parametrize(
    ("agent", "kind", "message"),
    [
        ("test_bad_tool_args", "exception", "Bad arguments for tool word_count: text must be str, got int."),
        ("test_unknown_tool", "not_found", "Unknown tool 'no_such_tool'."),
        ("test_agent_error", "exception", "The upstream model refused the request."),
        ("test_bad_result", "exception", "The agent returned a result that is not JSON."),
        ("test_own_timeout_error", "exception", "The agent failed with an internal error (TimeoutError)."),
        ("test_nul_error", "exception", "bad byte"),
    ],
)
async def test_agent_mistakes_end_in_one_agent_error(alice: Any, agent: str, kind: str, message: str) -> None:
    run = await arun_start(user_id=alice.pk, agent=agent, input={})
    run, events = await finished(run)
    assert_lifecycle(events)
    assert events[-1][0] == "agent_error"
    assert events[-1][1]["kind"] == kind
    assert events[-1][1]["message"] == message
    assert run.status == RunStatus.FAILED


async def test_timeout_cancels_the_agent_and_sends_one_timeout_error(alice: Any) -> None:
    started = time.monotonic()
    run = await arun_start(user_id=alice.pk, agent="test_hangs", input={}, run_timeout=0.05)
    run, events = await finished(run)
    assert time.monotonic() - started < 5
    assert_lifecycle(events)
    assert [name for name, _ in events] == ["agent_started", "agent_thinking", "agent_error"]
    assert events[-1][1]["kind"] == "timeout"
    assert events[-1][1]["message"] == "The run took longer than its timeout of 0.05 s."
    assert run.status == RunStatus.TIMED_OUT


async def test_timeout_inside_a_tool_closes_the_call_then_times_out(alice: Any) -> None:
    run = await arun_start(user_id=alice.pk, agent="test_hangs_in_tool", input={}, run_timeout=0.05)
    run, events = await finished(run)
    assert_lifecycle(events)
    assert [name for name, _ in events] == ["agent_started", "tool_executing", "tool_completed", "agent_error"]
    assert events[2][1] == {
        "call_id": events[1][1]["call_id"],
        "tool": "test_never_returns",
        "ok": False,
        "error": "The run took longer than its timeout of 0.05 s.",
        "duration_ms": None,
    }
    assert events[-1][1]["kind"] == "timeout"
    assert run.status == RunStatus.TIMED_OUT


async def test_cancel_mid_tool_ends_in_one_cancelled_error(alice: Any) -> None:
    run = await arun_start(user_id=alice.pk, agent="test_hangs_in_tool", input={}, run_timeout=60)
    await _wait_for_event(run.id, "tool_executing")
    await arun_cancel(user_id=alice.pk, run_id=run.id)
    run, events = await finished(run)
    assert_lifecycle(events)
    assert [name for name, _ in events] == ["agent_started", "tool_executing", "tool_completed", "agent_error"]
    assert events[-1][1]["kind"] == "cancelled"
    assert events[-1][1]["message"] == "The run was cancelled by the user."
    assert run.status == RunStatus.CANCELLED
    assert run.cancel_requested_at is not None


async def test_cancel_requested_by_another_process_is_picked_up(alice: Any) -> None:
    run = await arun_start(user_id=alice.pk, agent="test_hangs", input={}, run_timeout=60)
    await _wait_for_event(run.id, "agent_thinking")
    # What another server's cancel leaves behind: only the database flag.
    await AgentRun.objects.filter(pk=run.id).aupdate(cancel_requested_at="2026-01-01T00:00:00Z")
    run, events = await finished(run)
    assert events[-1][1]["kind"] == "cancelled"
    assert run.status == RunStatus.CANCELLED


async def test_shutdown_with_runs_in_flight_records_every_cancel_and_leaves_no_task(alice: Any, bob: Any) -> None:
    runs = [
        await arun_start(user_id=user.pk, agent=agent, input={}, run_timeout=60)
        for user in (alice, bob)
        for agent in ("test_hangs", "test_hangs_in_tool")
    ]
    for run in runs:
        await _wait_for_event(run.id, "agent_thinking" if run.agent == "test_hangs" else "tool_executing")
    started = time.monotonic()
    await supervisor.shutdown(timeout_seconds=5)
    assert time.monotonic() - started < 5
    assert len(supervisor) == 0
    for run in runs:
        events = await aevents(run.id)
        assert_lifecycle(events)
        assert events[-1][1] == {
            "kind": "cancelled",
            "message": "The run was cancelled because the server is shutting down.",
            "duration_ms": events[-1][1]["duration_ms"],
        }
        assert (await AgentRun.objects.aget(pk=run.id)).status == RunStatus.CANCELLED


async def test_no_run_starts_while_shutting_down(alice: Any) -> None:
    run = await arun_start(user_id=alice.pk, agent="test_hangs", input={}, run_timeout=60)
    await supervisor.shutdown(timeout_seconds=5)
    with pytest.raises(SupervisorClosed):
        await arun_start(user_id=alice.pk, agent="demo", input={})
    assert (await AgentRun.objects.aget(pk=run.id)).status == RunStatus.CANCELLED
    assert await AgentRun.objects.acount() == 1


async def test_unknown_agent_is_refused_before_a_run_exists(alice: Any) -> None:
    with pytest.raises(UnknownAgent, match="Unknown agent 'nope'; available: "):
        await arun_start(user_id=alice.pk, agent="nope", input={})
    assert await AgentRun.objects.acount() == 0
    assert await Event.objects.acount() == 0


async def test_nothing_can_be_emitted_after_the_terminal_event(alice: Any) -> None:
    run = await arun_start(user_id=alice.pk, agent="test_keeps_context", input={})
    await finished(run)
    ctx = saved_contexts.pop()
    with pytest.raises(LifecycleError, match="after the run's terminal event"):
        await ctx.think("too late")
    assert [name for name, _ in await aevents(run.id)] == ["agent_started", "agent_completed"]


async def test_runs_of_two_users_only_log_to_their_own_stream(alice: Any, bob: Any) -> None:
    mine = await arun_start(user_id=alice.pk, agent="calculator", input={"expression": "1+1"})
    theirs = await arun_start(user_id=bob.pk, agent="calculator", input={"expression": "2+2"})
    await finished(mine)
    await finished(theirs)
    owners = await sync_to_async(lambda: set(Event.objects.filter(run_id=mine.id).values_list("user_id", flat=True)))()
    assert owners == {alice.pk}
    seqs = await sync_to_async(
        lambda: list(Event.objects.filter(user=bob).order_by("seq").values_list("seq", flat=True))
    )()
    assert seqs == list(range(1, len(seqs) + 1))


async def _wait_for_event(run_id: Any, event: str) -> None:
    """Wait (bounded) until the run has logged ``event``; polls, as the log has no notifier here."""
    async with asyncio.timeout(5):
        while not await Event.objects.filter(run_id=run_id, event=event).aexists():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_cancel_at_any_moment_still_ends_the_run_exactly_once(alice: Any) -> None:
    """Cancel on each of the first loop turns: before start, during start, mid-agent, during the end."""
    for delay_turns in range(0, 40, 3):
        run = await arun_start(user_id=alice.pk, agent="calculator", input={"expression": "1+1"})
        for _ in range(delay_turns):
            await asyncio.sleep(0)
        supervisor.cancel(run.id, reason="stop")
        run, events = await finished(run)
        assert_lifecycle(events)
        assert run.status in {RunStatus.CANCELLED, RunStatus.COMPLETED}
        assert (events[-1][0] == "agent_error") == (run.status == RunStatus.CANCELLED)


async def test_a_run_cancelled_while_its_event_is_being_written_records_its_end_after_it(
    alice: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The queued thought is written whoever stops waiting for it: the run's end must not overtake it."""
    insert = services._aevents_insert
    held, release = asyncio.Event(), asyncio.Event()

    async def thought_held(batch: list[Any], published: list[Any]) -> list[Event]:
        if any(fields.event == "agent_thinking" for fields in batch) and not release.is_set():
            held.set()
            await asyncio.wait_for(release.wait(), timeout=10)
        return await insert(batch, published)

    monkeypatch.setattr(services, "_aevents_insert", thought_held)
    run = await arun_start(user_id=alice.pk, agent="demo", input={"steps": 1, "delay": 0})
    await asyncio.wait_for(held.wait(), timeout=5)
    supervisor.cancel(run.id, reason="stop")
    for _ in range(20):  # The run handles its cancel while the thought is still held.
        await asyncio.sleep(0)
    release.set()
    run, events = await finished(run)
    assert_lifecycle(events)
    assert [name for name, _ in events] == ["agent_started", "agent_thinking", "agent_error"]
    assert run.status == RunStatus.CANCELLED


async def test_a_reaper_racing_the_runner_leaves_one_end_and_nothing_after(alice: Any) -> None:
    run = await arun_start(user_id=alice.pk, agent="test_hangs_in_tool", input={}, run_timeout=60)
    await _wait_for_event(run.id, "tool_executing")
    # As if its process had died: the reaper ends it while the task still runs.
    await AgentRun.objects.filter(pk=run.id).aupdate(started_at="2000-01-01T00:00:00Z")
    assert await sync_to_async(runs_reap_lost)(grace_seconds=0) == 1
    await arun_cancel_quietly(alice.pk, run.id)
    run, events = await finished(run)
    assert [name for name, _ in events] == ["agent_started", "tool_executing", "agent_error"]
    assert events[-1][1]["kind"] == "lost"
    assert run.status == RunStatus.FAILED


async def arun_cancel_quietly(user_id: int, run_id: Any) -> None:
    """The reaper already ended it in the log, so only the task is left to stop."""
    supervisor.cancel(run_id, reason="stop")


async def test_unsendable_tool_result_closes_the_call_as_failed(alice: Any) -> None:
    run = await arun_start(user_id=alice.pk, agent="test_unsendable_result", input={})
    run, events = await finished(run)
    assert_lifecycle(events)
    assert [name for name, _ in events] == ["agent_started", "tool_executing", "tool_completed", "agent_error"]
    assert events[2][1]["ok"] is False
    assert events[2][1]["error"] == "The tool returned a result that cannot be sent (not JSON, or too large)."


async def test_unsendable_tool_args_are_refused_before_the_call(alice: Any) -> None:
    run = await arun_start(user_id=alice.pk, agent="test_unsendable_args", input={})
    run, events = await finished(run)
    assert_lifecycle(events)
    assert [name for name, _ in events] == ["agent_started", "agent_error"]
    assert events[-1][1]["message"].startswith(
        "Bad arguments for tool test_echo: data must be JSON: Not JSON-serialisable"
    )


async def test_deeply_nested_agent_output_ends_the_run_cleanly(alice: Any) -> None:
    """Data nested far past EVENT_DATA_MAX_DEPTH never reaches the encoder's recursion."""
    outcomes = {}
    for agent in ("test_deep_result", "test_deep_tool_args", "test_deep_tool_result"):
        run = await arun_start(user_id=alice.pk, agent=agent, input={})
        run, events = await finished(run)
        assert_lifecycle(events)
        assert run.status == RunStatus.FAILED
        outcomes[agent] = [(name, data.get("error") or data.get("message")) for name, data in events[1:]]
    assert outcomes == {
        "test_deep_result": [("agent_error", "The agent returned a result that is not JSON.")],
        "test_deep_tool_args": [
            (
                "agent_error",
                "Bad arguments for tool test_echo: data must be JSON: JSON nested more than 40 levels deep is refused.",
            )
        ],
        "test_deep_tool_result": [
            ("tool_executing", None),
            ("tool_completed", "The tool returned a result that cannot be sent (not JSON, or too large)."),
            (
                "agent_error",
                "Tool test_make_deep failed: The tool returned a result that cannot be sent (not JSON, or too large).",
            ),
        ],
    }


@pytest.mark.parametrize(("how", "kind"), [("timeout", "timeout"), ("cancel", "cancelled")])
async def test_an_agent_that_swallows_its_cancellation_still_ends_as_stopped(alice: Any, how: str, kind: str) -> None:
    run = await arun_start(
        user_id=alice.pk, agent="test_swallows_cancel", input={}, run_timeout=0.05 if how == "timeout" else 60
    )
    if how == "cancel":
        await _wait_for_event(run.id, "agent_thinking")
        supervisor.cancel(run.id, reason="stop")
    run, events = await finished(run)
    assert_lifecycle(events)
    assert events[-1][0] == "agent_error" and events[-1][1]["kind"] == kind
    assert run.result is None


async def test_shutdown_ends_runs_that_ignore_cancellation(alice: Any) -> None:
    run = await arun_start(user_id=alice.pk, agent="test_stubborn", input={}, run_timeout=60)
    await _wait_for_event(run.id, "agent_thinking")
    await supervisor.shutdown(timeout_seconds=0.2)
    stored = await AgentRun.objects.aget(pk=run.id)
    assert stored.status == RunStatus.CANCELLED
    await asyncio.wait_for(supervisor.join(run.id), timeout=5)  # It stops once it tries to emit again.
    events = await aevents(run.id)
    assert_lifecycle(events)
    assert events[-1][1]["message"] == "The run was cancelled because the server is shutting down."


def test_concurrent_starts_respect_the_per_user_limit(alice: Any, settings: Any) -> None:
    settings.AGENT_MAX_ACTIVE_RUNS_PER_USER = 2
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def start() -> None:
        try:
            barrier.wait(timeout=10)
            run_create(user_id=alice.pk, agent="demo", input={})
            outcomes.append("created")
        except TooManyRuns:
            outcomes.append("refused")
        finally:
            connection.close()

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(outcomes) == ["created"] * 2 + ["refused"] * 6
    assert AgentRun.objects.count() == 2
