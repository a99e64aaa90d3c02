"""Retention: delete published events older than the window, a bounded batch at a time.

Pending events are never deleted, whatever their age: they have not reached
the channel layer yet. Each user's stream remembers the highest seq deleted
(``pruned_seq``), so a resume from before it says the replay is truncated.
"""

from datetime import datetime

from django.db import models, transaction
from django.db.models import Max
from django.db.models.functions import Greatest

from .models import Event, Stream


def events_prunable(*, cutoff: datetime) -> "models.QuerySet[Event]":
    """Published events (out of the outbox) created before ``cutoff``."""
    return Event.objects.filter(pending__isnull=True, created_at__lt=cutoff)


def events_prune_batch(*, cutoff: datetime, batch_size: int) -> int:
    """Delete up to ``batch_size`` of the oldest prunable events in one short transaction; return how many."""
    with transaction.atomic():
        batch = list(events_prunable(cutoff=cutoff).order_by("created_at").values_list("pk", flat=True)[:batch_size])
        if not batch:
            return 0
        # The same conditions again: an event re-queued since it was picked is pending, and stays.
        doomed = events_prunable(cutoff=cutoff).filter(pk__in=batch)
        highest = dict(doomed.values("user_id").annotate(seq=Max("seq")).values_list("user_id", "seq"))
        deleted, _ = doomed.delete()
        for user_id, seq in highest.items():
            Stream.objects.filter(user_id=user_id).update(pruned_seq=Greatest("pruned_seq", seq))
    return deleted
