"""Server-Sent Events framing for AG-UI, and the resume position an SSE id names.

One of our events (seq ``s``) becomes a group of ``n`` AG-UI events. Their
SSE ids are ``s.0``, ``s.1``, … ``s.(n-2)`` and, on the group's last event,
plain ``s``. So a ``Last-Event-ID`` of ``s`` means "everything up to and
including our event ``s``", exactly the WebSocket's ``resume`` ``after``, and
``s.k`` means "event ``s`` up to its AG-UI event ``k``": the resume starts at
``s``'s AG-UI event ``k + 1``. Every AG-UI event is then sent once, even when
a stream is cut in the middle of a group.
"""

import json
import re
from dataclasses import dataclass
from typing import Any

from ..exceptions import RunRefused

SSE_ID = re.compile(r"^(0|[1-9][0-9]{0,18})(?:\.(0|[1-9][0-9]{0,5}))?$")
KEEPALIVE_FRAME = b": keep-alive\n\n"


class InvalidLastEventId(RunRefused):
    code = "invalid_last_event_id"


@dataclass(frozen=True, slots=True)
class ResumePoint:
    """Where a stream resumes: after our event ``after_seq``, then event ``partial_seq`` from AG-UI index ``skip``."""

    after_seq: int
    partial_seq: int | None = None
    skip: int = 0


def resume_point(last_event_id: str | None) -> ResumePoint:
    """Parse a ``Last-Event-ID`` (absent: from the start); raise ``InvalidLastEventId`` if it is not one of ours."""
    if last_event_id is None or last_event_id.strip() == "":
        return ResumePoint(after_seq=0)
    match = SSE_ID.match(last_event_id.strip())
    if match is None:
        raise InvalidLastEventId('Last-Event-ID must be an id this stream sent: "<seq>" or "<seq>.<n>".')
    seq = int(match.group(1))
    if match.group(2) is None:
        return ResumePoint(after_seq=seq)
    return ResumePoint(after_seq=max(seq - 1, 0), partial_seq=seq, skip=int(match.group(2)) + 1)


def sse_ids(seq: int, count: int) -> list[str]:
    """The SSE ids of the ``count`` AG-UI events of our event ``seq``."""
    return [f"{seq}.{index}" for index in range(count - 1)] + [str(seq)]


def sse_frame(event_id: str, payload: Any) -> bytes:
    """Frame one event: its id and its JSON on one ``data:`` line (JSON text has no raw newline)."""
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return f"id: {event_id}\ndata: {text}\n\n".encode()
