"""Agents that misbehave on purpose, and fixtures that clean up runs.

The test agents are registered in this process only (the daphne servers of
the end-to-end tests know just the built-in ones).
"""

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agents.exceptions import AgentError
from agents.registry import agent, tool
from agents.runner import RunContext
from agents.supervisor import supervisor
from notifications.models import Event

NEVER = asyncio.Event  # Each use creates an event nobody sets.
saved_contexts: list[RunContext] = []


@tool("test_never_returns", description="Wait on an event that never fires.")
async def never_returns() -> None:
    await NEVER().wait()


@tool("test_explodes", description="Raise an unexpected error holding internals.")
def explodes(secret: str) -> None:
    raise RuntimeError(f"connection string postgres://admin:{secret}@db")


@agent("test_hangs", description="Waits on an event that never fires.")
async def hangs(ctx: RunContext, input: dict[str, Any]) -> None:
    await ctx.think("Waiting forever.")
    await NEVER().wait()


@agent("test_hangs_in_tool", description="Calls a tool that never returns.")
async def hangs_in_tool(ctx: RunContext, input: dict[str, Any]) -> None:
    await ctx.tool("test_never_returns")


@agent("test_tool_explodes", description="Calls a tool that raises.")
async def tool_explodes(ctx: RunContext, input: dict[str, Any]) -> None:
    await ctx.tool("test_explodes", secret="hunter2")


@agent("test_raises", description="Raises an unexpected error.")
async def raises(ctx: RunContext, input: dict[str, Any]) -> None:
    await ctx.think("About to fail.")
    raise KeyError("internal detail")


@agent("test_own_timeout_error", description="Raises TimeoutError of its own, well within its timeout.")
async def own_timeout_error(ctx: RunContext, input: dict[str, Any]) -> None:
    raise TimeoutError("an upstream service timed out")


@agent("test_bad_result", description="Returns something that is not JSON.")
async def bad_result(ctx: RunContext, input: dict[str, Any]) -> object:
    return {"when": object()}


@agent("test_keeps_context", description="Keeps its context for use after it ends.")
async def keeps_context(ctx: RunContext, input: dict[str, Any]) -> str:
    saved_contexts.append(ctx)
    return "done"


@agent("test_bad_tool_args", description="Calls a tool with the wrong arguments.")
async def bad_tool_args(ctx: RunContext, input: dict[str, Any]) -> None:
    await ctx.tool("word_count", text=42)


@agent("test_unknown_tool", description="Calls a tool that does not exist.")
async def unknown_tool(ctx: RunContext, input: dict[str, Any]) -> None:
    await ctx.tool("no_such_tool")


@agent("test_agent_error", description="Fails with a message for the user.")
async def agent_error(ctx: RunContext, input: dict[str, Any]) -> None:
    raise AgentError("The upstream model refused the request.")


@pytest.fixture(autouse=True)
async def runs_cleaned_up(settings: Any) -> AsyncIterator[None]:
    """Use the in-memory layer; shut the supervisor down after the test, leaving no run behind."""
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    settings.AGENT_CANCEL_POLL_SECONDS = 0.05
    supervisor.open()
    yield
    await supervisor.shutdown(timeout_seconds=5)
    assert len(supervisor) == 0


def run_events(run_id: Any) -> list[tuple[str, dict[str, Any]]]:
    return [(e.event, e.data) for e in Event.objects.filter(run_id=run_id).order_by("seq")]


def assert_lifecycle(events: list[tuple[str, dict[str, Any]]]) -> None:
    """agent_started first, one terminal event last, every tool call opened then closed once."""
    names = [name for name, _ in events]
    assert names[0] == "agent_started", names
    assert names[-1] in {"agent_completed", "agent_error"}, names
    assert sum(name in {"agent_completed", "agent_error"} for name in names) == 1, names
    open_calls: set[str] = set()
    for name, data in events[1:-1]:
        assert name in {"agent_thinking", "tool_executing", "tool_completed"}, names
        if name == "tool_executing":
            assert data["call_id"] not in open_calls
            open_calls.add(data["call_id"])
        elif name == "tool_completed":
            open_calls.remove(data["call_id"])
    assert not open_calls, names


@tool("test_echo", description="Return its argument.")
def echo(value: object) -> object:
    return value


@tool("test_make_object", description="Return something that is not JSON.")
def make_object() -> object:
    return object()


@agent("test_unsendable_result", description="Calls a tool whose result is not JSON.")
async def unsendable_result(ctx: RunContext, input: dict[str, Any]) -> None:
    await ctx.tool("test_make_object")


@agent("test_unsendable_args", description="Calls a tool with arguments that are not JSON.")
async def unsendable_args(ctx: RunContext, input: dict[str, Any]) -> None:
    await ctx.tool("test_echo", value={1, 2})


def deeply_nested(depth: int) -> list[Any]:
    """A list nested ``depth`` deep, built without recursion."""
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


@tool("test_make_deep", description="Return a list nested 5,000 deep.")
def make_deep() -> object:
    return deeply_nested(5_000)


@agent("test_deep_result", description="Returns a list nested 5,000 deep.")
async def deep_result(ctx: RunContext, input: dict[str, Any]) -> object:
    return deeply_nested(5_000)


@agent("test_deep_tool_args", description="Calls a tool with arguments nested 5,000 deep.")
async def deep_tool_args(ctx: RunContext, input: dict[str, Any]) -> None:
    await ctx.tool("test_echo", value=deeply_nested(5_000))


@agent("test_deep_tool_result", description="Calls a tool whose result is nested 5,000 deep.")
async def deep_tool_result(ctx: RunContext, input: dict[str, Any]) -> None:
    await ctx.tool("test_make_deep")


@agent("test_nul_error", description="Fails with a message holding NUL, which the log cannot store.")
async def nul_error(ctx: RunContext, input: dict[str, Any]) -> None:
    raise AgentError("bad\x00 byte")


@agent("test_swallows_cancel", description="Catches its cancellation and returns as if done.")
async def swallows_cancel(ctx: RunContext, input: dict[str, Any]) -> str:
    await ctx.think("Waiting.")
    try:
        await NEVER().wait()
    except asyncio.CancelledError:
        pass
    return "pretending to be done"


@agent("test_stubborn", description="Ignores every cancellation until its run is ended for it.")
async def stubborn(ctx: RunContext, input: dict[str, Any]) -> None:
    await ctx.think("Working.")
    cancelled = False
    while True:
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            cancelled = True
        if cancelled:
            await ctx.think("Ignoring the cancel.")  # LifecycleError once the run was ended.
