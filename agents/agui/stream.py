"""Send one run's AG-UI events from the log, resuming after an SSE id, until the run's terminal event."""

import uuid
from collections.abc import Awaitable, Callable

from channels.db import database_sync_to_async

from notifications.frames import EventFrame, event_frame
from notifications.selectors import events_after

from .events import agui_events, is_terminal
from .sse import ResumePoint, sse_frame, sse_ids

REPLAY_BATCH = 200

_aevents_after = database_sync_to_async(events_after, thread_sensitive=False)


class RunStream:
    """One run's position in its user's log, and the sending of what follows it.

    Every event sent is read from the log by seq, after the last one sent:
    nothing is sent twice or out of order, and a lost live message costs only
    time. The user's seqs commit in order (writers queue on the user's stream
    row), so a read that sees event ``s`` sees every earlier one too.
    """

    def __init__(
        self,
        *,
        user_id: int,
        run_id: uuid.UUID,
        thread_id: str,
        start: ResumePoint,
        send: Callable[[bytes], Awaitable[None]],
    ) -> None:
        self.user_id = user_id
        self.run_id = run_id
        self.thread_id = thread_id
        self.sent_seq = start.after_seq
        self.finished = False
        self._partial = start if start.partial_seq is not None else None
        self._send = send

    async def catch_up(self) -> None:
        """Send every event of the run that the log has above ``sent_seq``, in seq order."""
        while not self.finished:
            events = await _aevents_after(
                user_id=self.user_id, after=self.sent_seq, limit=REPLAY_BATCH, run_id=self.run_id
            )
            for event in events:
                await self._send_event(event_frame(event))
                if self.finished:
                    return
            if len(events) < REPLAY_BATCH:
                return

    async def _send_event(self, frame: EventFrame) -> None:
        group = agui_events(frame, thread_id=self.thread_id)
        ids = sse_ids(frame["seq"], len(group))
        first = 0
        if self._partial is not None:
            # Only the stream's first event can be the one cut in the middle.
            if frame["seq"] == self._partial.partial_seq:
                first = self._partial.skip
            self._partial = None
        chunk = b"".join(sse_frame(sse_id, event) for sse_id, event in zip(ids[first:], group[first:], strict=True))
        if chunk:
            await self._send(chunk)
        self.sent_seq = frame["seq"]
        self.finished = is_terminal(group[-1])
