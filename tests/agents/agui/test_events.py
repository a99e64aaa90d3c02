"""The mapping of our six events onto AG-UI: each group parses with AG-UI's types and says what the event said."""

import uuid
from typing import Any

import pytest

from agents.agui.events import agui_events, is_terminal
from notifications.frames import EventFrame
from tests.agents.agui.conftest import agui_validate

RUN_ID = str(uuid.uuid4())
EVENT_ID = str(uuid.uuid4())
CREATED = "2026-12-01T12:00:00.250000Z"
CREATED_MS = 1796126400250


def frame(event: str, data: dict[str, Any], *, seq: int = 5) -> EventFrame:
    return {
        "type": "event",
        "id": EVENT_ID,
        "seq": seq,
        "event": event,
        "run_id": RUN_ID,
        "agent": "demo",
        "created_at": CREATED,
        "data": data,
    }


def mapped(event: str, data: dict[str, Any]) -> list[dict[str, Any]]:
    events = agui_events(frame(event, data), thread_id="thread")
    for agui in events:
        agui_validate(agui)
        assert agui["timestamp"] == CREATED_MS
    return [{k: v for k, v in agui.items() if k != "timestamp"} for agui in events]


def test_agent_started_opens_the_run_and_its_step() -> None:
    assert mapped("agent_started", {"input": {"steps": 1}}) == [
        {"type": "RUN_STARTED", "threadId": "thread", "runId": RUN_ID},
        {"type": "STEP_STARTED", "stepName": "demo"},
    ]


def test_agent_thinking_is_one_whole_reasoning_message() -> None:
    assert mapped("agent_thinking", {"thought": "Hmm.\nYes.", "step": 2}) == [
        {"type": "REASONING_START", "messageId": EVENT_ID},
        {"type": "REASONING_MESSAGE_START", "messageId": EVENT_ID, "role": "reasoning"},
        {"type": "REASONING_MESSAGE_CONTENT", "messageId": EVENT_ID, "delta": "Hmm.\nYes."},
        {"type": "REASONING_MESSAGE_END", "messageId": EVENT_ID},
        {"type": "REASONING_END", "messageId": EVENT_ID},
    ]


def test_tool_executing_is_a_whole_tool_call_with_its_arguments_as_json() -> None:
    data = {"call_id": "c1", "tool": "word_count", "args": {"text": "a é"}}
    assert mapped("tool_executing", data) == [
        {"type": "TOOL_CALL_START", "toolCallId": "c1", "toolCallName": "word_count"},
        {"type": "TOOL_CALL_ARGS", "toolCallId": "c1", "delta": '{"text":"a é"}'},
        {"type": "TOOL_CALL_END", "toolCallId": "c1"},
    ]


@pytest.mark.parametrize(
    ("data", "content", "ok"),
    [
        ({"call_id": "c1", "tool": "t", "ok": True, "result": {"n": [1, 2]}, "duration_ms": 3}, '{"n":[1,2]}', True),
        ({"call_id": "c1", "tool": "t", "ok": True, "result": None, "duration_ms": 3}, "null", True),
        (
            {"call_id": "c1", "tool": "t", "ok": False, "error": "Bad arguments.", "duration_ms": 3},
            "Bad arguments.",
            False,
        ),
    ],
)
def test_tool_completed_is_the_calls_result(data: dict[str, Any], content: str, ok: bool) -> None:
    assert mapped("tool_completed", data) == [
        {
            "type": "TOOL_CALL_RESULT",
            "messageId": EVENT_ID,
            "toolCallId": "c1",
            "role": "tool",
            "content": content,
            "metadata": {"ok": ok, "durationMs": 3},
        }
    ]


def test_agent_completed_closes_the_step_and_finishes_the_run_with_its_result() -> None:
    events = mapped("agent_completed", {"result": {"words": 8}, "duration_ms": 120})
    assert events == [
        {"type": "STEP_FINISHED", "stepName": "demo"},
        {
            "type": "RUN_FINISHED",
            "threadId": "thread",
            "runId": RUN_ID,
            "result": {"words": 8},
            "metadata": {"durationMs": 120},
        },
    ]
    assert [is_terminal(event) for event in events] == [False, True]


@pytest.mark.parametrize("kind", ["exception", "timeout", "cancelled", "lost"])
def test_agent_error_is_a_run_error_with_its_kind_as_code(kind: str) -> None:
    events = mapped("agent_error", {"kind": kind, "message": "It failed.", "duration_ms": None})
    assert events == [{"type": "RUN_ERROR", "message": "It failed.", "code": kind, "metadata": {"durationMs": None}}]
    assert is_terminal(events[0])


def test_an_unknown_event_type_has_no_mapping() -> None:
    with pytest.raises(ValueError, match="No AG-UI mapping"):
        agui_events(frame("agent_dreaming", {}), thread_id="t")
