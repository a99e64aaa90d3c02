"""Agents that the worker tests' processes register (AGENT_MODULES=tests.agents.worker_agents)."""

import asyncio
from pathlib import Path
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


GATE_POLL_SECONDS = 0.05


def gated_input(value: dict[str, Any]) -> dict[str, Any]:
    gate, steps = value.get("gate"), value.get("steps", 3)
    if not isinstance(gate, str) or not isinstance(steps, int) or not 1 <= steps <= 50:
        raise ValueError("gate must be a file path and steps 1 to 50.")
    return {"gate": gate, "steps": steps}


@agent(
    "gated_steps",
    description="Word-count steps, halfway held until a file exists.",
    validate_input=gated_input,
    input_example={"gate": "/nonexistent/gate", "steps": 2},
)
async def gated_steps(ctx: RunContext, input: dict[str, Any]) -> dict[str, int]:
    """In flight for as long as a test needs, then done at once: no test waits on a guessed duration.

    It waits (within its own timeout) for the file ``gate`` to exist after the first half of its steps.
    """
    gate = Path(input["gate"])
    for step in range(input["steps"]):
        if step == input["steps"] // 2:
            # (A file is what the test and this worker process share; the run's timeout bounds the wait.)
            while not await asyncio.to_thread(gate.exists):  # noqa: ASYNC110
                await asyncio.sleep(GATE_POLL_SECONDS)
        await ctx.think(f"Step {step + 1}.")
        await ctx.tool("word_count", text="held until the gate opens")
    return {"steps": input["steps"]}
