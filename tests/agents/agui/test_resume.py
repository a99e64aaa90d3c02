"""A stream cut mid-run and resumed with Last-Event-ID, over a real daphne: every AG-UI event once, in order."""

import asyncio
from typing import Any

import pytest

from agents.agui.events import agui_events
from agents.agui.sse import sse_ids
from notifications.frames import event_frame
from notifications.models import Event
from tests.agents.agui.conftest import SseAnswer, SseEvent, agui_validate, sse_request
from tests.servers import DaphneServer
from tests.wsclient import access_token

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("server_log_clean", "runs_stopped")]

RUN_INPUT = {"threadId": "thread-1", "runId": "client-run-1", "messages": [], "state": {}, "tools": [], "context": []}


async def expected_stream(run_id: str, thread_id: str) -> list[SseEvent]:
    """What a whole stream of the run is: its logged events, mapped, with their ids."""
    expected: list[SseEvent] = []
    async for event in Event.objects.filter(run_id=run_id).order_by("seq"):
        group = agui_events(event_frame(event), thread_id=thread_id)
        expected += [SseEvent(sse_id, data) for sse_id, data in zip(sse_ids(event.seq, len(group)), group, strict=True)]
    return expected


async def post(daphne: DaphneServer, token: str, *, cut_after: int | None = None) -> SseAnswer:
    body = {**RUN_INPUT, "forwardedProps": {"input": {"steps": 4, "delay": 0.15}}}
    return await asyncio.to_thread(
        sse_request, f"{daphne.http_url}/api/ag-ui/demo/", token=token, body=body, cut_after=cut_after
    )


async def resume(daphne: DaphneServer, token: str, first: SseAnswer, last_event_id: str) -> SseAnswer:
    url = daphne.http_url + first.headers["content-location"]
    return await asyncio.to_thread(sse_request, url, token=token, headers={"Last-Event-ID": last_event_id})


@pytest.mark.parametrize("cut_inside_a_group", [False, True], ids=["between-events", "inside-a-group"])
async def test_a_cut_stream_resumes_with_every_event_once_in_order(
    daphne: DaphneServer, alice: Any, cut_inside_a_group: bool
) -> None:
    token = access_token(alice)
    # RUN_STARTED, STEP_STARTED, then the first thought's five events: cut after its second.
    first = await post(daphne, token, cut_after=4 if cut_inside_a_group else 7)
    assert (first.status, first.ended) == (200, False), first
    last_id = first.events[-1].id
    assert last_id is not None
    assert ("." in last_id) is cut_inside_a_group, last_id
    second = await resume(daphne, token, first, last_id)
    assert (second.status, second.ended) == (200, True), second
    run_id = first.events[0].data["runId"]
    assert first.headers["content-location"] == f"/api/ag-ui/demo/runs/{run_id}/?threadId=thread-1"
    received = first.events + second.events
    assert received == await expected_stream(run_id, "thread-1")
    assert [e.data["type"] for e in received][-2:] == ["STEP_FINISHED", "RUN_FINISHED"]
    assert all(e.data["type"] not in {"RUN_FINISHED", "RUN_ERROR"} for e in received[:-1])
    for event in received:
        agui_validate(event.data)


async def test_a_resume_of_a_finished_run_replays_the_rest_and_ends(daphne: DaphneServer, alice: Any) -> None:
    token = access_token(alice)
    whole = await post(daphne, token)
    assert (whole.status, whole.ended) == (200, True)
    run_id = whole.events[0].data["runId"]
    assert whole.events == await expected_stream(run_id, "thread-1")
    for cut in (1, 5, len(whole.events) - 1):
        rest = await resume(daphne, token, whole, str(whole.events[cut - 1].id))
        assert (rest.status, rest.ended, rest.events) == (200, True, whole.events[cut:])
    after_the_end = await resume(daphne, token, whole, str(whole.events[-1].id))
    assert (after_the_end.status, after_the_end.ended, after_the_end.events) == (200, True, [])
    from_the_start = await asyncio.to_thread(
        sse_request, daphne.http_url + whole.headers["content-location"], token=token
    )
    assert from_the_start.events == whole.events


async def test_another_users_run_is_not_found(daphne: DaphneServer, alice: Any, bob: Any) -> None:
    whole = await post(daphne, access_token(alice))
    answer = await asyncio.to_thread(
        sse_request, daphne.http_url + whole.headers["content-location"], token=access_token(bob)
    )
    assert (answer.status, answer.events) == (404, [])
    assert b'"code":"not_found"' in answer.body
