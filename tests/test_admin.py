"""The admin shows the event log and runs to staff, read-only."""

import uuid
from typing import Any

import pytest
from django.test import Client

from agents.services import run_create
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
