"""agents.context: what an agent's calls become, seen through the one thing it needs, ``emit``."""

import uuid
from typing import Any

import pytest

from agents.context import RunContext
from agents.exceptions import ToolError
from agents.models import AgentRun
from notifications.exceptions import InvalidEventData


class Emitted:
    """A stand-in for ``RunExecution.emit`` that keeps what it is given, and can refuse one event."""

    def __init__(self, *, refuse: str | None = None) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.refuse = refuse

    async def __call__(self, event: str, data: dict[str, Any], *, call_id: str | None = None, tool: str = "") -> None:
        if event == self.refuse and data.get("ok", True):
            raise InvalidEventData("data must be JSON")
        self.events.append((event, data))


def context_of(emit: Emitted) -> RunContext:
    run = AgentRun(id=uuid.uuid4(), user_id=1, agent="demo", input={"steps": 1})  # Never saved: no database here.
    return RunContext(run, emit=emit)


async def test_thoughts_are_numbered_steps_and_the_context_carries_the_run() -> None:
    emit = Emitted()
    ctx = context_of(emit)
    await ctx.think("first")
    await ctx.think("second")
    assert emit.events == [
        ("agent_thinking", {"thought": "first", "step": 1}),
        ("agent_thinking", {"thought": "second", "step": 2}),
    ]
    assert (ctx.agent, ctx.user_id, ctx.input) == ("demo", 1, {"steps": 1})


async def test_a_tool_call_is_announced_then_reported_under_one_call_id() -> None:
    emit = Emitted()
    assert await context_of(emit).tool("word_count", text="one two three") == 3
    (started, executing), (completed, result) = emit.events
    assert started == "tool_executing" and completed == "tool_completed"
    assert executing == {"call_id": executing["call_id"], "tool": "word_count", "args": {"text": "one two three"}}
    assert result["call_id"] == executing["call_id"] and result["ok"] is True and result["result"] == 3


async def test_a_result_emit_refuses_is_reported_as_the_calls_failure() -> None:
    emit = Emitted(refuse="tool_completed")
    with pytest.raises(ToolError, match="cannot be sent"):
        await context_of(emit).tool("word_count", text="a")
    assert [name for name, _ in emit.events] == ["tool_executing", "tool_completed"]
    assert emit.events[1][1]["ok"] is False
