"""Helpers of the AG-UI tests: read an SSE stream, and check events with AG-UI's own Python types."""

import http.client
import json
import urllib.parse
from dataclasses import dataclass
from typing import Any

from ag_ui.core import Event as AguiEvent
from pydantic import TypeAdapter

EVENT_ADAPTER: TypeAdapter[Any] = TypeAdapter(AguiEvent)  # A union of event models.


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


@dataclass(frozen=True, slots=True)
class SseAnswer:
    status: int
    headers: dict[str, str]
    events: list[SseEvent]
    comments: list[str]
    ended: bool  # The server ended the response (not cut by the reader).
    body: bytes


def sse_request(
    url: str,
    *,
    token: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    cut_after: int | None = None,
    timeout: float = 20.0,
) -> SseAnswer:
    """POST ``body`` (or GET without one) and read the SSE response; close the connection after ``cut_after`` events.

    Blocking (http.client, which undoes the chunked encoding): call it in a thread.
    Every read is bounded by ``timeout``.
    """
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    sent = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream", **(headers or {})}
    payload = None
    if body is not None:
        payload = json.dumps(body).encode()
        sent["Content-Type"] = "application/json"
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    try:
        connection.request("POST" if body is not None else "GET", path, body=payload, headers=sent)
        response = connection.getresponse()
        answer_headers = {key.lower(): value for key, value in response.getheaders()}
        if not answer_headers.get("content-type", "").startswith("text/event-stream"):
            return SseAnswer(response.status, answer_headers, [], [], True, response.read())
        received = b""
        while True:
            chunk = response.read1(65536)
            if not chunk:
                events, comments = sse_parse(received.decode())
                return SseAnswer(response.status, answer_headers, events, comments, True, received)
            received += chunk
            # (A read may end inside a character; that is in the unfinished last event, which is left out.)
            events, comments = sse_parse(received.decode(errors="replace"))
            if cut_after is not None and len(events) >= cut_after:
                return SseAnswer(response.status, answer_headers, events[:cut_after], comments, False, received)
    finally:
        connection.close()
