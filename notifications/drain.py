"""Publish pending events: the drainer's unit of work.

A batch goes in three steps, and no database transaction stays open while
Redis is talked to:

1. Claim: in one short transaction, pick users with eligible pending events
   and lease them: their stream row's ``drain_leased_until``, one write per
   user, not per event. On PostgreSQL the stream rows are taken with
   ``SELECT ... FOR UPDATE SKIP LOCKED``, so concurrent drainers never pick
   the same user; on SQLite the IMMEDIATE transaction serialises the picks.
   A leased user is left to the drainer holding it until it records the
   batch or the lease ends.
2. Send, outside any transaction: the batch in (user, seq) order, in one
   command per Redis server, and recorded as sent or failed whole;
   nothing is sent once the drainer is asked to stop or runs out of time.
3. Record, in a second short transaction: sent events leave the outbox
   (only those), failed ones count an attempt and back off, and the users'
   leases end.

Pending events are the outbox's rows (``PendingEvent``), so a claim reads
that narrow table and the event rows it names, and recording a batch
deletes outbox rows: the log itself is never updated.

If a drainer dies mid-batch, its lease runs out and another drainer takes
the events again; any it had already sent are sent twice, and connections
drop the duplicates by seq. Nothing is lost and nothing is marked published
without having been sent.
"""

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from channels.db import database_sync_to_async
from django.db import connection, transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from . import metrics
from .models import Event, PendingEvent, Stream
from .services import aevents_send, publish_backoff_seconds

# Each batch's transactions in a thread of the pool (with a connection of its own), so batches in
# progress at once (``drain_events --concurrency``) are written side by side.
_adb = partial(database_sync_to_async, thread_sensitive=False)
SEND_TIMEOUT_SECONDS = 2.0
LEASE_SECONDS = 60.0
# Sends stop starting after this much of the lease, so the batch is recorded
# well before another drainer could take the same events.
SEND_BUDGET_SECONDS = LEASE_SECONDS / 2


@dataclass(slots=True)
class BatchResult:
    published: int = 0
    failed: int = 0
    released: int = 0
    failed_ids: list[uuid.UUID] = field(default_factory=list)

    @property
    def claimed(self) -> int:
        return self.published + self.failed + self.released


def pending_eligible(
    *, min_age_seconds: float, backoff: bool = True, exclude: Collection[uuid.UUID] = ()
) -> "QuerySet[PendingEvent]":
    """Outbox rows a drainer may take now: old enough, not leased, not backing off.

    ``backoff=False`` ignores the retry times (a one-off drain tries every
    pending event once); ``exclude`` leaves out events already tried.
    Stuck events (past the attempt limit) are still tried, at the longest
    backoff: being reported as stuck does not stop their delivery.
    """
    now = timezone.now()
    events = PendingEvent.objects.filter(created_at__lte=now - timedelta(seconds=min_age_seconds)).exclude(
        user_id__in=streams_leased(now=now)
    )
    if backoff:
        events = events.filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
    if exclude:
        events = events.exclude(pk__in=list(exclude))
    return events


def streams_leased(*, now: datetime) -> "QuerySet[Stream, Any]":
    """The users (``user_id``) whose pending events a drainer holds right now."""
    return Stream.objects.filter(drain_leased_until__gte=now).values("user_id")


def pending_counts(*, max_attempts: int) -> tuple[int, int]:
    """Return (still pending, of which stuck at or past ``max_attempts``)."""
    return PendingEvent.objects.count(), PendingEvent.objects.filter(publish_attempts__gte=max_attempts).count()


@dataclass(frozen=True, slots=True)
class Claimed:
    """A claimed event: what sending it and recording the outcome need, lighter than a model instance."""

    id: uuid.UUID
    user_id: int
    seq: int
    event: str
    run_id: uuid.UUID
    agent: str
    created_at: datetime
    data: Any
    publish_attempts: int


# Claimed's fields in its order, from the outbox row and the event it names.
_CLAIMED_FIELDS = (
    "event_id",
    "user_id",
    "seq",
    "event__event",
    "event__run_id",
    "event__agent",
    "created_at",
    "event__data",
    "publish_attempts",
)


