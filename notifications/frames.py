"""The shapes that cross the channel layer and the WebSocket, in one place."""

import json
from datetime import UTC, datetime
from typing import Any, Literal, NotRequired, TypedDict

from .models import Event


class EventFrame(TypedDict):
    type: Literal["event"]
    id: str
    seq: int
    event: str
    run_id: str
    agent: str
    created_at: str
    data: dict[str, Any]


class LayerEventMessage(TypedDict):
    """What the publisher sends to a user's group; handled by ``notification_event``.

    ``frame`` is the event already encoded as the client will see it, so a
    user with several connections costs one encode, not one per connection.
    ``created`` is when the event was recorded (Unix time), for the delivery
    latency metric; a message from an older publisher may lack it.
    """

    type: Literal["notification.event"]
    user_id: int
    seq: int
    frame: str
    created: NotRequired[float]


def isoformat_utc(moment: datetime) -> str:
    """Format a timestamp as ISO 8601 in UTC with a ``Z`` suffix."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def event_frame(event: Event) -> EventFrame:
    """Shape an event the one way every client sees it (WebSocket, REST, admin)."""
    return {
        "type": "event",
        "id": str(event.id),
        "seq": event.seq,
        "event": event.event,
        "run_id": str(event.run_id),
        "agent": event.agent,
        "created_at": isoformat_utc(event.created_at),
        "data": event.data,
    }


def encode(message: Any) -> str:
    """Encode a server frame as compact JSON text."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


def event_frame_text(event: Event) -> str:
    return encode(event_frame(event))
