"""The event log's admin: read-only, findable, and fast on a large table."""

import re
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from notifications.admin import COUNT_LIMIT
from notifications.drain import pending_eligible
from notifications.models import Event, PendingEvent, Stream

EVENTS_URL = "/admin/notifications/event/"


OUTBOX_FIELDS = ("publish_attempts", "next_attempt_at", "last_error")


def make_event(user: Any, seq: int, *, pending: bool = False, **fields: Any) -> Event:
    """A log row as the pipeline leaves it, published unless ``pending``; fields override the defaults.

    The outbox's own fields (``OUTBOX_FIELDS``) go to its row, for a pending event.
    """
    outbox = {name: fields.pop(name) for name in OUTBOX_FIELDS if name in fields}
    assert pending or not outbox, "only a pending event has outbox fields"
    values: dict[str, Any] = {
        "event": "agent_thinking",
        "run_id": uuid.uuid4(),
        "agent": "demo",
        "data": {"thought": "…", "step": 1},
        "created_at": timezone.now(),
        **fields,
    }
    Stream.objects.update_or_create(user=user, defaults={"last_seq": seq})
    event = Event.objects.create(user=user, seq=seq, **values)
    if pending:
        PendingEvent.objects.create(event=event, user=user, seq=seq, created_at=event.created_at, **outbox)
    return event


def listed(client: Client, **params: Any) -> list[int]:
    response = client.get(EVENTS_URL, params)
    assert response.status_code == 200
    return sorted(row.seq for row in response.context["cl"].result_list)


def test_the_log_is_listed_with_its_delivery_state_and_is_read_only(staff_client: Client, alice: Any) -> None:
    for seq in (1, 2, 3):
        make_event(alice, seq)
    Stream.objects.filter(user=alice).update(acked_seq=2)
    response = staff_client.get(EVENTS_URL)
    changelist = response.context["cl"]
    delivered = {row.seq: changelist.model_admin.delivered(row) for row in changelist.result_list}
    assert delivered == {1: True, 2: True, 3: False}
    page = response.content.decode()
    assert page.count('alt="True"') >= 2 and "delivered" in page
    assert staff_client.get(f"{EVENTS_URL}add/").status_code == 403
    event = Event.objects.get(seq=1)
    assert staff_client.post(f"{EVENTS_URL}{event.pk}/change/", {"seq": 9}).status_code == 403
    assert staff_client.post(f"{EVENTS_URL}{event.pk}/delete/", {"post": "yes"}).status_code == 403
    assert Event.objects.filter(user=alice).count() == 3


def test_search_by_run_id_and_username(staff_client: Client, alice: Any, bob: Any) -> None:
    run = uuid.uuid4()
    make_event(alice, 1, run_id=run)
    make_event(alice, 2)
    make_event(bob, 1, run_id=run)  # (cannot happen in the pipeline; shows the search is by run only)
    assert listed(staff_client, q=str(run)) == [1, 1]
    assert listed(staff_client, q="alice") == [1, 2]
    assert listed(staff_client, q="bo") == []  # exact
    assert listed(staff_client, q="Alice") == []
    assert listed(staff_client, q=str(uuid.uuid4())) == []
    # Plain equality, which the (run_id, seq) and username indexes serve; Django's "=" search
    # would be UPPER(...) = UPPER(...) or LIKE, which no index serves.
    for term in (str(run), "alice"):
        with CaptureQueriesContext(connection) as captured:
            staff_client.get(EVENTS_URL, {"q": term})
        searches = [q["sql"] for q in captured.captured_queries if "notifications_event" in q["sql"]]
        assert searches and not [sql for sql in searches if re.search(r"UPPER|LIKE", sql, re.IGNORECASE)]
    # The run column links to the run's events.
    page = staff_client.get(EVENTS_URL).content.decode()
    assert f'href="?q={run}"' in page


def test_filters_by_event_agent_publish_state_and_date(staff_client: Client, alice: Any, settings: Any) -> None:
    settings.DRAIN_MAX_ATTEMPTS = 3
    now = timezone.now()
    make_event(alice, 1, event="agent_started", agent="demo")
    make_event(alice, 2, event="agent_thinking", agent="calculator", created_at=now - timedelta(days=40))
    make_event(alice, 3, agent="calculator", pending=True, publish_attempts=1, last_error="ConnectionError")
    make_event(alice, 4, agent="planner", pending=True, publish_attempts=3, last_error="TimeoutError: slow")

    assert listed(staff_client, event__exact="agent_started") == [1]
    assert listed(staff_client, agent="calculator") == [2, 3]
    assert listed(staff_client, state="pending") == [3, 4]
    assert listed(staff_client, state="stuck") == [4]
    assert listed(staff_client, state="published") == [1, 2]
    # As the filter's "Past 7 days" link has it.
    week_ago = str((now - timedelta(days=7)).replace(hour=0, minute=0, second=0, microsecond=0))
    assert listed(staff_client, created_at__gte=week_ago) == [1, 3, 4]
    # The agent filter offers each agent once, found without a full scan.
    page = staff_client.get(EVENTS_URL).content.decode()
    assert [name for name in ("calculator", "demo", "planner") if f"?agent={name}" in page] == [
        "calculator",
        "demo",
        "planner",
    ]
    stuck_page = staff_client.get(EVENTS_URL, {"state": "stuck"}).content.decode()
    assert "TimeoutError: slow" in stuck_page and 'alt="True"' in stuck_page


