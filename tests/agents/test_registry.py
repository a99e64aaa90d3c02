"""Registering agents: what the catalogue offers clients must be valid."""

import uuid
from typing import Any

import pytest

from agents.registry import agent, agent_get


def _strict(value: dict[str, Any]) -> dict[str, Any]:
    if set(value) != {"n"}:
        raise ValueError("takes exactly n.")
    return value


def test_an_example_input_the_agent_would_refuse_fails_at_registration() -> None:
    name = f"test_bad_example_{uuid.uuid4().hex[:6]}"
    with pytest.raises(ValueError, match="takes exactly n"):

        @agent(name, description="Has a bad example.", validate_input=_strict, input_example={"m": 1})
        async def bad(ctx: Any, input: dict[str, Any]) -> None: ...

    with pytest.raises(Exception, match="Unknown agent"):
        agent_get(name)


def test_the_builtin_examples_are_offered() -> None:
    assert agent_get("demo").input_example == {"steps": 3, "delay": 0.5}
