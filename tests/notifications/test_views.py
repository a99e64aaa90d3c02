"""HTTP: tokens, the caller's event log, health."""

import asyncio
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from django.db import DatabaseError
from django.test import AsyncClient
from rest_framework.test import APIClient

from notifications import views
from notifications.models import Event
from notifications.services import event_record
from tests.conftest import ChannelLayers
from tests.notifications.test_admin import make_event
from tests.servers import free_port
from tests.wsclient import REFUSED_TOKENS, access_token, retyped_token


@pytest.fixture(autouse=True)
def memory_layer(channel_layers: ChannelLayers) -> None:
    channel_layers("memory")


def api(user: Any | None = None, *, token: str | None = None) -> APIClient:
    """A client sending ``token`` as its bearer token, by default a fresh access token of ``user``."""
    client = APIClient()
    if user is not None or token is not None:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {token or access_token(user)}")
    return client


def emit(user: Any, count: int, *, event: str = "agent_thinking", run_id: uuid.UUID | None = None) -> uuid.UUID:
    run_id = run_id or uuid.uuid4()
    for step in range(count):
        event_record(user_id=user.pk, event=event, run_id=run_id, agent="demo", data={"step": step})
    return run_id


def test_token_pair_and_refresh(make_user: Any) -> None:
    user = make_user("carol")
    user.set_password("s3cret-pass")
    user.save()
    pair = api().post("/api/auth/token/", {"username": "carol", "password": "s3cret-pass"}, format="json")
    assert pair.status_code == 200
    assert set(pair.json()) == {"access", "refresh"}
    refreshed = api().post("/api/auth/token/refresh/", {"refresh": pair.json()["refresh"]}, format="json")
    assert refreshed.status_code == 200
    assert "access" in refreshed.json()
    wrong = api().post("/api/auth/token/", {"username": "carol", "password": "nope"}, format="json")
    assert wrong.status_code == 401
    # Log out: the refresh token is blacklisted and buys nothing more.
    out = api().post("/api/auth/token/blacklist/", {"refresh": pair.json()["refresh"]}, format="json")
    assert out.status_code == 200
    again = api().post("/api/auth/token/refresh/", {"refresh": pair.json()["refresh"]}, format="json")
    assert again.status_code == 401 and again.json()["code"] == "token_not_valid"


def test_events_need_a_token(transactional_db: None) -> None:
    assert api().get("/api/events/").status_code == 401


@pytest.mark.parametrize("make_token", REFUSED_TOKENS.values(), ids=REFUSED_TOKENS.keys())
def test_events_need_a_live_access_token(alice: Any, make_token: Any) -> None:
    emit(alice, 1)
    refused = api(token=make_token(alice)).get("/api/events/")
    assert refused.status_code == 401
    assert refused.json()["code"] == "token_not_valid"
    assert api(alice).get("/api/events/").status_code == 200


@pytest.mark.parametrize(("deleted", "code"), [(False, "user_inactive"), (True, "user_not_found")])
def test_events_refuse_a_token_of_an_inactive_or_deleted_user(alice: Any, deleted: bool, code: str) -> None:
    client = api(alice)
    assert client.get("/api/events/").status_code == 200
    if deleted:
        alice.delete()
    else:
        alice.is_active = False
        alice.save(update_fields=["is_active"])
    refused = client.get("/api/events/")
    assert refused.status_code == 401
    assert refused.json()["code"] == code


def test_refresh_needs_a_refresh_token(alice: Any) -> None:
    for token in (access_token(alice), retyped_token(alice, None)):
        refused = api().post("/api/auth/token/refresh/", {"refresh": token}, format="json")
        assert refused.status_code == 401
        assert refused.json()["code"] == "token_not_valid"


def test_events_are_the_callers_own_in_seq_order(alice: Any, bob: Any) -> None:
    emit(alice, 3)
    emit(bob, 2)
    body = api(alice).get("/api/events/").json()
    assert [e["seq"] for e in body["results"]] == [1, 2, 3]
    assert {e["id"] for e in body["results"]} == {
        str(i) for i in Event.objects.filter(user=alice).values_list("id", flat=True)
    }
    assert body["next"] is None
    assert set(body["results"][0]) == {"type", "id", "seq", "event", "run_id", "agent", "created_at", "data"}


def test_events_pages_follow_next_to_the_end(alice: Any) -> None:
    emit(alice, 5)
    client = api(alice)
    first = client.get("/api/events/?limit=2").json()
    assert [e["seq"] for e in first["results"]] == [1, 2]
    second = client.get(first["next"]).json()
    assert [e["seq"] for e in second["results"]] == [3, 4]
    third = client.get(second["next"]).json()
    assert [e["seq"] for e in third["results"]] == [5]
    assert third["next"] is None


def test_events_filter_by_after_run_and_event(alice: Any) -> None:
    run = emit(alice, 2)
    emit(alice, 2, event="tool_executing")
    client = api(alice)
    assert [e["seq"] for e in client.get("/api/events/?after=3").json()["results"]] == [4]
    assert [e["seq"] for e in client.get(f"/api/events/?run={run}").json()["results"]] == [1, 2]
    assert [e["seq"] for e in client.get("/api/events/?event=tool_executing").json()["results"]] == [3, 4]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("after=-1", "after"),
        ("after=x", "after"),
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("run=nope", "run"),
        ("event=bogus", "event"),
    ],
)
def test_bad_event_queries_are_400_with_the_field_named(alice: Any, query: str, field: str) -> None:
    response = api(alice).get(f"/api/events/?{query}")
    assert response.status_code == 400
    assert field in response.json()


def test_healthz_reports_ok_with_the_pending_backlog(alice: Any, settings: Any) -> None:
    make_event(alice, 1, pending=True, created_at=datetime(2026, 1, 1, tzinfo=UTC))
    make_event(alice, 2)  # Published: not counted.
    response = api().get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["database"] == {"ok": True}
    assert body["channel_layer"]["ok"] is True
    assert body["pending_events"]["count"] == 1
    assert body["pending_events"]["oldest_age_seconds"] > 0


def test_healthz_is_503_when_the_layer_is_down(transactional_db: None, channel_layers: ChannelLayers) -> None:
    channel_layers("pubsub", redis_url=f"redis://127.0.0.1:{free_port()}/0", prefix="down")
    response = api().get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["channel_layer"]["ok"] is False
    assert body["database"] == {"ok": True}


async def test_healthz_answers_in_time_while_the_database_hangs(
    transactional_db: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A check that never returns is answered as a timeout, and kept until its thread lets go."""
    release = threading.Event()

    def hangs() -> None:
        release.wait(timeout=30)  # Released below; the bound only guards against a broken test.
        raise DatabaseError("gave up")

    monkeypatch.setattr("notifications.views.events_pending_summary", hangs)
    monkeypatch.setattr("notifications.views.HEALTH_TIMEOUT_SECONDS", 0.05)
    try:
        started = time.monotonic()
        response = await AsyncClient().get("/healthz")
        assert time.monotonic() - started < 1
        assert response.status_code == 503
        assert response.json()["database"] == {"ok": False, "error": "timeout"}
        assert response.json()["pending_events"] == {"count": None, "oldest_age_seconds": None}
        assert len(views._stragglers) == 1
    finally:
        release.set()
    await asyncio.wait_for(asyncio.gather(*views._stragglers, return_exceptions=True), timeout=5)
    assert not views._stragglers
