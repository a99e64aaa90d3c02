"""One connection's delivery state: each of one user's events once, in seq order.

The channel layer is a hint that an event exists; the log is the truth.
``sent_seq`` is the last seq sent on the connection. A live event at or below
it is a duplicate and is dropped; one past a gap is preceded by the missing
events read from the log. ``catch_up`` sends whatever the log holds beyond
``sent_seq``, which is how a lost layer message or a Redis restart costs at
most one heartbeat.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from channels.db import database_sync_to_async
from django.conf import settings

from . import metrics
from .batching import batched_reader
from .frames import event_frame_text
from .models import Event
from .selectors import EventsAfter, events_after_many, streams_positions

logger = logging.getLogger(__name__)

# Asks answered by one read: each may return a replay batch (WS_REPLAY_BATCH_SIZE events).
EVENTS_AFTER_MAX_ASKS = 100


def _events_after(asks: list[EventsAfter]) -> dict[EventsAfter, list[Event]]:
    return events_after_many(asks=asks)


def _positions(user_ids: list[int]) -> dict[int, tuple[int, int]]:
    return streams_positions(user_ids=user_ids)


# Batched (notifications/batching.py): the replays and catch-ups of every
# connection of a process that read at the same time (a heartbeat round, a
# reconnect storm) are one query and one hop to the thread pool, not one each.
_aevents_after = database_sync_to_async(_events_after, thread_sensitive=False)
_apositions = database_sync_to_async(_positions, thread_sensitive=False)


async def aevents_after(*, user_id: int, after: int, limit: int, batched: bool = True) -> list[Event]:
    """Up to ``limit`` of the user's events with seq above ``after``, in seq order, read after this call.

    Batched, the read waits for the one in progress and shares the next: right
    for a storm of resumes, wrong for the reads live events wait on (a gap, a
    heartbeat's catch-up), whose p99 latency it more than doubled at 2,000
    events/s (bench/RESULTS.md). ``batched=False`` reads at once, side by side
    with others in the thread pool.
    """
    ask = (user_id, after, limit)
    if not batched:
        found: dict[EventsAfter, list[Event]] = await _aevents_after([ask])
        return found[ask]
    reader = batched_reader("events-after", _aevents_after, max_keys=EVENTS_AFTER_MAX_ASKS)
    return await reader.get(ask) or []


async def astream_positions(*, user_id: int) -> tuple[int, int]:
    """The user's newest seq and the highest seq retention deleted (0, 0 with no stream), read after this call."""
    return await batched_reader("stream-positions", _apositions).get(user_id) or (0, 0)


SendText = Callable[[str], Awaitable[bool]]


class ResumeRefused(ValueError):
    """A resume the server will not replay; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class Resumed:
    after: int
    last_seq: int
    count: int
    # Retention deleted some events after ``after``: the replay started at the oldest kept one.
    truncated: bool


class Delivery:
    """Track and send one user's events on one connection.

    ``send_text`` sends a frame and returns False once the connection is
    closing, which stops any replay in progress. All sends of events go
    through ``lock``, so live events, catch-up and resume never interleave.
    """

    def __init__(self, *, user_id: int, send_text: SendText, sent_seq: int) -> None:
        """Start after ``sent_seq``: the user's newest seq when the connection opened."""
        self.user_id = user_id
        self.send_text = send_text
        self.sent_seq = sent_seq
        self.lock = asyncio.Lock()

    async def live(self, *, seq: int, frame: str, created: float | None = None) -> None:
        """Deliver a live event (recorded at ``created``, Unix time), filling any gap before it from the log."""
        async with self.lock:
            if seq <= self.sent_seq:
                return
            if seq > self.sent_seq + 1:
                await self._send_from_log(upto=seq - 1)
                if self.sent_seq != seq - 1:
                    return  # Closing, or the log read came up short; the next catch-up retries.
            if await self.send_text(frame):
                self.sent_seq = seq
                if created is not None:
                    metrics.event_delivered(created_at=created)

    async def catch_up(self) -> int:
        """Send everything the log has beyond ``sent_seq``; return the new ``sent_seq``."""
        async with self.lock:
            await self._send_from_log()
            return self.sent_seq

    async def resume(self, after: int) -> Resumed:
        """Replay every event after ``after``, even ones this connection already sent.

        The client states what it has; the server believes it. Refused when
        ``after`` is past the log's end or the replay would be too long. From
        before the retention window, it replays what is kept and says so.
        """
        async with self.lock:
            last_seq, pruned_seq = await astream_positions(user_id=self.user_id)
            if after > last_seq:
                raise ResumeRefused(f"Cannot resume after {after}: the last event is {last_seq}.")
            limit: int = settings.WS_RESUME_MAX_EVENTS
            # Below pruned_seq only pending events can remain, so this bounds the replay.
            longest = last_seq - max(after, pruned_seq)
            if longest > limit:
                raise ResumeRefused(
                    f"Resuming after {after} would replay {longest} events, more than {limit}; "
                    "load older events from GET /api/events/ and resume from a later seq."
                )
            self.sent_seq = after
            if after == last_seq:
                # Nothing to replay (most of a reconnect storm): a later event comes live, or at the next beat.
                return Resumed(after=after, last_seq=after, count=0, truncated=after < pruned_seq)
            count = await self._send_from_log(replay=True)
            # Read again: a prune that ran during the replay may have taken events from it.
            _, pruned_seq = await astream_positions(user_id=self.user_id)
            return Resumed(after=after, last_seq=self.sent_seq, count=count, truncated=after < pruned_seq)

    async def _send_from_log(self, *, upto: int | None = None, replay: bool = False) -> int:
        """Send the log's events after ``sent_seq`` (up to ``upto``) in batches; return how many.

        Their delivery latency is measured unless this is a ``replay`` (a
        resume asks for events it may have had long ago).
        """
        batch_size: int = settings.WS_REPLAY_BATCH_SIZE
        sent = 0
        while True:
            limit = batch_size if upto is None else min(batch_size, upto - self.sent_seq)
            if limit <= 0:
                return sent
            # A resume's replay shares reads with the others of a storm; a catch-up or a gap before a
            # live event holds the delivery lock, so live events would wait behind the queue: read at once.
            batch = await aevents_after(user_id=self.user_id, after=self.sent_seq, limit=limit, batched=replay)
            for event in batch:
                if not await self.send_text(event_frame_text(event)):
                    return sent
                self.sent_seq = event.seq
                sent += 1
                if not replay:
                    metrics.event_delivered(created_at=event.created_at.timestamp())
            if len(batch) < limit:
                return sent
