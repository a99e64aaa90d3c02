"""The outbox: pending events move from a mark on each event to a narrow table of their own.

Events not published yet get their ``PendingEvent`` row, with their attempts,
backoff and last error; then the event's own publish columns go. Reversed,
every event without an outbox row is marked published as of the reversal.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

COPY_PENDING = """
INSERT INTO notifications_pendingevent (event_id, user_id, seq, created_at, publish_attempts, next_attempt_at, last_error)
SELECT id, user_id, seq, created_at, publish_attempts, next_attempt_at, last_error
FROM notifications_event WHERE published_at IS NULL
"""

# Reversed: the fields are back (published_at NULL everywhere, attempts 0), and the outbox is still there.
COPY_BACK = [
    "UPDATE notifications_event SET published_at = CURRENT_TIMESTAMP "
    "WHERE id NOT IN (SELECT event_id FROM notifications_pendingevent)",
    "UPDATE notifications_event SET "
    "publish_attempts = (SELECT p.publish_attempts FROM notifications_pendingevent p WHERE p.event_id = id), "
    "next_attempt_at = (SELECT p.next_attempt_at FROM notifications_pendingevent p WHERE p.event_id = id), "
    "last_error = (SELECT p.last_error FROM notifications_pendingevent p WHERE p.event_id = id) "
    "WHERE published_at IS NULL",
]


class Migration(migrations.Migration):
    dependencies = [
        ("notifications", "0005_stream_drain_lease"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="PendingEvent",
            fields=[
                (
                    "event",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.DO_NOTHING,
                        primary_key=True,
                        related_name="pending",
                        serialize=False,
                        to="notifications.event",
                    ),
                ),
                ("seq", models.PositiveBigIntegerField()),
                ("created_at", models.DateTimeField()),
                ("publish_attempts", models.PositiveIntegerField(default=0)),
                ("next_attempt_at", models.DateTimeField(blank=True, null=True)),
                ("last_error", models.TextField(blank=True, default="")),
                (
                    "user",
                    models.ForeignKey(
                        db_constraint=False,
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            options={
                "indexes": [models.Index(fields=["created_at", "user", "seq"], name="pending_created_user_seq_idx")]
            },
        ),
        migrations.RunSQL(COPY_PENDING, reverse_sql=COPY_BACK),
        migrations.RemoveIndex(model_name="event", name="event_pending_idx"),
        migrations.RemoveField(model_name="event", name="last_error"),
        migrations.RemoveField(model_name="event", name="next_attempt_at"),
        migrations.RemoveField(model_name="event", name="publish_attempts"),
        migrations.RemoveField(model_name="event", name="published_at"),
    ]
