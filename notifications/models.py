"""The durable per-user event log."""

from django.conf import settings
from django.db import models
from django.db.models import Q

from .ids import uuid7


class EventType(models.TextChoices):
    AGENT_STARTED = "agent_started"
    AGENT_THINKING = "agent_thinking"
    TOOL_EXECUTING = "tool_executing"
    TOOL_COMPLETED = "tool_completed"
    AGENT_COMPLETED = "agent_completed"
    AGENT_ERROR = "agent_error"


class Stream(models.Model):
    """One user's position in the log: the last seq written and the last acked.

    Writers lock this row to take the next seq, so concurrent writers for one
    user queue here rather than race on ``MAX(seq)``.
    """

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        primary_key=True,
        on_delete=models.CASCADE,
        related_name="event_stream",
    )
    last_seq = models.PositiveBigIntegerField(default=0)
    acked_seq = models.PositiveBigIntegerField(default=0)
    # The highest seq that retention deleted: a replay from below it is incomplete.
    pruned_seq = models.PositiveBigIntegerField(default=0)
    # A drainer is sending this user's pending events until then; other drainers leave them alone.
    drain_leased_until = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            # The few users leased right now, which every claim leaves out.
            models.Index(
                fields=["drain_leased_until"],
                condition=Q(drain_leased_until__isnull=False),
                name="stream_drain_leased_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"stream of user {self.user_id} at {self.last_seq} (acked {self.acked_seq})"


class Event(models.Model):
    """One lifecycle event of one user's agent run. Append-only: publishing it touches only ``PendingEvent``."""

    id = models.UUIDField(primary_key=True, default=uuid7, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="events")
    seq = models.PositiveBigIntegerField()
    event = models.CharField(max_length=32, choices=EventType.choices)
    run_id = models.UUIDField()
    agent = models.CharField(max_length=100)
    data = models.JSONField(default=dict)
    created_at = models.DateTimeField()

    class Meta:
        constraints = [
            # Also the index that reads a user's stream in seq order.
            models.UniqueConstraint(fields=["user", "seq"], name="event_user_seq_unique"),
        ]
        indexes = [
            models.Index(fields=["run_id", "seq"], name="event_run_seq_idx"),
            # The admin: newest first, by date, and by agent.
            models.Index(fields=["created_at"], name="event_created_idx"),
            models.Index(fields=["agent", "created_at"], name="event_agent_created_idx"),
            models.Index(fields=["user", "created_at"], name="event_user_created_idx"),
            models.Index(fields=["event", "created_at"], name="event_type_created_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.event} #{self.seq} for user {self.user_id}"

    @property
    def outbox(self) -> "PendingEvent | None":
        """Its row in the outbox, or None once it is published (a query, unless selected with the event)."""
        pending: PendingEvent | None = getattr(self, "pending", None)  # The reverse accessor raises AttributeError.
        return pending


class PendingEvent(models.Model):
    """The outbox: an event not yet published. Written with the event, deleted once it is sent.

    The event's row is never updated for its publish: a mark on the event
    itself would be a new version of it in every index of the log (bench/RESULTS.md).
    ``user``, ``seq`` and ``created_at`` are the event's, here so that the
    drainer picks and orders its work from this narrow table alone.
    """

    # The database refuses to delete an event still in the outbox; deleting published ones (retention)
    # stays one statement, with no look for outbox rows to cascade to.
    event = models.OneToOneField(Event, primary_key=True, on_delete=models.DO_NOTHING, related_name="pending")
    # Deleting a user deletes their outbox rows with their events. No constraint or index of its own:
    # each is one more write per event, and the rows are deleted with the user's events.
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, db_constraint=False, db_index=False, related_name="+"
    )
    seq = models.PositiveBigIntegerField()
    created_at = models.DateTimeField()
    publish_attempts = models.PositiveIntegerField(default=0)
    # After a failed publish, the drainer leaves the event alone until then.
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")

    class Meta:
        indexes = [
            # The drainer walks it for the oldest first, in the order it sends; /healthz reports the oldest.
            models.Index(fields=["created_at", "user", "seq"], name="pending_created_user_seq_idx"),
        ]

    def __str__(self) -> str:
        return f"pending #{self.seq} for user {self.user_id}"
