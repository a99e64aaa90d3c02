"""Map our six lifecycle events onto AG-UI events: the one place the mapping lives.

Each of our events becomes a short group of AG-UI events that is complete in
itself (a reasoning message is opened, filled and closed; a tool call is
started, given its arguments and ended), so a stream may stop or resume
between any two of our events and the client still sees well-formed AG-UI.
The groups are a pure function of the stored event and the thread id: a
resumed stream sends exactly the same AG-UI events as the first one did, which
is what makes the ``<seq>.<n>`` SSE ids of ``sse.py`` mean the same thing twice.
"""

import json
from datetime import datetime
from typing import Any

from notifications.frames import EventFrame
from notifications.models import EventType

AguiEvent = dict[str, Any]

TERMINAL_TYPES = frozenset({"RUN_FINISHED", "RUN_ERROR"})


def agui_events(frame: EventFrame, *, thread_id: str) -> list[AguiEvent]:
    """Return the AG-UI events (camelCase, as sent) for one of our events, in order."""
    data: dict[str, Any] = frame["data"]
    at = _epoch_ms(frame["created_at"])
    kind = frame["event"]
    if kind == EventType.AGENT_STARTED:
        return [
            {"type": "RUN_STARTED", "timestamp": at, "threadId": thread_id, "runId": frame["run_id"]},
            {"type": "STEP_STARTED", "timestamp": at, "stepName": frame["agent"]},
        ]
    if kind == EventType.AGENT_THINKING:
        message_id = frame["id"]
        return [
            {"type": "REASONING_START", "timestamp": at, "messageId": message_id},
            {"type": "REASONING_MESSAGE_START", "timestamp": at, "messageId": message_id, "role": "reasoning"},
            {"type": "REASONING_MESSAGE_CONTENT", "timestamp": at, "messageId": message_id, "delta": data["thought"]},
            {"type": "REASONING_MESSAGE_END", "timestamp": at, "messageId": message_id},
            {"type": "REASONING_END", "timestamp": at, "messageId": message_id},
        ]
    if kind == EventType.TOOL_EXECUTING:
        call_id = data["call_id"]
        return [
            {"type": "TOOL_CALL_START", "timestamp": at, "toolCallId": call_id, "toolCallName": data["tool"]},
            {"type": "TOOL_CALL_ARGS", "timestamp": at, "toolCallId": call_id, "delta": _json(data["args"])},
            {"type": "TOOL_CALL_END", "timestamp": at, "toolCallId": call_id},
        ]
    if kind == EventType.TOOL_COMPLETED:
        ok = bool(data["ok"])
        return [
            {
                "type": "TOOL_CALL_RESULT",
                "timestamp": at,
                "messageId": frame["id"],
                "toolCallId": data["call_id"],
                "role": "tool",
                # A result is JSON text; an error is the error's message, for a person.
                "content": _json(data.get("result")) if ok else str(data.get("error", "")),
                "metadata": {"ok": ok, "durationMs": data.get("duration_ms")},
            }
        ]
    if kind == EventType.AGENT_COMPLETED:
        return [
            {"type": "STEP_FINISHED", "timestamp": at, "stepName": frame["agent"]},
            {
                "type": "RUN_FINISHED",
                "timestamp": at,
                "threadId": thread_id,
                "runId": frame["run_id"],
                "result": data.get("result"),
                "metadata": {"durationMs": data.get("duration_ms")},
            },
        ]
    if kind == EventType.AGENT_ERROR:
        # RUN_ERROR alone, with no STEP_FINISHED: a run can end in agent_error
        # without ever having started (one that was lost while queued), and
        # AG-UI allows RUN_ERROR as the first event but no step closed unopened.
        return [
            {
                "type": "RUN_ERROR",
                "timestamp": at,
                "message": str(data.get("message", "")),
                "code": str(data.get("kind", "error")),
                "metadata": {"durationMs": data.get("duration_ms")},
            }
        ]
    raise ValueError(f"No AG-UI mapping for event type {kind!r}.")


def is_terminal(event: AguiEvent) -> bool:
    """Whether the AG-UI event ends its run's stream."""
    return event["type"] in TERMINAL_TYPES


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _epoch_ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp() * 1000)
