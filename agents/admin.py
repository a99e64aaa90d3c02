"""Read-only admin for agent runs; a run's page shows its events as a timeline."""

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from notifications.admin import IndexedValuesFilter, ReadOnlyAdmin
from notifications.models import Event, Stream

from .models import AgentRun

TIMELINE_MAX_EVENTS = 500
NO_STREAM = Stream(acked_seq=0)  # for a user with no stream row: nothing acked


class RunAgentFilter(IndexedValuesFilter):
    title = "agent"
    parameter_name = "agent"


def event_summary(event: Event) -> str:
    """One line of what the event says, for the timeline."""
    data = event.data
    if event.event == "agent_started":
        return f"input {data.get('input')!r}"
    if event.event == "agent_thinking":
        return str(data.get("thought", ""))
    if event.event == "tool_executing":
        return f"{data.get('tool')}({data.get('args')!r})"
    if event.event == "tool_completed":
        outcome = f"→ {data.get('result')!r}" if data.get("ok") else f"failed: {data.get('error')}"
        return f"{data.get('tool')} {outcome} ({data.get('duration_ms')} ms)"
    if event.event == "agent_completed":
        return f"result {data.get('result')!r} ({data.get('duration_ms')} ms)"
    if event.event == "agent_error":
        return f"{data.get('kind')}: {data.get('message')}"
    return repr(data)


@admin.register(AgentRun)
class AgentRunAdmin(ReadOnlyAdmin):
    list_display = ("id", "user", "agent", "status", "created_at", "duration")
    list_filter = ("status", RunAgentFilter, ("created_at", admin.DateFieldListFilter))
    search_fields = ("id", "user__username")  # (see ReadOnlyAdmin.get_search_results)
    search_help_text = "An exact run id or username."
    list_select_related = ("user",)
    ordering = ("-created_at", "-id")
    fields = (
        "id",
        "user",
        "agent",
        "status",
        "input",
        "result",
        "error",
        "timeout_seconds",
        "created_at",
        "started_at",
        "finished_at",
        "duration",
        "cancel_requested_at",
        "timeline",
    )
    readonly_fields = fields

    @admin.display(description="duration")
    def duration(self, run: AgentRun) -> str:
        return "" if run.duration_ms is None else f"{run.duration_ms / 1000:.3f} s"

    @admin.display(description="timeline")
    def timeline(self, run: AgentRun) -> SafeString:
        """The run's events in seq order, each linking to its row in the event log."""
        events = list(
            Event.objects.filter(run_id=run.id)
            .select_related("user__event_stream", "pending")
            .order_by("seq")[: TIMELINE_MAX_EVENTS + 1]
        )
        if not events:
            return format_html("<p>No events.</p>")
        start = events[0].created_at
        rows = format_html_join(
            "",
            '<tr><td><a href="{}">{}</a></td><td>+{} s</td><td><strong>{}</strong></td><td>{}</td>'
            "<td>{}</td><td>{}</td></tr>",
            (
                (
                    reverse("admin:notifications_event_change", args=[event.pk]),
                    event.seq,
                    f"{(event.created_at - start).total_seconds():.3f}",
                    event.event,
                    event_summary(event),
                    "pending" if event.outbox else "published",
                    "delivered" if event.seq <= getattr(event.user, "event_stream", NO_STREAM).acked_seq else "",
                )
                for event in events[:TIMELINE_MAX_EVENTS]
            ),
        )
        more = ""
        if len(events) > TIMELINE_MAX_EVENTS:
            more = format_html(
                '<p>Only the first {} events are shown: <a href="{}?q={}">all of them</a>.</p>',
                TIMELINE_MAX_EVENTS,
                reverse("admin:notifications_event_changelist"),
                run.id,
            )
        return format_html(
            '<table class="run-timeline"><thead><tr><th>seq</th><th>at</th><th>event</th><th>what</th>'
            "<th>publish</th><th>client</th></tr></thead><tbody>{}</tbody></table>{}"
            '<p><a href="{}?q={}">These events in the event log</a></p>',
            rows,
            more,
            reverse("admin:notifications_event_changelist"),
            run.id,
        )
