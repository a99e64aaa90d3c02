"""Record lifecycle events in the log and publish them to their user's group.

This module is the only place that writes events or calls ``group_send``.
The log is the source of truth; the channel layer is a fast hint to live
connections, which fill any gap from the log themselves.
"""

import asyncio
import logging
import time
import uuid
import weakref
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import Any

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import F
from django.utils import timezone

from . import metrics, pgwrite
from .exceptions import DATABASE_UNAVAILABLE, InvalidEventData, InvalidEventType, InvalidJson
from .frames import LayerEventMessage, LoggedEvent, event_frame_text
from .groupcommit import EventFields, GroupWriter, group_writer
from .jsonlimits import json_encoded_size
from .layers import pubsub_publish_many
from .models import Event, EventType, PendingEvent, Stream

logger = logging.getLogger(__name__)

PUBLISH_TIMEOUT_SECONDS = 5.0
# How long closing a loop's connections waits for the publish outcomes being recorded.
CLOSE_OUTCOMES_SECONDS = 2.0
LAST_ERROR_MAX_CHARS = 500
AGENT_NAME_MAX_CHARS = 100
SHOWN_MAX_CHARS = 60


# Writes run in the thread pool, not in the one thread that Django's
# thread-sensitive calls share: each commit waits for the WAL flush, and
# writes queued behind one another on a single connection cap a process at
# one flush at a time (about 180 events/s measured on PostgreSQL here).
# Concurrent events of ``aevent_record`` share a transaction (groupcommit),
# and a few such batches are in flight at once. Each user's writers still
# queue on that user's Stream row, so seqs stay gapless; publishes may then
# reach the layer out of order, which connections repair from the log.
adb_write = partial(database_sync_to_async, thread_sensitive=False)


def user_group_name(user_id: int) -> str:
    """Name the channel-layer group that reaches every connection of one user."""
    return f"user.{int(user_id)}"


def event_record(*, user_id: int, event: str, run_id: uuid.UUID | str, agent: str, data: dict[str, Any]) -> Event:
    """Write the event to the log, then publish it once the transaction commits.

    Inside an outer ``atomic`` block the publish waits for the outer commit, so
    a rolled-back event is never sent. A failed publish leaves the event
    pending for ``drain_events`` and never raises here.
    """
    record = _event_write(user_id=user_id, event=event, run_id=run_id, agent=agent, data=data)
    transaction.on_commit(partial(metrics.events_recorded, 1))
    transaction.on_commit(partial(event_publish, event=record))
    return record


async def aevent_record(
    *, user_id: int, event: str, run_id: uuid.UUID | str, agent: str, data: dict[str, Any]
) -> Event:
    """Async twin of :func:`event_record`: write, commit, then publish; return once all that is done.

    Concurrent calls in one process share one transaction and one publish
    round trip (``groupcommit``); a bad event is refused here, before it
    joins anyone's batch. Raises ``DatabaseError`` if the event was not written.
    The publish's outcome (published, or a failed attempt) is recorded just
    after the call returns: ``aevents_outcomes_recorded`` waits for it.
    """
    run_uuid = _event_validate(event=event, run_id=run_id, agent=agent, data=data)
    return await _group_writer().record(
        EventFields(user_id=int(user_id), event=event, run_id=run_uuid, agent=agent, data=data)
    )


async def aevents_outcomes_recorded(*, timeout_seconds: float = 5.0) -> None:
    """Wait until the publish outcomes this loop is recording now are written (tests, and a command about to exit).

    Raises ``TimeoutError`` past ``timeout_seconds``; events whose outcome is
    not recorded stay pending, and the drainer sends them again.
    """
    await _group_writer().outcomes_recorded(timeout_seconds=timeout_seconds)


def _group_writer() -> GroupWriter:
    """The running loop's group writer, for ``aevent_record``."""
    return group_writer(
        write=_aevents_write,
        publish=_aevents_publish,
        record_outcome=_aevents_record_outcome,
        mark_wait_seconds=settings.EVENT_OUTBOX_MARK_WAIT_MS / 1000,
    )


