"""Read-only admin for the event log, built to stay fast on millions of rows.

No page counts the whole table (counts stop at ``COUNT_LIMIT``), every list
filter is served by an index, and a page's related rows come in its one query.
"""

import logging
import uuid
from functools import cached_property
from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db.models import Model, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.utils.html import format_html

from .drain import events_requeue
from .models import Event

logger = logging.getLogger(__name__)

COUNT_LIMIT = 10_000
DISTINCT_VALUES_LIMIT = 100


class CappedCountPaginator(Paginator):  # type: ignore[type-arg]
    """Count at most ``COUNT_LIMIT + 1`` rows: past that, narrow the list with filters."""

    @cached_property
    def count(self) -> int:
        rows: QuerySet[Any] = self.object_list  # type: ignore[assignment]  # The admin pages querysets.
        return int(rows.order_by()[: COUNT_LIMIT + 1].count())


class ReadOnlyAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """An admin that shows rows and never changes them: the log is written only by its services."""

    paginator = CappedCountPaginator
    show_full_result_count = False  # No full-table COUNT(*) on a large table.
    show_facets = admin.ShowFacets.NEVER  # Facet counts would count every filter choice over the table.
    list_per_page = 100
    # Search is exact and indexed: a UUID is looked up as ``uuid_search_field``, anything else as a username.
    uuid_search_field = "id"
    search_help_text = "An exact id or username."

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        """Match an exact UUID or username, with lookups the indexes serve (Django's ``=`` is ``iexact``)."""
        term = search_term.strip()
        if not term:
            return queryset, False
        try:
            return queryset.filter(**{self.uuid_search_field: uuid.UUID(term)}), False
        except ValueError:
            return queryset.filter(user__username=term), False

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        """The list page; a search or filter holding NUL is refused with a message (PostgreSQL cannot compare it)."""
        if any("\x00" in value for values in request.GET.lists() for value in values[1]):
            self.message_user(request, "Searches and filters cannot contain NUL characters.", messages.ERROR)
            return HttpResponseRedirect(request.path)
        return super().changelist_view(request, extra_context)

    def response_action(
        self, request: HttpRequest, queryset: QuerySet[Any], *args: Any, **kwargs: Any
    ) -> HttpResponse | None:
        """Run an action; a selection that names no valid row is refused with a message, not a 500.

        Django filters on the posted ids as they are, so ids that are not
        UUIDs raise ``ValidationError`` there.
        """
        try:
            return super().response_action(request, queryset, *args, **kwargs)
        except ValidationError:
            self.message_user(request, "The selection holds ids that are not valid; nothing was done.", messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class IndexedValuesFilter(admin.SimpleListFilter):
    """Filter on a column's values, found by walking its index rather than by ``SELECT DISTINCT``.

    Each value costs one index seek (``WHERE col > previous ORDER BY col
    LIMIT 1``), so listing a handful of agent names stays instant however
    many rows share them. Subclasses set ``title`` and ``parameter_name``
    (the column, which must lead an index).
    """

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        model: type[Model] = model_admin.model
        column = str(self.parameter_name)
        values: list[str] = []
        rows = model._default_manager.order_by(column).values_list(column, flat=True)
        while len(values) < DISTINCT_VALUES_LIMIT:
            following = rows.filter(**{f"{column}__gt": values[-1]}) if values else rows
            value = following.first()
            if value is None:
                break
            values.append(value)
        return [(value, value) for value in values]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value():
            return queryset.filter(**{str(self.parameter_name): self.value()})
        return queryset


class AgentFilter(IndexedValuesFilter):
    title = "agent"
    parameter_name = "agent"


class PublishStateFilter(admin.SimpleListFilter):
    title = "publish state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("pending", "Pending"), ("stuck", "Stuck"), ("published", "Published")]

    def queryset(self, request: HttpRequest, queryset: "QuerySet[Event]") -> "QuerySet[Event]":
        if self.value() == "pending":
            return queryset.filter(pending__isnull=False)
        if self.value() == "stuck":
            return queryset.filter(pending__publish_attempts__gte=settings.DRAIN_MAX_ATTEMPTS)
        if self.value() == "published":
            return queryset.filter(pending__isnull=True)
        return queryset


@admin.register(Event)
class EventAdmin(ReadOnlyAdmin):
    list_display = (
        "seq",
        "user",
        "event",
        "agent",
        "run_link",
        "created_at",
        "published",
        "delivered",
        "publish_attempts",
        "stuck",
        "last_error",
    )
    list_filter = (PublishStateFilter, "event", AgentFilter, ("created_at", admin.DateFieldListFilter))
    search_fields = ("run_id", "user__username")  # (see get_search_results)
    uuid_search_field = "run_id"
    search_help_text = "An exact run id or username."
    # The user, their stream (for the delivered column) and the outbox row in the page's one query.
    list_select_related = ("user", "user__event_stream", "pending")
    # Newest first; (user, seq) makes it total, so Django adds no sort on the random UUID key.
    ordering = ("-created_at", "user", "-seq")
    actions = ("requeue",)
    # The event page shows its outbox state beside its own fields.
    readonly_fields = ("published", "publish_attempts", "last_error", "stuck")

    @admin.display(description="run", ordering="run_id")
    def run_link(self, event: Event) -> str:
        """The run id, linking to all of the run's events."""
        return format_html('<a href="?q={}">{}</a>', event.run_id, event.run_id)

    @admin.display(boolean=True, description="delivered")
    def delivered(self, event: Event) -> bool:
        """The user's client acked this event (its seq is at or below the user's acked seq)."""
        stream = getattr(event.user, "event_stream", None)
        return stream is not None and event.seq <= stream.acked_seq

    @admin.display(boolean=True, description="published")
    def published(self, event: Event) -> bool:
        """The channel layer has it: the event has left the outbox."""
        return event.outbox is None

    @admin.display(description="publish attempts")
    def publish_attempts(self, event: Event) -> int | None:
        """Failed publishes so far, while pending (gone with the outbox row once it is published)."""
        pending = event.outbox
        return None if pending is None else pending.publish_attempts

    @admin.display(description="last error")
    def last_error(self, event: Event) -> str:
        pending = event.outbox
        return "" if pending is None else pending.last_error

    @admin.display(boolean=True, description="stuck")
    def stuck(self, event: Event) -> bool:
        """Still pending after the drainer's attempt limit (it keeps trying, at the longest backoff)."""
        pending = event.outbox
        return pending is not None and pending.publish_attempts >= settings.DRAIN_MAX_ATTEMPTS

    @admin.action(description="Re-queue selected events for publishing", permissions=["requeue"])
    def requeue(self, request: HttpRequest, queryset: "QuerySet[Event]") -> None:
        result = events_requeue(events=queryset, limit=COUNT_LIMIT)
        logger.info("%s re-queued %d event(s) for publishing", request.user, result.requeued)
        self.message_user(
            request, f"Re-queued {result.requeued} event(s): drain_events will publish them.", level=messages.SUCCESS
        )
        if result.leased:
            self.message_user(
                request,
                f"{result.leased} event(s) are being sent by a drainer right now and were left to it.",
                level=messages.WARNING,
            )
        if result.over_limit:
            self.message_user(
                request,
                f"Only the first {COUNT_LIMIT} were re-queued: narrow the list with filters to re-queue the rest.",
                level=messages.WARNING,
            )

    def has_requeue_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("notifications.change_event"))
