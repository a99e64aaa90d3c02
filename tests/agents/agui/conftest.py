"""Helpers of the AG-UI tests: read an SSE stream, and check events with AG-UI's own Python types."""

import json
from dataclasses import dataclass
from typing import Any

from ag_ui.core import Event as AguiEvent
from pydantic import TypeAdapter

EVENT_ADAPTER: TypeAdapter[Any] = TypeAdapter(AguiEvent)


@dataclass(frozen=True, slots=True)
class SseEvent:
    id: str | None
    data: dict[str, Any]


def sse_parse(text: str) -> tuple[list[SseEvent], list[str]]:
    """Split an SSE body into its events (id and JSON data) and its comments; a trailing partial event is left out."""
    events: list[SseEvent] = []
    comments: list[str] = []
    blocks = text.split("\n\n")
    for block in blocks[:-1]:
        sse_id: str | None = None
        data: list[str] = []
        for line in block.split("\n"):
            if line.startswith(":"):
                comments.append(line[1:].strip())
            elif line.startswith("id: "):
                sse_id = line[4:]
            elif line.startswith("data: "):
                data.append(line[6:])
        if data:
            events.append(SseEvent(sse_id, json.loads("\n".join(data))))
    return events, comments


def agui_validate(event: dict[str, Any]) -> Any:
    """Parse one event with ``ag_ui.core``'s types; it must parse, and say back exactly what was sent."""
    parsed = EVENT_ADAPTER.validate_python(event)
    assert parsed.model_dump(by_alias=True, exclude_none=True, mode="json") == event
    return parsed