async def aevents_record_if(
    *,
    condition: Callable[[], bool],
    user_id: int,
    run_id: uuid.UUID | str,
    agent: str,
    events: Sequence[tuple[str, dict[str, Any]]],
) -> list[Event]:
    """Run ``condition`` and write the events in one transaction, then publish them in order.

    ``condition`` runs first, inside the transaction (for example, a
    conditional update that claims a state change); when it returns False
    nothing is written and the list is empty. This is how a caller makes
    "change my state and log these events" atomic.
    """

    def write() -> list[Event]:
        with transaction.atomic():
            if not condition():
                return []
            return [
                _event_write(user_id=user_id, event=event, run_id=run_id, agent=agent, data=data)
                for event, data in events
            ]

    try:
        records: list[Event] = await adb_write(write)()
    except DATABASE_UNAVAILABLE:
        metrics.database_error(operation="record")
        raise
    metrics.events_recorded(len(records))
    for record in records:
        await aevent_publish(event=record)
    return records


def event_publish(*, event: Event) -> bool:
    """Publish one newly logged event; return whether the layer accepted it."""
    return bool(async_to_sync(aevent_publish)(event=event))


async def aevent_publish(*, event: Event) -> bool:
    """Publish one newly logged event to its user's group and mark it published.

    Any failure of the layer is logged and recorded as the event's first
    failed attempt, and it stays pending; it is never raised to the caller.
    """
    reason = await aevent_send(event=event)
    if reason is not None:
        await _amark(_events_mark_failed, event_ids=[event.id], attempts=1, reason=reason)
        return False
    await _amark_published(event_id=event.id)
    return True


async def aevent_send(*, event: Event, timeout_seconds: float = PUBLISH_TIMEOUT_SECONDS) -> str | None:
    """Send one logged event to its user's group; return None, or why it failed. Never raises."""
    return await aevents_send(events=[event], timeout_seconds=timeout_seconds)


async def aevents_send(
    *, events: Sequence[LoggedEvent], timeout_seconds: float = PUBLISH_TIMEOUT_SECONDS
) -> str | None:
    """Send logged events to their users' groups, in order; return None, or why it failed. Never raises.

    On the pub/sub layer they go in one pipelined round trip per Redis
    server; on the others, one ``group_send`` each. A failure means any of
    them may or may not have been sent: they stay pending, and a second
    send is dropped by connections as a duplicate.
    """
    messages = [(user_group_name(event.user_id), _layer_message(event)) for event in events]
    layer = get_channel_layer()
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout_seconds):
            if not await pubsub_publish_many(layer, messages):
                for group, message in messages:
                    await layer.group_send(group, message)
    except Exception as exc:  # Any layer backend error: the events stay pending.
        metrics.events_sent(count=len(events), failed=True, started=started)
        reason = f"{type(exc).__name__}: {exc}"[:LAST_ERROR_MAX_CHARS]
        first = events[0]
        logger.warning(
            "Publish failed for %d event(s) from %s (user %s, seq %s), left pending: %s",
            len(events),
            first.id,
            first.user_id,
            first.seq,
            reason,
        )
        return reason
    metrics.events_sent(count=len(events), failed=False, started=started)
    return None


def _layer_message(event: LoggedEvent) -> LayerEventMessage:
    return {
        "type": "notification.event",
        "user_id": event.user_id,
        "seq": event.seq,
        "frame": event_frame_text(event),
        "created": event.created_at.timestamp(),
    }


async def alayer_ping(*, timeout_seconds: float) -> None:
    """Publish to a group nobody is in, the path events take; raise if the layer is down."""
    layer = get_channel_layer()
    await asyncio.wait_for(
        layer.group_send(f"healthz.{uuid.uuid4().hex}", {"type": "healthz.ping"}), timeout=timeout_seconds
    )


async def alayer_close() -> None:
    """Close this event loop's channel-layer connections (before a command's loop ends).

    channels-redis pools belong to the loop that opened them. The core
    layer's ``flush`` would delete everything in Redis, so it gets
    ``close_pools``; the pub/sub layer's ``flush`` only closes connections.
    """
    layer = get_channel_layer()
    close_pools = getattr(layer, "close_pools", None)
    if close_pools is not None:
        await close_pools()
    elif hasattr(layer, "_get_layer"):
        await layer.flush()