def events_claim(
    *, batch_size: int, min_age_seconds: float, backoff: bool = True, exclude: Collection[uuid.UUID] = ()
) -> list[Claimed]:
    """Lease up to ``batch_size`` eligible events, the oldest first; return them in (user, seq) order.

    One ordered walk of the outbox's (created_at, user, seq) index reads the
    batch with its events' data. Then the users' stream rows are locked,
    skipping those another drainer is claiming, and leased: one user's events
    never go out from two drainers at once, so they stay in seq order on the
    wire. Rows that left the outbox while they were being locked (another
    drainer sent them meanwhile) are dropped, so nothing is sent twice.
    """
    now = timezone.now()
    with transaction.atomic():
        eligible = pending_eligible(min_age_seconds=min_age_seconds, backoff=backoff, exclude=exclude)
        oldest = [
            Claimed(*row)
            for row in eligible.order_by("created_at", "user_id", "seq").values_list(*_CLAIMED_FIELDS)[:batch_size]
        ]
        # Lock the users' stream rows; another drainer claiming now skips them.
        locked = set(
            Stream.objects.select_for_update(skip_locked=True)
            .filter(user_id__in=sorted({event.user_id for event in oldest}))
            .exclude(drain_leased_until__gte=now)
            .values_list("user_id", flat=True)
        )
        mine = [event for event in oldest if event.user_id in locked]
        still = _still_pending([event.id for event in mine])
        claimed = sorted((event for event in mine if event.id in still), key=lambda event: (event.user_id, event.seq))
        if claimed:
            leased = sorted({event.user_id for event in claimed})
            Stream.objects.filter(user_id__in=leased).update(drain_leased_until=now + timedelta(seconds=LEASE_SECONDS))
    return claimed


def _still_pending(ids: list[uuid.UUID]) -> set[uuid.UUID]:
    """Which of these events are still in the outbox."""
    if not ids:
        return set()
    if connection.vendor != "postgresql":
        return set(PendingEvent.objects.filter(pk__in=ids).values_list("pk", flat=True))
    return {row[0] for row in _outbox_by_ids("SELECT event_id FROM {table}", ids)}


def events_record(*, users: list[int], sent: list[uuid.UUID], failed: dict[uuid.UUID, tuple[int, str]]) -> None:
    """Record a batch's outcome and end its users' lease; ``failed`` maps an event to (attempts so far, reason)."""
    now = timezone.now()
    with transaction.atomic():
        _events_mark_sent(sent)
        # One statement per (attempts, reason): a whole batch that failed together is one.
        alike: dict[tuple[int, str], list[uuid.UUID]] = {}
        for pk, outcome in failed.items():
            alike.setdefault(outcome, []).append(pk)
        for (attempts, reason), pks in alike.items():
            PendingEvent.objects.filter(pk__in=pks).update(
                publish_attempts=F("publish_attempts") + 1,
                last_error=reason,
                next_attempt_at=now + timedelta(seconds=publish_backoff_seconds(attempts + 1)),
            )
        Stream.objects.filter(user_id__in=users).update(drain_leased_until=None)


def _events_mark_sent(ids: list[uuid.UUID]) -> None:
    """Mark events published: their rows leave the outbox."""
    if connection.vendor != "postgresql":
        PendingEvent.objects.filter(pk__in=ids).delete()
        return
    _outbox_by_ids("DELETE FROM {table}", ids)


def _outbox_by_ids(statement: str, ids: list[uuid.UUID]) -> list[tuple[Any, ...]]:
    """Run ``statement`` (``{table}`` is the outbox) on the rows of ``ids``, on PostgreSQL; return any rows.

    The ids go as one array bound by the server, on psycopg's own cursor of
    this transaction's connection: a thousand quoted one by one into the
    ORM's ``IN (...)`` cost more of the drainer's time than the statement.
    """
    table = connection.ops.quote_name(PendingEvent._meta.db_table)
    connection.ensure_connection()
    with connection.connection.cursor() as cursor:
        cursor.execute(statement.format(table=table) + " WHERE event_id = ANY(%s::uuid[])", [ids])
        return cursor.fetchall() if cursor.description is not None else []


