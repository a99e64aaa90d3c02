"""Reads of the event log."""

import uuid
from datetime import datetime

from django.db.models import Count, Min

from .models import Event, Stream


def events_after(
    *,
    user_id: int,
    after: int,
    limit: int,
    run_id: uuid.UUID | None = None,
    event: str | None = None,
) -> list[Event]:
    """Return up to ``limit`` of the user's events with seq above ``after``, in seq order."""
    events = Event.objects.filter(user_id=user_id, seq__gt=after)
    if run_id is not None:
        events = events.filter(run_id=run_id)
    if event is not None:
        events = events.filter(event=event)
    return list(events.order_by("seq")[:limit])


def stream_positions(*, user_id: int) -> tuple[int, int]:
    """Return the user's newest seq and the highest seq retention deleted (0, 0 with no stream)."""
    row = Stream.objects.filter(user_id=user_id).values_list("last_seq", "pruned_seq").first()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def stream_last_seq(*, user_id: int) -> int:
    """Return the seq of the user's newest event, 0 when there is none."""
    last = Stream.objects.filter(user_id=user_id).values_list("last_seq", flat=True).first()
    return int(last or 0)


def events_pending_summary() -> tuple[int, datetime | None]:
    """Count pending events and return the creation time of the oldest one."""
    summary = Event.objects.filter(published_at__isnull=True).aggregate(count=Count("pk"), oldest=Min("created_at"))
    return int(summary["count"]), summary["oldest"]
