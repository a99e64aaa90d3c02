"""The built-in agents, ``demo`` and ``calculator``, and their tools."""

import asyncio
from typing import Any

from .calculator import Number, evaluate
from .context import RunContext
from .exceptions import AgentError
from .registry import agent, tool

DEMO_STEPS_MAX = 50
DEMO_DELAY_MAX_SECONDS = 30.0
DEMO_SENTENCES = (
    "Agents think, call tools, and finish or fail.",
    "Every step is written to the log before anyone is told about it.",
    "The browser resumes from the last event it saw.",
)


@tool("word_count", description="Count the words in a text.")
def word_count(text: str) -> int:
    return len(text.split())


@tool("calculate", description="Evaluate an arithmetic expression: numbers, ( ), + - * / // % **.")
def calculate(expression: str) -> Number:
    return evaluate(expression)


def demo_input(value: dict[str, Any]) -> dict[str, Any]:
    unknown = set(value) - {"steps", "delay", "fail"}
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(sorted(unknown))}; demo takes steps, delay and fail.")
    steps = value.get("steps", 1)
    delay = value.get("delay", 0.05)
    fail = value.get("fail", False)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= DEMO_STEPS_MAX:
        raise ValueError(f"steps must be an integer from 1 to {DEMO_STEPS_MAX}.")
    if isinstance(delay, bool) or not isinstance(delay, int | float) or not 0 <= delay <= DEMO_DELAY_MAX_SECONDS:
        raise ValueError(f"delay must be a number of seconds from 0 to {DEMO_DELAY_MAX_SECONDS:g}.")
    if not isinstance(fail, bool):
        raise ValueError("fail must be true or false.")
    return {"steps": steps, "delay": delay, "fail": fail}


@agent(
    "demo",
    description="Thinks, counts the words of a sentence with a tool, and repeats for each step.",
    validate_input=demo_input,
    input_help={
        "steps": f"think-and-tool rounds, 1 to {DEMO_STEPS_MAX} (default 1)",
        "delay": "seconds each round waits (default 0.05)",
        "fail": "raise inside the agent once it has worked (default false)",
    },
    input_example={"steps": 3, "delay": 0.5},
)
async def demo(ctx: RunContext, input: dict[str, Any]) -> dict[str, int]:
    words = 0
    for step in range(1, input["steps"] + 1):
        sentence = DEMO_SENTENCES[(step - 1) % len(DEMO_SENTENCES)]
        await ctx.think(f"Step {step} of {input['steps']}: counting the words in {sentence!r}.")
        await asyncio.sleep(input["delay"])
        words += await ctx.tool("word_count", text=sentence)
    if input["fail"]:
        raise AgentError("Failing on purpose: the input asked for fail=true.")
    return {"steps": input["steps"], "words": words}


def calculator_input(value: dict[str, Any]) -> dict[str, Any]:
    if set(value) != {"expression"}:
        raise ValueError('calculator takes exactly one field, "expression".')
    if not isinstance(value["expression"], str) or not value["expression"].strip():
        raise ValueError("expression must be a non-empty string.")
    return {"expression": value["expression"]}


@agent(
    "calculator",
    description="Evaluates an arithmetic expression with the calculate tool (a safe parser, never eval).",
    validate_input=calculator_input,
    input_help={"expression": 'arithmetic such as "2*(3+4)"'},
    input_example={"expression": "2*(3+4)"},
)
async def calculator(ctx: RunContext, input: dict[str, Any]) -> Number:
    expression = input["expression"]
    await ctx.think(f"Evaluating {expression} with the calculate tool.")
    value: Number = await ctx.tool("calculate", expression=expression)
    await ctx.think(f"{expression} = {value}")
    return value