async def adrain_batch(
    *,
    batch_size: int,
    min_age_seconds: float,
    backoff: bool = True,
    exclude: Collection[uuid.UUID] = (),
    stop: asyncio.Event | None = None,
    on_claimed: Callable[[int], None] | None = None,
    claiming: asyncio.Lock | None = None,
) -> BatchResult:
    """Claim, send and record one batch (see the module docstring).

    Batches of one process in progress at once share ``claiming``: one claim
    at a time, each seeing the leases of those before it, while the others
    send and record. (Claims of separate processes skip each other's users
    instead, and may come back short.)
    """
    async with claiming or contextlib.nullcontext():
        claimed: list[Claimed] = await _adb(events_claim)(
            batch_size=batch_size, min_age_seconds=min_age_seconds, backoff=backoff, exclude=exclude
        )
    result = BatchResult()
    if not claimed:
        return result
    if on_claimed is not None:
        on_claimed(len(claimed))
    # None: sent; a string: why the send failed; absent: not tried.
    outcomes = await _send_all(claimed, stop=stop, deadline=time.monotonic() + SEND_BUDGET_SECONDS)
    sent = [event.id for event in claimed if event.id in outcomes and outcomes[event.id] is None]
    unsent = [event.id for event in claimed if event.id not in outcomes]
    failed = {
        event.id: (event.publish_attempts, reason)
        for event in claimed
        if (reason := outcomes.get(event.id)) is not None
    }
    users = sorted({event.user_id for event in claimed})
    await _adb(events_record)(users=users, sent=sent, failed=failed)
    result.published, result.failed, result.released = len(sent), len(failed), len(unsent)
    metrics.drain_batch(published=result.published, failed=result.failed)
    result.failed_ids = list(failed)
    return result


async def _send_all(
    events: list[Claimed], *, stop: asyncio.Event | None, deadline: float
) -> dict[uuid.UUID, str | None]:
    """Send the batch in (user, seq) order, in one pipelined round trip per Redis server.

    It succeeds or fails whole: after a failure any of it may have gone out,
    so all of it is retried (connections drop what they already have), and
    no event of a user is ever recorded as sent after one of theirs that
    was not.
    """
    if (stop is not None and stop.is_set()) or time.monotonic() > deadline:
        return {}
    reason = await aevents_send(events=events, timeout_seconds=SEND_TIMEOUT_SECONDS)
    return dict.fromkeys((event.id for event in events), reason)


@dataclass(frozen=True, slots=True)
class RequeueResult:
    requeued: int
    leased: int  # held by a drainer: left to it
    over_limit: bool  # more matched than the limit allows


REQUEUE_CHUNK = 1000


def events_requeue(*, events: "QuerySet[Event]", limit: int) -> RequeueResult:
    """Put up to ``limit`` events back in the queue for ``drain_events``, in short transactions.

    Published events go back into the outbox and are sent again
    (connections and clients drop what they already have, by seq); stuck
    ones start over with no backoff. Pending events a drainer holds right
    now are left alone: it records their outcome itself, and a reset under
    it would be overwritten.
    """
    leased = Q(pending__isnull=False, user_id__in=streams_leased(now=timezone.now()))
    # Counted first: what this re-queues for a leased user is pending afterwards, for the next claim.
    held = events.filter(leased).count()
    ids = list(events.exclude(leased).order_by().values_list("pk", flat=True)[: limit + 1])
    over_limit = len(ids) > limit
    ids = ids[:limit]
    requeued = 0
    for start in range(0, len(ids), REQUEUE_CHUNK):
        chunk = ids[start : start + REQUEUE_CHUNK]
        with transaction.atomic():
            unleased = PendingEvent.objects.filter(pk__in=chunk).exclude(user_id__in=streams_leased(now=timezone.now()))
            requeued += unleased.update(publish_attempts=0, next_attempt_at=None, last_error="")
            published = Event.objects.filter(pk__in=chunk, pending__isnull=True).values_list(
                "pk", "user_id", "seq", "created_at"
            )
            back = [
                PendingEvent(event_id=pk, user_id=user_id, seq=seq, created_at=created_at)
                for pk, user_id, seq, created_at in published
            ]
            # A row the event's own publish or a drainer wrote meanwhile is left as it is.
            requeued += len(PendingEvent.objects.bulk_create(back, ignore_conflicts=True))
    return RequeueResult(requeued=requeued, leased=held, over_limit=over_limit)
