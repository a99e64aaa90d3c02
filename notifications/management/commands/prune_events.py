"""Delete published events older than the retention window, in bounded batches."""

import threading
import time
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError
from django.utils import timezone

from config.signals import stop_signals_handled
from notifications.retention import events_prunable, events_prune_batch


class Command(BaseCommand):
    help = (
        "Delete published events older than EVENT_RETENTION_DAYS (pending ones are kept), in short batches. "
        "One pass, or one every --every seconds until SIGINT/SIGTERM."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--days", type=float, default=settings.EVENT_RETENTION_DAYS, help="The window; 0 keeps everything."
        )
        parser.add_argument("--batch-size", type=int, default=settings.PRUNE_BATCH_SIZE)
        parser.add_argument("--every", type=float, default=0, help="Repeat every this many seconds (0: once).")
        parser.add_argument("--dry-run", action="store_true", help="Count what would be deleted; delete nothing.")

    def handle(self, *args: Any, days: float, batch_size: int, every: float, dry_run: bool, **options: Any) -> None:
        if days < 0 or batch_size < 1 or every < 0:
            raise CommandError("--days and --every must not be negative, --batch-size at least 1.")
        if days == 0:
            self.stdout.write("Retention is off (EVENT_RETENTION_DAYS=0): nothing to prune.")
            return
        stop = threading.Event()
        # Any signal stops it once the batch in hand is done: batches are short, so a second has nothing to add.
        with stop_signals_handled(lambda signum, count: stop.set()):
            while True:
                try:
                    self.prune(days=days, batch_size=batch_size, dry_run=dry_run, stop=stop)
                except DatabaseError as exc:
                    # Each batch is its own transaction: what was deleted stays deleted.
                    if not every:
                        raise CommandError(f"The database is unavailable: {exc}", returncode=1) from None
                    self.stderr.write(f"Database unavailable, trying again in {every:g}s: {exc}")
                if not every or stop.wait(every):
                    break

    def prune(self, *, days: float, batch_size: int, dry_run: bool, stop: threading.Event) -> None:
        cutoff = timezone.now() - timedelta(days=days)
        if dry_run:
            count = events_prunable(cutoff=cutoff).count()
            self.stdout.write(f"Would delete {count} published event(s) created before {cutoff.isoformat()}.")
            return
        started = time.monotonic()
        deleted = 0
        while not stop.is_set():
            batch = events_prune_batch(cutoff=cutoff, batch_size=batch_size)
            deleted += batch
            if batch < batch_size:
                break
        seconds = time.monotonic() - started
        verb = "Stopped after deleting" if stop.is_set() else "Deleted"
        self.stdout.write(
            f"{verb} {deleted} published event(s) created before {cutoff.isoformat()} in {seconds:.1f} s."
        )
