"""Retention: prune_events deletes old published events in batches; a resume from before says so."""

import io
import signal
import subprocess
import sys
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from notifications.models import Event, Stream
from notifications.retention import events_prune_batch
from tests.notifications.test_admin import make_event
from tests.servers import ROOT, DaphneServer, LineReader
from tests.wsclient import access_token, ws_connect

OLD = timezone.now() - timedelta(days=40)


def log_of(user: Any, *, old: int, pending_old: tuple[int, ...] = (), new: int = 0) -> None:
    """``old`` events 40 days old (some of them still pending), then ``new`` recent ones."""
    for seq in range(1, old + 1):
        make_event(user, seq, created_at=OLD, pending=seq in pending_old)
    for seq in range(old + 1, old + new + 1):
        make_event(user, seq)


def kept(user: Any) -> list[int]:
    return list(Event.objects.filter(user=user).order_by("seq").values_list("seq", flat=True))


def test_old_published_events_go_pending_and_recent_ones_stay(alice: Any, bob: Any) -> None:
    log_of(alice, old=6, pending_old=(3,), new=2)
    log_of(bob, old=2, new=1)
    deleted = events_prune_batch(cutoff=timezone.now() - timedelta(days=30), batch_size=100)
    assert deleted == 5 + 2
    assert kept(alice) == [3, 7, 8] and kept(bob) == [3]
    assert Stream.objects.get(user=alice).pruned_seq == 6
    assert Stream.objects.get(user=bob).pruned_seq == 2


def test_the_command_deletes_in_bounded_batches(alice: Any) -> None:
    log_of(alice, old=7, new=1)
    out = io.StringIO()
    with CaptureQueriesContext(connection) as captured:
        call_command("prune_events", days=30, batch_size=3, stdout=out)
    deletes = [q["sql"] for q in captured.captured_queries if q["sql"].startswith("DELETE")]
    assert len(deletes) == 3  # 3 + 3 + 1
    assert "Deleted 7 published event(s)" in out.getvalue()
    assert kept(alice) == [8]


def test_dry_run_deletes_nothing_and_zero_days_keeps_everything(alice: Any) -> None:
    log_of(alice, old=2)
    out = io.StringIO()
    call_command("prune_events", days=30, dry_run=True, stdout=out)
    assert "Would delete 2 published event(s)" in out.getvalue()
    call_command("prune_events", days=0, stdout=out)
    assert "Retention is off" in out.getvalue()
    assert kept(alice) == [1, 2]


def test_repeating_pruner_stops_cleanly_on_sigterm(daphne: DaphneServer) -> None:
    env = {"DATABASE_URL": daphne.env["DATABASE_URL"], "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "manage.py", "prune_events", "--every", "3600"],
        cwd=ROOT,
        env={**daphne.env, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        LineReader(process.stdout).until("published event(s) created before")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        process.stdout.close()  # type: ignore[union-attr]


@pytest.mark.usefixtures("server_log_clean")
async def test_resume_from_before_the_window_replays_what_is_kept_and_says_truncated(
    daphne: DaphneServer, alice: Any
) -> None:
    await sync_to_async(log_of)(alice, old=5, pending_old=(2,), new=3)
    await sync_to_async(events_prune_batch)(cutoff=timezone.now() - timedelta(days=30), batch_size=100)
    async with ws_connect(daphne.ws_url, access_token(alice)) as client:
        await client.send({"type": "resume", "after": 0})
        assert [event["seq"] for event in await client.events(4)] == [2, 6, 7, 8]
        assert await client.recv() == {"type": "resumed", "after": 0, "last_seq": 8, "count": 4, "truncated": True}
        # From the window's start on, nothing is missing.
        await client.send({"type": "resume", "after": 5})
        assert [event["seq"] for event in await client.events(3)] == [6, 7, 8]
        assert await client.recv() == {"type": "resumed", "after": 5, "last_seq": 8, "count": 3, "truncated": False}


def test_a_pending_event_cannot_be_deleted_but_its_user_can(alice: Any, bob: Any) -> None:
    from django.db import IntegrityError, transaction

    from notifications.models import PendingEvent

    pending = make_event(alice, 1, created_at=OLD, pending=True)
    make_event(bob, 1, created_at=OLD, pending=True)
    with pytest.raises(IntegrityError), transaction.atomic():
        Event.objects.filter(pk=pending.pk).delete()  # Its outbox row still names it.
    assert Event.objects.filter(pk=pending.pk).exists()
    alice.delete()
    assert list(PendingEvent.objects.values_list("user_id", flat=True)) == [bob.pk]
    assert list(Event.objects.values_list("user_id", flat=True)) == [bob.pk]
