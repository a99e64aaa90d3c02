"""Read-only admin for the event log."""

from typing import Any

from django.contrib import admin
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


@admin.register(Event)
class EventAdmin(ReadOnlyAdmin):
    list_display = ("seq", "user", "event", "agent", "run_id", "created_at", "published_at", "publish_attempts")
    list_filter = ("event",)
    search_fields = ("=run_id", "=user__username")
    list_select_related = ("user",)
    ordering = ("-created_at",)
