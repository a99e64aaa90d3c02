"""agents.lifecycle.Lifecycle: the order of a run's events."""

import pytest

from agents.exceptions import LifecycleError
from agents.lifecycle import Lifecycle


def test_a_whole_run_in_order_is_accepted() -> None:
    lifecycle = Lifecycle()
    lifecycle.advance("agent_started")
    lifecycle.advance("agent_thinking")
    lifecycle.advance("tool_executing", call_id="a", tool="t")
    lifecycle.advance("tool_executing", call_id="b", tool="u")
    assert lifecycle.open_calls == {"a": "t", "b": "u"}
    lifecycle.advance("tool_completed", call_id="b")
    lifecycle.advance("tool_completed", call_id="a")
    lifecycle.advance("agent_completed")
    assert lifecycle.finished and not lifecycle.open_calls


def test_check_alone_does_not_advance() -> None:
    lifecycle = Lifecycle()
    lifecycle.check("agent_started")
    lifecycle.check("agent_started")  # Not yet recorded: still allowed.
    assert not lifecycle.started
    with pytest.raises(LifecycleError, match="before agent_started"):
        lifecycle.check("agent_thinking")


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([("agent_thinking", None)], "agent_thinking before agent_started"),
        ([("agent_started", None), ("agent_started", None)], "agent_started twice"),
        ([("agent_started", None), ("tool_completed", "x")], "not executing"),
        ([("agent_started", None), ("tool_executing", "x"), ("tool_executing", "x")], "reused call id"),
        ([("agent_started", None), ("tool_executing", None)], "missing or reused call id"),
        (
            [("agent_started", None), ("tool_executing", "x"), ("tool_completed", "x"), ("tool_completed", "x")],
            "not executing",
        ),
        ([("agent_started", None), ("agent_completed", None), ("agent_thinking", None)], "after the run's terminal"),
        ([("agent_started", None), ("agent_error", None), ("agent_completed", None)], "after the run's terminal"),
        ([("agent_started", None), ("agent_exploded", None)], "Unknown event"),
    ],
)
def test_out_of_order_events_are_programming_errors(steps: list[tuple[str, str | None]], message: str) -> None:
    lifecycle = Lifecycle()
    *before, (last, call_id) = steps
    for event, before_call in before:
        lifecycle.advance(event, call_id=before_call)
    with pytest.raises(LifecycleError, match=message):
        lifecycle.advance(last, call_id=call_id)
