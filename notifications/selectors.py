"""Reads of the event log."""

import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import Count, Min, Model

from .models import Event, PendingEvent, Stream


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


# (user_id, after, limit): "up to limit of the user's events with seq above after".
EventsAfter = tuple[int, int, int]


def events_after_many(*, asks: Collection[EventsAfter]) -> dict[EventsAfter, list[Event]]:
    """Answer many ``events_after`` asks (no filters) in one statement; each answer is in seq order.

    Each ask is its own ``LIMIT`` subquery on the (user, seq) index, joined
    with ``UNION ALL``: what a heartbeat round or a reconnect storm reads for
    hundreds of connections costs one round trip, not hundreds.
    """
    unique = list(dict.fromkeys(asks))
    if not unique:
        return {}
    columns = ", ".join(f"e.{_column(Event, f.name)}" for f in Event._meta.concrete_fields)
    user, seq = _column(Event, "user"), _column(Event, "seq")
    # Names are the model's own, quoted, and ``i`` an index made here; every value is a parameter.
    sql = " UNION ALL ".join(
        f"SELECT * FROM (SELECT {columns}, {i} AS ask FROM {_table(Event)} e"  # noqa: S608
        f" WHERE e.{user} = %s AND e.{seq} > %s ORDER BY e.{seq} LIMIT %s) AS a{i}"
        for i in range(len(unique))
    )
    params = [value for ask in unique for value in ask]
    found: dict[EventsAfter, list[Event]] = {ask: [] for ask in unique}
    for event in Event.objects.raw(sql, params):
        found[unique[getattr(event, "ask")]].append(event)  # noqa: B009 (a column of the query, not a field)
    for events in found.values():
        events.sort(key=lambda event: event.seq)
    return found


def streams_positions(*, user_ids: Collection[int]) -> dict[int, tuple[int, int]]:
    """Each user's newest seq and highest pruned seq, in one query; a user without a stream is left out."""
    rows = Stream.objects.filter(pk__in=user_ids).values_list("pk", "last_seq", "pruned_seq")
    return {int(pk): (int(last_seq), int(pruned_seq)) for pk, last_seq, pruned_seq in rows}


def events_pending_summary() -> tuple[int, datetime | None]:
    """Count pending events and return the creation time of the oldest one."""
    summary = PendingEvent.objects.aggregate(count=Count("pk"), oldest=Min("created_at"))
    return int(summary["count"]), summary["oldest"]


def user_states(*, values: Collection[object], field: str = "pk") -> dict[object, UserState]:
    """Return, keyed by ``field``'s value, the users that exist with each one's newest seq (0 if none).

    One statement for any number of users: connects and heartbeats ask for
    many at once, and often (one heartbeat read a second per process). It is
    written in SQL because building the ORM's join was most of its cost.
    """
    if not values:
        return {}
    user = get_user_model()
    key, pk = _column(user, field), _column(user, "pk")
    concrete = {f.name for f in user._meta.concrete_fields}
    active = f"u.{_column(user, 'is_active')}" if "is_active" in concrete else "1 = 1"
    columns = f"u.{key}, u.{pk}, u.{_column(user, user.USERNAME_FIELD)}, {active}, s.last_seq"
    placeholders = ", ".join(["%s"] * len(values))
    # Names are the models' own, quoted; every value is a parameter.
    sql = (
        f"SELECT {columns} FROM {_table(user)} u"  # noqa: S608
        f" LEFT JOIN {_table(Stream)} s ON s.{_column(Stream, 'pk')} = u.{pk}"
        f" WHERE u.{key} IN ({placeholders})"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, list(values))  # type: ignore[arg-type]
        rows = cursor.fetchall()
    return {
        row_key: UserState(user_id=int(pk), username=str(name), active=bool(is_active), last_seq=int(last_seq or 0))
        for row_key, pk, name, is_active, last_seq in rows
    }


def _column(model: type[Model], name: str) -> str:
    field = model._meta.pk if name == "pk" else model._meta.get_field(name)
    column = getattr(field, "column", None)
    assert isinstance(column, str), f"{model.__name__}.{name} has no column"
    return connection.ops.quote_name(column)


def _table(model: type[Model]) -> str:
    return connection.ops.quote_name(model._meta.db_table)
