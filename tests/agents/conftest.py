"""Agents that misbehave on purpose, and fixtures that clean up runs.

The test agents are registered in this process only (the daphne servers of
the end-to-end tests know just the built-in ones).
"""

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from django.utils import timezone
from hypothesis import strategies as st

from agents.builtin import DEMO_DELAY_MAX_SECONDS, DEMO_STEPS_MAX
from agents.context import RunContext
from agents.exceptions import AgentError
from agents.models import ACTIVE_STATUSES, AgentRun
from agents.registry import agent, tool
from agents.supervisor import supervisor
from notifications.models import Event
from tests.agents import worker_agents  # noqa: F401  (registers restartable_steps here too)
from tests.conftest import ChannelLayers
from tests.hostile import big_strings, deep_values, field_values, hostile_text, mostly, python_values, weighted


@pytest.fixture
async def runs_stopped(transactional_db: None) -> AsyncIterator[None]:
    """After the test, cancel what a shared server still runs, before the database is emptied (end-to-end tests)."""
    yield
    await AgentRun.objects.filter(status__in=ACTIVE_STATUSES).aupdate(cancel_requested_at=timezone.now())
    async with asyncio.timeout(10):
        while await AgentRun.objects.filter(status__in=ACTIVE_STATUSES).aexists():  # noqa: ASYNC110
            await asyncio.sleep(0.05)


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
async def runs_cleaned_up(settings: Any, channel_layers: ChannelLayers) -> AsyncIterator[None]:
    """Use the in-memory layer; shut the supervisor down after the test, leaving no run behind."""
    channel_layers("memory")
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


# The built-in agents' input rules, restated from their documentation for property tests.


def _demo_input(value: dict[str, Any]) -> dict[str, Any] | None:
    """The demo's documented input (GET /api/agents/), with its defaults; None if it is refused."""
    if set(value) - {"steps", "delay", "fail"}:
        return None
    steps, delay, fail = value.get("steps", 1), value.get("delay", 0.05), value.get("fail", False)
    if type(steps) is not int or not 1 <= steps <= DEMO_STEPS_MAX:
        return None
    if type(delay) not in (int, float) or not 0 <= delay <= DEMO_DELAY_MAX_SECONDS:
        return None
    if type(fail) is not bool:
        return None
    return {"steps": steps, "delay": delay, "fail": fail}


def _calculator_input(value: dict[str, Any]) -> dict[str, Any] | None:
    """The calculator's documented input; None if it is refused."""
    expression = value.get("expression")
    if set(value) != {"expression"} or not isinstance(expression, str) or not expression.strip():
        return None
    return {"expression": expression}


BUILTIN_AGENTS = ["demo", "calculator"]


def documented_input(agent: str, value: dict[str, Any]) -> dict[str, Any] | None:
    """What a built-in agent's input becomes once validated, by its documented rules; None if refused."""
    return _demo_input(value) if agent == "demo" else _calculator_input(value)


# Run input and timeouts for the built-in agents: mostly valid field by field, so that
# whole inputs are valid often enough, and anything at all otherwise.
_steps = mostly(
    st.integers(min_value=1, max_value=DEMO_STEPS_MAX),
    st.integers(min_value=-2, max_value=DEMO_STEPS_MAX + 2) | st.floats() | st.booleans() | field_values,
)
_delays = mostly(
    st.floats(min_value=0, max_value=DEMO_DELAY_MAX_SECONDS) | st.integers(0, int(DEMO_DELAY_MAX_SECONDS)),
    st.floats() | st.integers(-1, 31) | st.booleans() | field_values,
)
_expressions = mostly(st.text(min_size=1, max_size=30), hostile_text | big_strings(max_size=20_000) | field_values)
run_inputs = weighted(
    (
        3,
        st.fixed_dictionaries(
            {}, optional={"steps": _steps, "delay": _delays, "fail": mostly(st.booleans(), field_values)}
        ),
    ),
    (3, st.fixed_dictionaries({"expression": _expressions})),
    (
        1,
        st.dictionaries(
            st.sampled_from(["steps", "delay", "fail", "expression"]) | hostile_text, field_values, max_size=3
        ),
    ),
    (1, python_values | deep_values),
)
run_timeouts = mostly(
    st.none() | st.floats(min_value=0, max_value=600, exclude_min=True) | st.integers(1, 600),
    st.integers(min_value=-2, max_value=602)
    | st.floats()
    | st.sampled_from([0, 600.0000001, 5e-324, -0.0, True, "10"])
    | field_values,
)
