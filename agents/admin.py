"""Read-only admin for agent runs."""

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from .models import AgentRun


@admin.register(AgentRun)
class AgentRunAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("id", "user", "agent", "status", "created_at", "started_at", "finished_at")
    list_filter = ("status", "agent")
    search_fields = ("=id", "=user__username")
    list_select_related = ("user",)
    ordering = ("-created_at",)
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
