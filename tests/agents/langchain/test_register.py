"""LangGraph graphs registered as agents: one call, coalesced thoughts, tool calls, exactly one end."""

import asyncio
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from agents.models import AgentRun, RunStatus
from agents.registry import agent_get
from agents.services import arun_start
from agents.supervisor import supervisor
from tests.agents.conftest import assert_lifecycle, run_events
from tests.agents.langchain.conftest import LONG_ANSWER_TOKENS

aevents = sync_to_async(run_events)


async def finished(run: AgentRun) -> tuple[AgentRun, list[tuple[str, dict[str, Any]]]]:
    await asyncio.wait_for(supervisor.join(run.id), timeout=10)
    return await AgentRun.objects.aget(pk=run.id), await aevents(run.id)


def names(events: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [name for name, _ in events]


async def test_the_example_langgraph_agent_thinks_calls_its_tool_and_answers(alice: Any) -> None:
    text = "Agents think, call tools, and finish."
    run = await arun_start(user_id=alice.pk, agent="langgraph_words", input={"text": text})
    run, events = await finished(run)
    assert_lifecycle(events)
    assert names(events) == [
        "agent_started",
        "agent_thinking",  # The model's words before its tool call (coalesced: one event).
        "agent_thinking",  # Its reasoning, held apart from its words.
        "tool_executing",
        "tool_completed",
        "agent_thinking",  # The answer's words.
        "agent_completed",
    ]
    thoughts = [data["thought"] for name, data in events if name == "agent_thinking"]
    assert thoughts == [
        "I will count the words with the count_words tool rather than by eye.",
        "Counting words by hand is error-prone; the tool splits on whitespace.",
        "The text has 6 words.",
    ]
    executing, completed = events[3][1], events[4][1]
    assert (executing["tool"], executing["args"]) == ("count_words", {"text": text})
    assert (completed["call_id"], completed["ok"], completed["result"]) == (executing["call_id"], True, "6")
    assert (run.status, run.result) == (RunStatus.COMPLETED, "The text has 6 words.")
    assert agent_get("langgraph_words").input_example == {"text": "Agents think, call tools, and finish."}


async def test_a_token_stream_is_coalesced_by_size(alice: Any, settings: Any) -> None:
    settings.AGENT_THINKING_COALESCE_MS = 60_000  # Only the size limit applies here.
    settings.AGENT_THINKING_COALESCE_CHARS = 400
    run = await arun_start(user_id=alice.pk, agent="test_lc_long_answer", input={})
    run, events = await finished(run)
    assert_lifecycle(events)
    thoughts = [data["thought"] for name, data in events if name == "agent_thinking"]
    # 1,000 tokens "tok" and 999 spaces between them: 3,999 characters, 1,999 tokens as streamed.
    assert "".join(thoughts) == " ".join(["tok"] * LONG_ANSWER_TOKENS)
    assert len(thoughts) == 10 and all(400 <= len(t) <= 402 for t in thoughts[:-1])
    assert run.status == RunStatus.COMPLETED


async def test_a_tool_exception_is_the_calls_failure_and_the_graph_goes_on(alice: Any) -> None:
    run = await arun_start(user_id=alice.pk, agent="test_lc_tool_error", input={})
    run, events = await finished(run)
    assert_lifecycle(events)
    completed = next(data for name, data in events if name == "tool_completed")
    assert (completed["tool"], completed["ok"], completed["error"]) == ("test_lc_refuses", False, "Refusing 'this'.")
    assert (run.status, run.result) == (RunStatus.COMPLETED, "It refused.")


async def test_a_tool_exception_the_graph_does_not_handle_fails_the_call_then_the_run(alice: Any) -> None:
    run = await arun_start(user_id=alice.pk, agent="test_lc_tool_error_unhandled", input={})
    run, events = await finished(run)
    assert_lifecycle(events)
    assert names(events)[-3:] == ["tool_executing", "tool_completed", "agent_error"]
    assert (events[-2][1]["ok"], events[-2][1]["error"]) == (False, "Refusing 'that'.")
    assert events[-1][1]["kind"] == "exception" and run.status == RunStatus.FAILED


async def test_two_tool_calls_are_each_opened_and_closed(alice: Any) -> None:
    run = await arun_start(user_id=alice.pk, agent="test_lc_echo_twice", input={})
    run, events = await finished(run)
    assert_lifecycle(events)
    results = [data["result"] for name, data in events if name == "tool_completed"]
    assert results == ["one", "two"]
    assert run.result == "Done."


async def test_a_failing_graph_ends_the_run_with_exactly_one_agent_error(alice: Any) -> None:
    run = await arun_start(user_id=alice.pk, agent="test_lc_model_fails", input={})
    run, events = await finished(run)
    assert_lifecycle(events)
    assert names(events) == ["agent_started", "agent_error"]
    assert events[-1][1]["kind"] == "exception"
    assert run.status == RunStatus.FAILED


@pytest.mark.parametrize("bad", [{}, {"text": ""}, {"text": 3}, {"text": "x", "y": 1}, {"text": "x" * 2001}])
async def test_the_example_checks_its_input(alice: Any, bad: dict[str, Any]) -> None:
    from agents.exceptions import InvalidRunInput

    with pytest.raises(InvalidRunInput):
        await arun_start(user_id=alice.pk, agent="langgraph_words", input=bad)
