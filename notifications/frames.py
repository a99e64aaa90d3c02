"""The shapes that cross the channel layer and the WebSocket, in one place."""

import json
import uuid
from datetime import UTC, datetime
from typing import Any, Literal, NotRequired, Protocol, TypedDict


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
    if moment.tzinfo is not UTC:  # What the database hands back is UTC already.
        moment = moment.astimezone(UTC)
    return moment.isoformat().replace("+00:00", "Z")


class LoggedEvent(Protocol):
    """What a frame is made of: a logged ``Event``, or a drainer's lighter row of the same fields."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def user_id(self) -> int: ...
    @property
    def seq(self) -> int: ...
    @property
    def event(self) -> str: ...
    @property
    def run_id(self) -> uuid.UUID: ...
    @property
    def agent(self) -> str: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def data(self) -> Any: ...


def event_frame(event: LoggedEvent) -> EventFrame:
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


# One encoder for every frame: json.dumps with options builds a new one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def encode(message: Any) -> str:
    """Encode a server frame as compact JSON text."""
    return _ENCODER.encode(message)


def event_frame_text(event: LoggedEvent) -> str:
    return encode(event_frame(event))