async def aconnections_close() -> None:
    """Close this event loop's connections: the channel layer's and the event writer's (before the loop ends).

    Batches still recording their publish outcome finish first (within 5 s).
    """
    try:
        await aevents_outcomes_recorded(timeout_seconds=CLOSE_OUTCOMES_SECONDS)
    except TimeoutError:
        logger.warning("Publish outcomes still being recorded at close; those events stay pending for the drainer")
    try:
        await alayer_close()
    finally:
        await pgwrite.aclose()


def stream_ack(*, user_id: int, seq: int) -> None:
    """Record that the user has everything up to ``seq``; never moves backwards."""
    Stream.objects.filter(user_id=user_id, acked_seq__lt=seq).update(acked_seq=seq)


# EventType.values builds its list on every use (about 4 µs, once per recorded event).
_EVENT_TYPES = frozenset(EventType.values)


def _event_validate(*, event: str, run_id: uuid.UUID | str, agent: str, data: object) -> uuid.UUID:
    if event not in _EVENT_TYPES:
        raise InvalidEventType(f"Unknown event {_shown(event)}; expected one of {', '.join(EventType.values)}.")
    if not isinstance(agent, str) or not agent or len(agent) > AGENT_NAME_MAX_CHARS:
        raise InvalidEventData(f"agent must be a non-empty string of at most {AGENT_NAME_MAX_CHARS} characters.")
    if not _text_storable(agent):
        raise InvalidEventData("agent must be text every database can store: no NUL, no lone surrogate.")
    if not isinstance(data, dict):
        raise InvalidEventData(f"data must be a JSON object, got {type(data).__name__}.")
    try:
        size = json_encoded_size(data, max_depth=settings.EVENT_DATA_MAX_DEPTH)
    except InvalidJson as exc:
        raise InvalidEventData(f"data must be JSON: {exc}") from None
    if size > settings.EVENT_DATA_MAX_BYTES:
        raise InvalidEventData(f"data must be at most {settings.EVENT_DATA_MAX_BYTES} bytes as JSON.")
    try:
        return run_id if isinstance(run_id, uuid.UUID) else uuid.UUID(str(run_id))
    except ValueError:
        raise InvalidEventData(f"run_id must be a UUID, got {_shown(run_id)}.") from None


def _shown(value: object) -> str:
    """Describe a refused value in an error message: a string's start, else its type.

    Never the whole value: a megabyte name would make a megabyte message, and
    repr() of an int of more than 4,300 digits raises ValueError.
    """
    if isinstance(value, str):
        return repr(value[:SHOWN_MAX_CHARS]) + ("..." if len(value) > SHOWN_MAX_CHARS else "")
    return f"<{type(value).__name__}>"


def _text_storable(text: str) -> bool:
    """Whether both backends can store ``text``: PostgreSQL refuses NUL, and UTF-8 cannot carry a lone surrogate."""
    if "\x00" in text:
        return False
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


async def _aevents_write(batch: list[EventFields], published: list[uuid.UUID]) -> list[Event | Exception]:
    """Write a batch in one transaction, in order, marking ``published`` with it; return each event's row, or why not.

    If the database refuses the batch (rather than being unreachable), the
    marks are recorded on their own and each event is written alone, so that
    one it refuses fails only its own caller.
    """
    try:
        results: list[Event | Exception] = list(await _aevents_insert(batch, published))
    except DATABASE_UNAVAILABLE:
        metrics.database_error(operation="record")
        raise
    except DatabaseError:
        if len(batch) == 1:
            raise
        logger.warning("The database refused a batch of %d events; writing them one by one", len(batch), exc_info=True)
        await _arecord_published(event_ids=published)
        results = []
        for fields in batch:
            try:
                results.extend(await _aevents_insert([fields], []))
            except Exception as exc:  # This event's own failure, for its caller.
                results.append(exc)
    metrics.events_recorded(sum(1 for result in results if isinstance(result, Event)))
    return results


async def _aevents_insert(batch: list[EventFields], published: list[uuid.UUID]) -> list[Event]:
    """Write a whole batch in one transaction, and mark ``published`` in it; or nothing (and raise).

    On PostgreSQL on the event loop's own connections (``pgwrite``: no
    thread, one round trip); elsewhere through the ORM in the thread pool.
    """
    if connection.vendor == "postgresql":
        return await pgwrite.aevents_insert(batch, now=timezone.now(), published=published)
    rows: list[Event] = await adb_write(_events_insert)(batch, published)
    return rows


