"""Read-only admin for agent runs."""

from django.contrib import admin

from notifications.admin import ReadOnlyAdmin

from .models import AgentRun


@admin.register(AgentRun)
class AgentRunAdmin(ReadOnlyAdmin):
    list_display = ("id", "user", "agent", "status", "created_at", "started_at", "finished_at")
    list_filter = ("status", "agent")
    search_fields = ("=id", "=user__username")
    list_select_related = ("user",)
    ordering = ("-created_at",)
