"""Publish pending events: the drainer's unit of work.

A batch is claimed, published and recorded in one transaction. On
PostgreSQL the claim is ``SELECT ... FOR UPDATE SKIP LOCKED``, so several
drainers never hold the same event at once, and each marks an event
published only after the layer accepted it. On SQLite the transaction takes
the database's write lock (IMMEDIATE mode), so drainers simply take turns.
If a drainer dies mid-batch, the transaction rolls back: the batch stays
pending, and events it already sent are sent again later, which connections
drop as duplicates.
"""

import asyncio
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import timedelta

from asgiref.sync import async_to_sync
from django.db import transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from .models import Event
from .services import aevent_send, publish_backoff_seconds

SEND_TIMEOUT_SECONDS = 2.0


@dataclass(slots=True)
class BatchResult:
    published: int = 0
    failed: int = 0
    failed_ids: list[uuid.UUID] = field(default_factory=list)

    @property
    def claimed(self) -> int:
        return self.published + self.failed


def pending_eligible(
    *, min_age_seconds: float, max_attempts: int, backoff: bool = True, exclude: Collection[uuid.UUID] = ()
) -> "QuerySet[Event]":
    """Pending events the drainer may try now: old enough, not stuck, not backing off.

    ``backoff=False`` ignores the retry times (a one-off drain tries every
    pending event once); ``exclude`` leaves out events already tried.
    """
    now = timezone.now()
    events = Event.objects.filter(
        published_at__isnull=True,
        publish_attempts__lt=max_attempts,
        created_at__lte=now - timedelta(seconds=min_age_seconds),
    )
    if backoff:
        events = events.filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
    if exclude:
        events = events.exclude(pk__in=list(exclude))
    return events


def pending_counts(*, max_attempts: int) -> tuple[int, int]:
    """Return (still pending, of which stuck at max attempts)."""
    pending = Event.objects.filter(published_at__isnull=True)
    return pending.count(), pending.filter(publish_attempts__gte=max_attempts).count()


def drain_batch(
    *,
    batch_size: int,
    min_age_seconds: float,
    max_attempts: int,
    backoff: bool = True,
    exclude: Collection[uuid.UUID] = (),
    on_claimed: Callable[[int], None] | None = None,
) -> BatchResult:
    """Claim up to ``batch_size`` eligible events, publish them, record each outcome.

    Oldest first; within a user, in seq order. Runs in a database thread;
    the sends go to the event loop through ``async_to_sync``.
    """
    result = BatchResult()
    with transaction.atomic():
        claimed = list(
            pending_eligible(
                min_age_seconds=min_age_seconds, max_attempts=max_attempts, backoff=backoff, exclude=exclude
            )
            .select_for_update(skip_locked=True)
            .order_by("created_at", "user_id", "seq")[:batch_size]
        )
        if not claimed:
            return result
        if on_claimed is not None:
            on_claimed(len(claimed))
        claimed.sort(key=lambda event: (event.user_id, event.seq))
        reasons = async_to_sync(_send_all)(claimed)
        now = timezone.now()
        sent = [event.pk for event, reason in zip(claimed, reasons, strict=True) if reason is None]
        Event.objects.filter(pk__in=sent).update(published_at=now, next_attempt_at=None)
        result.published = len(sent)
        for event, reason in zip(claimed, reasons, strict=True):
            if reason is None:
                continue
            attempts = event.publish_attempts + 1
            Event.objects.filter(pk=event.pk).update(
                publish_attempts=F("publish_attempts") + 1,
                last_error=reason,
                next_attempt_at=now + timedelta(seconds=publish_backoff_seconds(attempts)),
            )
            result.failed += 1
            result.failed_ids.append(event.pk)
    return result


async def _send_all(events: list[Event]) -> list[str | None]:
    """Send each user's events in seq order; users in parallel."""
    by_user: dict[int, list[Event]] = {}
    for event in events:
        by_user.setdefault(event.user_id, []).append(event)

    async def send_in_order(user_events: list[Event]) -> list[tuple[uuid.UUID, str | None]]:
        outcomes = []
        for event in user_events:
            outcomes.append((event.pk, await aevent_send(event=event, timeout_seconds=SEND_TIMEOUT_SECONDS)))
        return outcomes

    per_user = await asyncio.gather(*(send_in_order(user_events) for user_events in by_user.values()))
    reasons = {pk: reason for outcomes in per_user for pk, reason in outcomes}
    return [reasons[event.pk] for event in events]