def _events_insert(batch: list[EventFields], published: list[uuid.UUID]) -> list[Event]:
    """The ORM's batch (SQLite): one IMMEDIATE transaction, which holds the database's write lock.

    Earlier batches' ``published`` events leave the outbox; each user's
    stream advances by their count in one statement (made first if it is the
    user's first event); then one multi-row insert.
    """
    counts = Counter(fields.user_id for fields in batch)
    now = timezone.now()
    with transaction.atomic():
        if published:
            _events_mark_published(event_ids=published)
        last = {user_id: head - counts[user_id] for user_id, head in _streams_advance(counts).items()}
        rows = []
        for fields in batch:
            last[fields.user_id] += 1
            rows.append(
                Event(
                    user_id=fields.user_id,
                    seq=last[fields.user_id],
                    event=fields.event,
                    run_id=fields.run_id,
                    agent=fields.agent,
                    data=fields.data,
                    created_at=now,
                )
            )
        Event.objects.bulk_create(rows)
        PendingEvent.objects.bulk_create(_outbox_rows(rows))
    return rows


def _outbox_rows(rows: Sequence[Event]) -> list[PendingEvent]:
    # By id: assigning the event would cache the outbox row on it, stale once it is published.
    return [PendingEvent(event_id=row.id, user_id=row.user_id, seq=row.seq, created_at=row.created_at) for row in rows]


async def _aevents_publish(rows: list[Event]) -> str | None:
    """Publish a committed batch; return None, or why it failed."""
    return await aevents_send(events=rows)


async def _aevents_record_outcome(rows: list[Event], reason: str | None) -> None:
    """Record a batch's publish in one statement: published, or a failed attempt that backs off."""
    ids = [row.id for row in rows]
    if reason is None:
        await _arecord_published(event_ids=ids)
    elif connection.vendor == "postgresql":
        next_attempt_at = timezone.now() + timedelta(seconds=publish_backoff_seconds(1))
        await _amark(pgwrite.aevents_mark_failed, event_ids=ids, reason=reason, next_attempt_at=next_attempt_at)
    else:
        await _amark(_events_mark_failed, event_ids=ids, attempts=1, reason=reason)


async def _arecord_published(*, event_ids: list[uuid.UUID]) -> None:
    """Mark sent events published in one statement (a failure is logged: they stay pending)."""
    if not event_ids:
        return
    if connection.vendor == "postgresql":
        await _amark(pgwrite.aevents_mark_published, event_ids=event_ids)
    else:
        await _amark(_events_mark_published, event_ids=event_ids)


def _event_write(*, user_id: int, event: str, run_id: uuid.UUID | str, agent: str, data: dict[str, Any]) -> Event:
    run_uuid = _event_validate(event=event, run_id=run_id, agent=agent, data=data)
    with transaction.atomic():
        seq = _stream_next_seq(user_id=user_id)
        record = Event.objects.create(
            user_id=user_id,
            seq=seq,
            event=event,
            run_id=run_uuid,
            agent=agent,
            data=data,
            created_at=timezone.now(),
        )
        PendingEvent.objects.bulk_create(_outbox_rows([record]))
    return record


def _stream_next_seq(*, user_id: int) -> int:
    """Take the user's next seq; the caller's transaction holds the row lock until commit.

    On PostgreSQL the UPDATE locks the stream row, so concurrent writers for
    one user queue behind it; on SQLite the IMMEDIATE transaction already
    holds the database write lock. A rollback returns the number, so seqs
    have no gaps.
    """
    seq = _stream_increment(user_id)
    if seq is None:  # The user's first event: make the row, then take 1.
        Stream.objects.bulk_create([Stream(user_id=user_id)], ignore_conflicts=True)
        seq = _stream_increment(user_id)
    assert seq is not None
    return seq