def test_requeue_leaves_events_a_drainer_holds_and_stops_at_the_limit(
    staff_client: Client, alice: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("notifications.admin.COUNT_LIMIT", 2)
    old = timezone.now() - timedelta(minutes=5)
    held = make_event(alice, 1, created_at=old, pending=True)
    for seq in (2, 3, 4):
        make_event(alice, seq, created_at=old)
    # A drainer holds alice's pending events (her one pending event) right now.
    Stream.objects.filter(user=alice).update(drain_leased_until=timezone.now() + timedelta(seconds=30))
    # "Select all" across pages.
    response = staff_client.post(
        EVENTS_URL, {"action": "requeue", "select_across": "1", "_selected_action": [str(held.pk)]}, follow=True
    )
    page = response.content.decode()
    assert "Re-queued 2 event(s)" in page
    assert "1 event(s) are being sent by a drainer right now" in page
    assert "Only the first 2 were re-queued" in page
    assert Event.objects.filter(pending__isnull=False).count() == 3  # the held one and two re-queued
    assert PendingEvent.objects.get(pk=held.pk).publish_attempts == 0
    assert Stream.objects.get(user=alice).drain_leased_until is not None


def test_requeue_puts_published_and_stuck_events_back_for_the_drainer(
    staff_client: Client, alice: Any, settings: Any
) -> None:
    settings.DRAIN_MAX_ATTEMPTS = 3
    old = timezone.now() - timedelta(minutes=5)
    published = make_event(alice, 1, created_at=old)
    stuck = make_event(
        alice,
        2,
        created_at=old,
        pending=True,
        publish_attempts=7,
        next_attempt_at=timezone.now() + timedelta(minutes=5),
        last_error="ConnectionError",
    )
    untouched = make_event(alice, 3, created_at=old)
    response = staff_client.post(
        EVENTS_URL, {"action": "requeue", "_selected_action": [str(published.pk), str(stuck.pk)]}, follow=True
    )
    assert "Re-queued 2 event(s)" in response.content.decode()
    eligible = set(pending_eligible(min_age_seconds=1).values_list("seq", flat=True))
    assert eligible == {1, 2}
    outbox = PendingEvent.objects.get(pk=stuck.pk)
    assert (outbox.publish_attempts, outbox.next_attempt_at, outbox.last_error) == (0, None, "")
    assert PendingEvent.objects.get(pk=published.pk).publish_attempts == 0
    assert untouched.outbox is None


def test_staff_without_change_permission_cannot_requeue(django_user_model: Any, alice: Any) -> None:
    viewer = django_user_model.objects.create_user("viewer", password=None, is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_event"))
    client = Client()
    client.force_login(viewer)
    event = make_event(alice, 1)
    page = client.get(EVENTS_URL)
    assert page.status_code == 200 and "requeue" not in page.content.decode()
    client.post(EVENTS_URL, {"action": "requeue", "_selected_action": [str(event.pk)]})
    assert not PendingEvent.objects.exists()


def test_the_list_costs_the_same_queries_for_any_size_and_never_counts_the_whole_table(
    staff_client: Client, alice: Any, bob: Any, settings: Any
) -> None:
    def queries_for_list() -> list[str]:
        with CaptureQueriesContext(connection) as captured:
            # Asking for facet counts too: they would count every filter choice over the table.
            assert staff_client.get(EVENTS_URL, {"state": "published", "_facets": "1"}).status_code == 200
        return [query["sql"] for query in captured.captured_queries]

    make_event(alice, 1)
    few = queries_for_list()
    for seq in range(2, 40):
        make_event(alice if seq % 2 else bob, seq)
    many = queries_for_list()
    assert len(many) == len(few), "a query per row: related objects are not in the page's query"
    counts = [sql for sql in many if "COUNT(" in sql.upper()]
    assert counts and all(re.search(rf"LIMIT {COUNT_LIMIT + 1}\b", sql) for sql in counts), counts


HOSTILE_VALUES = ["", "'", '"; DROP TABLE x; --', "\x00", "%", "../../", "[" * 5_000, "x" * 10_000, "-1", "1e309", "☃"]


@pytest.mark.parametrize(
    "path", [EVENTS_URL, "/admin/agents/agentrun/", f"{EVENTS_URL}{uuid.uuid4()}/change/", "/admin/agents/agentrun/x/"]
)
def test_hostile_query_parameters_never_reach_a_500(staff_client: Client, path: str) -> None:
    """Every filter, search, ordering and page parameter, given junk: an answer, never an error page."""
    parameters = [
        "q",
        "state",
        "event",
        "agent",
        "status",
        "created_at__gte",
        "created_at__lt",
        "o",
        "p",
        "run_id",
        "e",
    ]
    for name in parameters:
        for value in HOSTILE_VALUES:
            response = staff_client.get(path, {name: value})
            assert response.status_code in {200, 302, 404}, (name, value[:20], response.status_code)
    action = staff_client.post(EVENTS_URL, {"action": "requeue", "_selected_action": HOSTILE_VALUES}, follow=True)
    assert action.status_code == 200
    assert "The selection holds ids that are not valid; nothing was done." in action.content.decode()
