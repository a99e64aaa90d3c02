"""Group commit: the events that a process records at the same time are written together.

Each event loop has one ``GroupWriter``. A caller queues its (already
validated) event and waits; a writer task takes everything queued, writes it in
one transaction (every user's seqs in one statement, every row in one
insert), publishes the batch in one round trip, and hands each caller its
row. Whatever queues meanwhile is the next batch, so under load a batch
grows to what one round of the database takes, and alone an event is
written at once: there is no waiting window. A few batches are in flight at
once (``BATCHES_IN_FLIGHT``).

A published batch's outcome (its rows leave the outbox) is written by the
next batch's own transaction, in the same statement as its events: under
load, recording "published" costs no round trip and no commit of its own.
With nothing queued to carry it, the batch's task waits up to
``mark_wait_seconds`` for a caller to queue one (callers it just answered
often write again at once), then records it on its own. Nobody waits for
that: the callers have their rows, an event queued meanwhile wakes the task
at once, and the drainer leaves rows this young alone. A failed publish is
recorded at once (an attempt that backs off).

The writer is a task of its own, so a caller that is cancelled while it
waits cancels nothing: its event is still written and published with the
others (or, if the batch failed, not written at all), and the caller's
``CancelledError`` comes once that is decided, so whatever it writes next
comes after.

Only ``aevent_record`` goes through here. ``aevents_record_if`` (a
condition and its events in one transaction) and ``event_record`` inside
a caller's ``atomic`` stay on their own transactions: their events must
commit or roll back with the caller's own writes, which would otherwise
decide the fate of strangers' events in the same batch.
"""

import asyncio
import logging
import uuid
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .models import Event

logger = logging.getLogger(__name__)

BATCH_MAX_EVENTS = 500
# Batches written at once. One batch's round trips (lock and advance the
# streams, insert, commit, publish, mark) are mostly waiting: with a few in
# flight, the next batch is written while the last one publishes. Batches
# sharing a user take its stream row in turn, so its seqs stay gapless; their
# publishes may cross, which connections repair from the log, as for any two
# writers.
BATCHES_IN_FLIGHT = 4
# How long a cancelled caller waits for its queued event's batch (itself bounded) before it returns.
CANCELLED_WAIT_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class EventFields:
    """One validated event, before it has a seq."""

    user_id: int
    event: str
    run_id: uuid.UUID
    agent: str
    data: dict[str, Any]


WriteBatch = Callable[[list[EventFields], list[uuid.UUID]], Awaitable[list[Event | Exception]]]
PublishBatch = Callable[[list[Event]], Awaitable[str | None]]
RecordOutcome = Callable[[list[Event], str | None], Awaitable[None]]


@dataclass(slots=True)
class _Queued:
    fields: EventFields
    done: "asyncio.Future[Event]"


