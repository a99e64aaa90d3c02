"""Reads of the event log."""

import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from django.contrib.auth import get_user_model
from django.db.models import Count, Min, OuterRef, Subquery

from .models import Event, Stream


@dataclass(frozen=True, slots=True)
class UserState:
    """What a connection needs to know of its user: who, whether still allowed in, and the newest seq."""

    user_id: int
    username: str
    active: bool
    last_seq: int


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


def events_pending_summary() -> tuple[int, datetime | None]:
    """Count pending events and return the creation time of the oldest one."""
    summary = Event.objects.filter(published_at__isnull=True).aggregate(count=Count("pk"), oldest=Min("created_at"))
    return int(summary["count"]), summary["oldest"]


def user_states(*, values: Collection[object], field: str = "pk") -> dict[object, UserState]:
    """Return, keyed by ``field``'s value, the users that exist with each one's newest seq (0 if none).

    One query for any number of users: connects and heartbeats ask for many at once.
    """
    if not values:
        return {}
    users = (
        get_user_model()
        ._default_manager.filter(**{f"{field}__in": list(values)})
        .annotate(stream_seq=Subquery(Stream.objects.filter(user_id=OuterRef("pk")).values("last_seq")[:1]))
    )
    return {
        getattr(user, field): UserState(
            user_id=user.pk,
            username=user.get_username(),
            active=bool(user.is_active),
            last_seq=int(user.stream_seq or 0),
        )
        for user in users
    }
