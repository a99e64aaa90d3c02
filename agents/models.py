"""Agent runs: what a user started, and how it ended."""

from django.conf import settings
from django.db import models
from django.db.models import Q

from notifications.ids import uuid7


class RunStatus(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"


ACTIVE_STATUSES = (RunStatus.QUEUED, RunStatus.RUNNING)


class AgentRun(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="agent_runs")
    agent = models.CharField(max_length=100)
    input = models.JSONField(default=dict)
    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.QUEUED)
    timeout_seconds = models.FloatField()
    result = models.JSONField(null=True, blank=True)
    # {"kind": ..., "message": ...} when the run ended in agent_error.
    error = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField()
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["user", "-created_at"], name="run_user_created_idx"),
            models.Index(
                fields=["created_at"],
                condition=Q(status__in=["queued", "running"]),
                name="run_active_idx",
            ),
            # The admin: newest first, by date, and by agent.
            models.Index(fields=["created_at"], name="run_created_idx"),
            models.Index(fields=["agent", "created_at"], name="run_agent_created_idx"),
            models.Index(fields=["status", "created_at"], name="run_status_created_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.agent} run {self.id} ({self.status})"

    @property
    def duration_ms(self) -> int | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return int((self.finished_at - self.started_at).total_seconds() * 1000)
