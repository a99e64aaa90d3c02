"""The runs admin: find a run, and read what its agent did as a timeline."""

import re
import uuid
from datetime import timedelta
from typing import Any

from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from agents.admin import TIMELINE_MAX_EVENTS
from agents.models import AgentRun
from notifications.admin import COUNT_LIMIT
from notifications.models import Stream
from tests.notifications.test_admin import make_event

RUNS_URL = "/admin/agents/agentrun/"


def make_run(user: Any, **fields: Any) -> AgentRun:
    now = timezone.now()
    values: dict[str, Any] = {
        "agent": "demo",
        "status": "completed",
        "timeout_seconds": 60,
        "created_at": now,
        "started_at": now,
        "finished_at": now + timedelta(milliseconds=1500),
        **fields,
    }
    return AgentRun.objects.create(user=user, **values)


def listed(client: Client, **params: Any) -> set[uuid.UUID]:
    response = client.get(RUNS_URL, params)
    assert response.status_code == 200
    return {run.id for run in response.context["cl"].result_list}


def test_runs_are_listed_with_duration_and_found_by_filter_and_search(
    staff_client: Client, alice: Any, bob: Any
) -> None:
    done = make_run(alice)
    failed = make_run(alice, agent="calculator", status="failed")
    running = make_run(bob, status="running", finished_at=None)
    page = staff_client.get(RUNS_URL).content.decode()
    assert "1.500 s" in page
    assert listed(staff_client, status__exact="failed") == {failed.id}
    assert listed(staff_client, agent="demo") == {done.id, running.id}
    assert listed(staff_client, q="alice") == {done.id, failed.id}
    assert listed(staff_client, q=str(running.id)) == {running.id}
    assert staff_client.get(f"{RUNS_URL}add/").status_code == 403


def test_a_runs_page_shows_its_events_in_order_as_a_timeline(staff_client: Client, alice: Any) -> None:
    run = make_run(alice)
    start = timezone.now()
    steps = [
        ("agent_started", {"input": {"steps": 1}}),
        ("agent_thinking", {"thought": "<b>bold?</b> counting", "step": 1}),
        ("tool_executing", {"call_id": "c1", "tool": "word_count", "args": {"text": "a b"}}),
        ("tool_completed", {"call_id": "c1", "tool": "word_count", "ok": True, "result": 2, "duration_ms": 3}),
        ("agent_completed", {"result": {"words": 2}, "duration_ms": 40}),
    ]
    # Stored out of order: the page orders by seq.
    for seq in (3, 1, 5, 2, 4):
        event, data = steps[seq - 1]
        make_event(alice, seq, run_id=run.id, event=event, data=data, created_at=start + timedelta(milliseconds=seq))
    Stream.objects.filter(user=alice).update(acked_seq=3)

    page = staff_client.get(f"{RUNS_URL}{run.id}/change/").content.decode()
    positions = [page.index(f">{event}</strong>") for event, _ in steps]
    assert positions == sorted(positions)
    assert "word_count → 2 (3 ms)" in page
    assert "&lt;b&gt;bold?&lt;/b&gt; counting" in page and "<b>bold?</b>" not in page
    assert page.count(">delivered<") == 3
    assert f'?q={run.id}">These events in the event log' in page


def test_the_timeline_shows_for_a_user_without_a_stream_row(staff_client: Client, alice: Any) -> None:
    run = make_run(alice)
    make_event(alice, 1, run_id=run.id, event="agent_started", data={"input": {}})
    Stream.objects.filter(user=alice).delete()  # imported or hand-made data
    page = staff_client.get(f"{RUNS_URL}{run.id}/change/").content.decode()
    assert ">agent_started</strong>" in page and ">delivered<" not in page


def test_the_runs_list_costs_the_same_queries_for_any_size(staff_client: Client, alice: Any, bob: Any) -> None:
    def queries_for_list() -> list[str]:
        with CaptureQueriesContext(connection) as captured:
            assert staff_client.get(RUNS_URL, {"status__exact": "completed", "_facets": "1"}).status_code == 200
        return [query["sql"] for query in captured.captured_queries]

    for index in range(3):  # (the agent filter costs one index seek per distinct agent)
        make_run(alice, agent=f"agent{index}")
    few = queries_for_list()
    for index in range(30):
        make_run(alice if index % 2 else bob, agent=f"agent{index % 3}")
    many = queries_for_list()
    assert len(many) == len(few)
    counts = [sql for sql in many if "COUNT(" in sql.upper()]
    assert counts and all(re.search(rf"LIMIT {COUNT_LIMIT + 1}\b", sql) for sql in counts), counts


def test_a_long_timeline_is_cut_with_a_link_to_the_rest(staff_client: Client, alice: Any) -> None:
    run = make_run(alice)
    for seq in range(1, TIMELINE_MAX_EVENTS + 3):
        make_event(alice, seq, run_id=run.id)
    page = staff_client.get(f"{RUNS_URL}{run.id}/change/").content.decode()
    assert page.count("<tr><td><a href=") == TIMELINE_MAX_EVENTS
    assert f"Only the first {TIMELINE_MAX_EVENTS} events are shown" in page
