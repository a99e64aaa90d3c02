"""Registering agents: what the catalogue offers clients must be valid."""

import uuid
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from agents.exceptions import InvalidRunInput
from agents.registry import agent, agent_get, agent_input_validate
from tests.agents.conftest import BUILTIN_AGENTS, documented_input, run_inputs


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


@settings(max_examples=300)
@given(agent=st.sampled_from(BUILTIN_AGENTS), value=run_inputs)
def test_builtin_input_is_validated_by_its_documented_rules(agent: str, value: Any) -> None:
    """Any value: the validated input the docs describe, or ``InvalidRunInput``; validating it again changes nothing."""
    spec = agent_get(agent)
    try:
        validated = agent_input_validate(spec, value)
    except InvalidRunInput as exc:
        event("refused")
        assert exc.detail.startswith(("input must be a JSON object", f"Invalid input for {agent}: "))
        assert not isinstance(value, dict) or documented_input(agent, value) is None
        return
    event(f"valid for {agent}")
    assert validated == documented_input(agent, value)
    assert agent_input_validate(spec, validated) == validated
