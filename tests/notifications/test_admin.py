"""The admin shows the event log and runs to staff, read-only."""

import uuid
from typing import Any

import pytest
from django.test import Client

from agents.services import run_create
from notifications.models import Event
from notifications.services import event_record


@pytest.fixture
def staff_client(django_user_model: Any, transactional_db: None) -> Client:
    admin = django_user_model.objects.create_superuser("root", password="unused-but-required")
    client = Client()
    client.force_login(admin)
    return client


def test_event_log_and_runs_are_listed_and_searchable(staff_client: Client, alice: Any, settings: Any) -> None:
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    run = run_create(user_id=alice.pk, agent="demo", input={})
    event_record(user_id=alice.pk, event="agent_started", run_id=run.id, agent="demo", data={"input": {}})
    events = staff_client.get("/admin/notifications/event/")
    assert events.status_code == 200 and events.context["cl"].result_count == 1
    found = staff_client.get("/admin/notifications/event/", {"q": str(run.id)})
    assert found.context["cl"].result_count == 1 and str(run.id).encode() in found.content
    by_user = staff_client.get("/admin/notifications/event/", {"q": "alice"})
    assert by_user.context["cl"].result_count == 1
    missing = staff_client.get("/admin/notifications/event/", {"q": str(uuid.uuid4())})
    assert missing.context["cl"].result_count == 0
    runs = staff_client.get("/admin/agents/agentrun/", {"status__exact": "queued"})
    assert runs.status_code == 200 and runs.context["cl"].result_count == 1
    assert staff_client.get("/admin/notifications/event/add/").status_code == 403


def test_stuck_events_are_marked_and_filterable(staff_client: Client, alice: Any, settings: Any) -> None:
    settings.DRAIN_MAX_ATTEMPTS = 3
    run_id = uuid.uuid4()
    for seq, attempts, published in ((1, 0, True), (2, 1, False), (3, 3, False)):
        Event.objects.create(
            user=alice,
            seq=seq,
            event="agent_thinking",
            run_id=run_id,
            agent="demo",
            data={},
            created_at="2026-01-01T00:00:00Z",
            published_at="2026-01-01T00:00:01Z" if published else None,
            publish_attempts=attempts,
            last_error="" if published else "ConnectionError: down",
        )
    states = {
        state: sorted(
            row.seq
            for row in staff_client.get("/admin/notifications/event/", {"state": state}).context["cl"].result_list
        )
        for state in ("pending", "stuck", "published")
    }
    assert states == {"pending": [2, 3], "stuck": [3], "published": [1]}
    page = staff_client.get("/admin/notifications/event/", {"state": "stuck"}).content.decode()
    assert "ConnectionError: down" in page and 'alt="True"' in page