@dataclass
class GroupWriter:
    """Write queued events in batches, publish each batch, and resolve each caller with its row.

    ``write(fields, published)`` commits a batch and returns, in the same
    order, each event's row or the exception that kept it out (or raises,
    having written nothing); in the same transaction it marks published the
    events of earlier batches that ``published`` names. ``publish`` sends the
    committed rows and returns None or why the send failed (it never raises
    for a layer failure). ``record_outcome`` writes an outcome on its own:
    a failed publish, or published rows that no queued batch will carry.
    Callers are resolved before any of it: the outcome is bookkeeping.
    """

    write: WriteBatch
    publish: PublishBatch
    record_outcome: RecordOutcome
    batches_in_flight: int = BATCHES_IN_FLIGHT
    # How long published marks wait for a batch to carry them before they are written on their own.
    mark_wait_seconds: float = 0.0
    queue: list[_Queued] = field(default_factory=list)
    tasks: "set[asyncio.Task[None]]" = field(default_factory=set)
    # One future per batch recording its outcome (its callers already returned), done when it is recorded.
    recording: "set[asyncio.Future[None]]" = field(default_factory=set)
    # Published batches whose outcome the next write carries, each with its ``recording`` future.
    published: "list[_Published]" = field(default_factory=list)
    # Set when an event is queued or the marks are wanted now; a task waiting with marks wakes on it.
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    flushing: bool = False

    async def record(self, fields: EventFields) -> Event:
        """Queue one event; return its row once it is committed and published (or its publish failed)."""
        loop = asyncio.get_running_loop()
        queued = _Queued(fields, loop.create_future())
        self.queue.append(queued)
        self.wake.set()
        if len(self.tasks) < self.batches_in_flight:
            task = loop.create_task(self._run(), name="event-group-writer")
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        try:
            # Shielded: cancelling one caller must not cancel the batch it shares with others.
            return await asyncio.shield(queued.done)
        except asyncio.CancelledError:
            # The event is written all the same: the cancelled caller returns once it is, so that
            # nothing it writes next (a run's end, say, in a transaction of its own) can overtake it.
            await asyncio.wait([queued.done], timeout=CANCELLED_WAIT_SECONDS)
            raise

    async def _run(self) -> None:
        while self.queue:
            batch, self.queue = self.queue[:BATCH_MAX_EVENTS], self.queue[BATCH_MAX_EVENTS:]
            await self._batch(batch)

    async def _batch(self, batch: list[_Queued]) -> None:
        marks, self.published = self.published, []
        try:
            results = await self.write(
                [queued.fields for queued in batch], [row.id for mark in marks for row in mark.rows]
            )
        except BaseException as exc:
            # Nothing of the batch was written, nor its marks: each caller gets the error.
            for queued in batch:
                _settle(queued.done, exc)
            if not isinstance(exc, Exception):
                _recorded(marks)  # Cancelled at shutdown: they stay pending, sent again by the drainer.
                raise
            self.published[:0] = marks  # Carried by the next write, or recorded below.
            await self._record_published_unless_queued()
            return
        _recorded(marks)
        rows = [result for result in results if isinstance(result, Event)]
        try:
            reason = await self.publish(rows) if rows else None
        except Exception:
            # Written, maybe not published: the rows stay pending, and the drainer sends them.
            logger.exception("Publishing a batch of %d events failed; they stay pending", len(rows))
            rows = []
        finally:
            for queued, result in zip(batch, results, strict=True):
                _settle(queued.done, result)
        if rows and reason is None:
            self.published.append(self._recording(rows))
        elif rows:
            await self._record([self._recording(rows)], reason)
        await self._record_published_unless_queued()

    async def outcomes_recorded(self, *, timeout_seconds: float) -> None:
        """Wait until the outcomes being recorded now are written; marks waiting for a batch are written at once.

        Raises ``TimeoutError`` past ``timeout_seconds``.
        """
        if not self.recording:
            return
        self.flushing = True  # Tasks waiting with marks stop waiting (shutdown is not to wait for them).
        self.wake.set()
        try:
            async with asyncio.timeout(timeout_seconds):
                await asyncio.wait(set(self.recording))
        finally:
            self.flushing = False

    async def _record_published_unless_queued(self) -> None:
        """Unless a batch is queued (or is queued within ``mark_wait_seconds``) to carry them, record the marks now."""
        if not self.queue and self.published and not self.flushing:
            self.wake.clear()
            try:
                async with asyncio.timeout(self.mark_wait_seconds):
                    await self.wake.wait()
            except TimeoutError:
                pass  # Nothing came to carry them.
        if self.queue or not self.published:
            return  # This task's next batch carries them (it takes the queue before anything else can run).
        marks, self.published = self.published, []
        await self._record(marks, None)

    def _recording(self, rows: list[Event]) -> "_Published":
        recorded = asyncio.get_running_loop().create_future()
        self.recording.add(recorded)
        recorded.add_done_callback(self.recording.discard)
        return _Published(rows, recorded)

    async def _record(self, marks: "list[_Published]", reason: str | None) -> None:
        try:
            # Not recorded (this task cancelled at shutdown, say): they stay pending, sent again by the drainer.
            await self.record_outcome([row for mark in marks for row in mark.rows], reason)
        finally:
            _recorded(marks)


@dataclass(slots=True)
class _Published:
    rows: list[Event]
    recorded: "asyncio.Future[None]"


def _recorded(marks: "list[_Published]") -> None:
    for mark in marks:
        if not mark.recorded.done():
            mark.recorded.set_result(None)


def _settle(done: "asyncio.Future[Event]", result: Event | BaseException) -> None:
    if done.done():
        return
    if isinstance(result, Event):
        done.set_result(result)
    elif isinstance(result, Exception):
        done.set_exception(result)
        # A caller cancelled meanwhile never reads it; retrieve it so it is not reported as lost.
        done.exception()
    else:
        done.cancel()


_writers: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, GroupWriter]" = weakref.WeakKeyDictionary()


def group_writer(
    *, write: WriteBatch, publish: PublishBatch, record_outcome: RecordOutcome, mark_wait_seconds: float = 0.0
) -> GroupWriter:
    """The running loop's writer (made on first use)."""
    loop = asyncio.get_running_loop()
    writer = _writers.get(loop)
    if writer is None:
        writer = _writers[loop] = GroupWriter(
            write=write, publish=publish, record_outcome=record_outcome, mark_wait_seconds=mark_wait_seconds
        )
    return writer