def _stream_increment(user_id: int, by: int = 1) -> int | None:
    """Add ``by`` to the user's last_seq and return it, in one statement (None if there is no row yet)."""
    with connection.cursor() as cursor:
        # UPDATE ... RETURNING: PostgreSQL, and SQLite since 3.35. Django's update() cannot return.
        cursor.execute(
            f"UPDATE {_stream_table()} SET last_seq = last_seq + %s WHERE user_id = %s RETURNING last_seq",  # noqa: S608
            [by, user_id],
        )
        row = cursor.fetchone()
    return int(row[0]) if row else None


def _streams_advance(counts: Mapping[int, int]) -> dict[int, int]:
    """Add each user's count to their last_seq (making the row first if needed); return the new last_seqs.

    The caller's transaction holds the rows (on SQLite, the database's write lock).
    """
    heads = {user_id: _stream_increment(user_id, counts[user_id]) for user_id in sorted(counts)}
    for user_id in [user_id for user_id, head in heads.items() if head is None]:
        Stream.objects.bulk_create([Stream(user_id=user_id)], ignore_conflicts=True)
        heads[user_id] = _stream_increment(user_id, counts[user_id])
    return {user_id: int(head) for user_id, head in heads.items() if head is not None}


def _stream_table() -> str:
    return connection.ops.quote_name(Stream._meta.db_table)


def _events_mark_published(*, event_ids: list[uuid.UUID]) -> None:
    PendingEvent.objects.filter(pk__in=event_ids).delete()


@dataclass
class _PendingMarks:
    """Event ids published on one event loop and not yet marked, and the lock whose holder marks them."""

    ids: set[uuid.UUID] = field(default_factory=set)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


_pending_marks: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _PendingMarks]" = weakref.WeakKeyDictionary()


async def _amark_published(*, event_id: uuid.UUID) -> None:
    """Mark a sent event published, in one UPDATE with every other event sent meanwhile.

    Whoever gets the lock writes all the ids queued so far; those waiting
    behind it find theirs already written and return. Under load one write
    covers many events (a group commit); alone, an event is marked at once.
    Returns once this event's mark is written (or its failure logged).
    """
    marks = _pending_marks.setdefault(asyncio.get_running_loop(), _PendingMarks())
    marks.ids.add(event_id)
    async with marks.lock:
        if event_id not in marks.ids:
            return  # An earlier holder of the lock wrote it.
        ids = list(marks.ids)
        marks.ids.clear()
        try:
            await _amark(_events_mark_published, event_ids=ids)
        except BaseException:
            # Cancelled mid-write (a run cancelled at shutdown, say): put the ids
            # back for the next holder, or the events would stay pending for nothing.
            marks.ids.update(ids)
            raise


def _events_mark_failed(*, event_ids: list[uuid.UUID], attempts: int, reason: str) -> None:
    """Count a failed publish and set when the drainer may try again (exponential backoff).

    ``attempts`` is the count after this failure, the same for every event given.
    """
    PendingEvent.objects.filter(pk__in=event_ids).update(
        publish_attempts=F("publish_attempts") + 1,
        last_error=reason,
        next_attempt_at=timezone.now() + timedelta(seconds=publish_backoff_seconds(attempts)),
    )


def publish_backoff_seconds(attempts: int) -> float:
    """How long to wait after the ``attempts``-th failed publish of an event."""
    base: float = settings.DRAIN_BACKOFF_BASE_SECONDS
    cap: float = settings.DRAIN_BACKOFF_MAX_SECONDS
    return float(min(cap, base * 2 ** max(0, min(attempts - 1, 30))))


async def _amark(func: Any, **kwargs: Any) -> None:
    """Run a bookkeeping write (a sync one in the thread pool); a failure is logged, never raised.

    The event itself is already committed: losing this write at worst leaves
    it pending, and ``drain_events`` publishes it again, which connections
    de-duplicate by seq.
    """
    events = kwargs.get("event_id", kwargs.get("event_ids"))
    try:
        if asyncio.iscoroutinefunction(func):
            await func(**kwargs)
        else:
            await adb_write(func)(**kwargs)
    except DatabaseError as exc:  # The database is down; the drainer will retry.
        metrics.database_error(operation="publish_outcome")
        logger.warning("Could not record the publish outcome of event(s) %s: %s", events, exc)
    except Exception:
        logger.exception("Could not record the publish outcome of event(s) %s", events)
