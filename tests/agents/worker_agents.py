"""Agents that the worker tests' processes register (AGENT_MODULES=tests.agents.worker_agents)."""

import asyncio
from typing import Any

from agents.context import RunContext
from agents.registry import agent


def steps_input(value: dict[str, Any]) -> dict[str, Any]:
    steps, delay = value.get("steps", 3), value.get("delay", 0.05)
    if not isinstance(steps, int) or not 1 <= steps <= 200 or not isinstance(delay, int | float) or delay < 0:
        raise ValueError("steps must be 1 to 200 and delay a number of seconds.")
    return {"steps": steps, "delay": delay}


@agent(
    "restartable_steps",
    description="Steps of a word count; safe to run again.",
    validate_input=steps_input,
    restartable=True,
)
async def restartable_steps(ctx: RunContext, input: dict[str, Any]) -> dict[str, int]:
    for step in range(input["steps"]):
        await ctx.think(f"Step {step + 1}.")
        await ctx.tool("word_count", text="safe to run twice")
        await asyncio.sleep(input["delay"])
    return {"steps": input["steps"]}
