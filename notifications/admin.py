"""Read-only admin for the event log."""

from typing import Any

from django.conf import settings
from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from .models import Event


class ReadOnlyAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """An admin that shows rows and never changes them: the log is written only by its services."""

    show_full_result_count = False  # No full-table COUNT(*) on a large table.

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class DeliveryStateFilter(admin.SimpleListFilter):
    title = "publish state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("pending", "Pending"), ("stuck", "Stuck"), ("published", "Published")]

    def queryset(self, request: HttpRequest, queryset: "QuerySet[Event]") -> "QuerySet[Event]":
        if self.value() == "pending":
            return queryset.filter(published_at__isnull=True)
        if self.value() == "stuck":
            return queryset.filter(published_at__isnull=True, publish_attempts__gte=settings.DRAIN_MAX_ATTEMPTS)
        if self.value() == "published":
            return queryset.filter(published_at__isnull=False)
        return queryset


@admin.register(Event)
class EventAdmin(ReadOnlyAdmin):
    list_display = (
        "seq",
        "user",
        "event",
        "agent",
        "run_id",
        "created_at",
        "published_at",
        "publish_attempts",
        "stuck",
        "last_error",
    )
    list_filter = (DeliveryStateFilter, "event")
    search_fields = ("=run_id", "=user__username")
    list_select_related = ("user",)
    ordering = ("-created_at",)

    @admin.display(boolean=True, description="stuck")
    def stuck(self, event: Event) -> bool:
        """Still pending after the drainer's attempt limit (it keeps trying, at the longest backoff)."""
        return event.published_at is None and event.publish_attempts >= settings.DRAIN_MAX_ATTEMPTS
