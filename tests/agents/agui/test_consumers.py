"""The AG-UI consumer in this process: refusals like the REST API's, whole streams, keep-alives and cleanup."""

import itertools
import json
from datetime import timedelta
from typing import Any

import pytest
from channels.routing import URLRouter
from channels.testing import ApplicationCommunicator

from agents.agui.routing import http_urlpatterns
from agents.models import AgentRun
from notifications.services import user_group_name
from tests.agents.agui.conftest import SseEvent, agui_validate, sse_parse
from tests.conftest import ChannelLayers
from tests.wsclient import access_token, expired_token

APP = URLRouter(http_urlpatterns)
RUN_INPUT = {"threadId": "t-1", "runId": "r-1", "messages": []}
TIMEOUT_SECONDS = 5.0


def http_scope(method: str, path: str, headers: dict[str, str]) -> dict[str, Any]:
    path, _, query = path.partition("?")
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(key.lower().encode(), value.encode()) for key, value in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }


async def request(
    method: str, path: str, *, token: str | None = None, body: Any = None, headers: dict[str, str] | None = None
) -> ApplicationCommunicator:
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    communicator = ApplicationCommunicator(APP, http_scope(method, path, sent))
    payload = body if isinstance(body, bytes) else (b"" if body is None else json.dumps(body).encode())
    await communicator.send_input({"type": "http.request", "body": payload, "more_body": False})
    return communicator


async def answer(communicator: ApplicationCommunicator) -> tuple[int, dict[bytes, bytes], bytes]:
    """The whole response: status, headers and body (the application must end it by itself).

    The application is waited for before its messages are read. Read while it
    still runs, its worker-thread ORM calls each kept a pooled connection out of
    the pool on PostgreSQL (the test harness's, not the server's: daphne's pool
    does not lose them), and a module of these tests ran the pool dry.
    """
    await communicator.wait(TIMEOUT_SECONDS)
    start = await communicator.receive_output(TIMEOUT_SECONDS)
    assert start["type"] == "http.response.start", start
    body = b""
    while True:
        message = await communicator.receive_output(TIMEOUT_SECONDS)
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    return start["status"], dict(start["headers"]), body


async def refusal(communicator: ApplicationCommunicator) -> tuple[int, str]:
    status, headers, body = await answer(communicator)
    assert headers[b"content-type"] == b"application/json"
    document = json.loads(body)
    assert set(document) == {"code", "detail"}, document
    return status, document["code"]


@pytest.mark.parametrize(
    ("token", "code"),
    [(None, "not_authenticated"), ("junk", "token_not_valid")],
)
async def test_a_request_without_a_valid_token_is_refused_401(alice: Any, token: str | None, code: str) -> None:
    communicator = await request("POST", "/api/ag-ui/demo/", token=token, body=RUN_INPUT)
    assert await refusal(communicator) == (401, code)
    assert not await AgentRun.objects.aexists()


async def test_an_expired_token_is_refused_401(alice: Any) -> None:
    communicator = await request("POST", "/api/ag-ui/demo/", token=expired_token(alice), body=RUN_INPUT)
    assert await refusal(communicator) == (401, "token_not_valid")


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        ([1, 2], 400, "invalid_message"),
        ({"runId": "r", "messages": []}, 400, "invalid_message"),
        ({**RUN_INPUT, "threadId": "x" * 201}, 400, "invalid_message"),
        ({**RUN_INPUT, "messages": {}}, 400, "invalid_message"),
        ({**RUN_INPUT, "forwardedProps": []}, 400, "invalid_message"),
        ({**RUN_INPUT, "forwardedProps": {"input": {"steps": 0}}}, 400, "invalid_message"),
        ({**RUN_INPUT, "forwardedProps": {"input": {}, "timeout": -1}}, 400, "invalid_message"),
        ({**RUN_INPUT, "forwardedProps": {"input": {"x": "y" * 20_000}}}, 400, "invalid_message"),
    ],
)
async def test_a_bad_run_agent_input_is_refused_as_post_api_runs_refuses_it(
    alice: Any, body: Any, status: int, code: str
) -> None:
    communicator = await request("POST", "/api/ag-ui/demo/", token=access_token(alice), body=body)
    assert await refusal(communicator) == (status, code)
    assert not await AgentRun.objects.aexists()


async def test_a_body_over_djangos_limit_is_refused_as_the_rest_api_refuses_it(alice: Any, settings: Any) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 100
    body = {**RUN_INPUT, "messages": [{"id": "m", "role": "user", "content": "x" * 100}]}
    communicator = await request("POST", "/api/ag-ui/demo/", token=access_token(alice), body=body)
    assert await refusal(communicator) == (400, "bad_request")
    assert not await AgentRun.objects.aexists()


async def test_an_unknown_agent_is_not_found(alice: Any) -> None:
    communicator = await request("POST", "/api/ag-ui/nope/", token=access_token(alice), body=RUN_INPUT)
    assert await refusal(communicator) == (404, "unknown_agent")


async def test_the_active_run_limit_applies(alice: Any, settings: Any) -> None:
    settings.AGENT_MAX_ACTIVE_RUNS_PER_USER = 0
    communicator = await request("POST", "/api/ag-ui/demo/", token=access_token(alice), body=RUN_INPUT)
    assert await refusal(communicator) == (429, "too_many_runs")


async def test_the_start_rate_limit_is_the_rest_apis(alice: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from rest_framework.throttling import SimpleRateThrottle

    monkeypatch.setitem(SimpleRateThrottle.THROTTLE_RATES, "runs", "1/min")
    first = await request("POST", "/api/ag-ui/calculator/", token=access_token(alice), body=ok_input("1+1"))
    assert (await answer(first))[0] == 200
    second = await request("POST", "/api/ag-ui/calculator/", token=access_token(alice), body=ok_input("1+1"))
    status, headers, _ = await answer(second)
    assert status == 429 and int(headers[b"retry-after"]) > 0


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/api/ag-ui/demo/"), ("POST", "/api/ag-ui/demo/runs/00000000-0000-0000-0000-000000000000/")],
)
async def test_the_wrong_method_is_refused_405(alice: Any, method: str, path: str) -> None:
    communicator = await request(method, path, token=access_token(alice), body=RUN_INPUT if method == "POST" else None)
    assert await refusal(communicator) == (405, "method_not_allowed")


def ok_input(expression: str) -> dict[str, Any]:
    return {**RUN_INPUT, "forwardedProps": {"input": {"expression": expression}}}


async def whole_stream(alice: Any) -> tuple[dict[bytes, bytes], list[SseEvent]]:
    communicator = await request("POST", "/api/ag-ui/calculator/", token=access_token(alice), body=ok_input("2*(3+4)"))
    status, headers, body = await answer(communicator)
    assert status == 200 and headers[b"content-type"] == b"text/event-stream; charset=utf-8"
    events, _ = sse_parse(body.decode())
    return headers, events


async def test_a_run_streams_as_agui_with_log_positions_as_ids_and_ends_after_run_finished(alice: Any) -> None:
    headers, events = await whole_stream(alice)
    run = await AgentRun.objects.aget()
    assert headers[b"content-location"].decode() == f"/api/ag-ui/calculator/runs/{run.id}/?threadId=t-1"
    assert events[0].data == {**events[0].data, "type": "RUN_STARTED", "threadId": "t-1", "runId": str(run.id)}
    assert events[-1].data["type"] == "RUN_FINISHED" and events[-1].data["result"] == 14
    # Ids: <seq>.<n> inside a group, plain <seq> on its last event; seqs increase.
    ids = [str(event.id) for event in events]
    groups = [sse_id.split(".")[0] for sse_id in ids]
    assert None not in [event.id for event in events] and groups == sorted(groups, key=int)
    for sse_id, following in itertools.pairwise(ids):
        assert ("." in sse_id) == (sse_id.split(".")[0] == following.split(".")[0]), ids
    for event in events:
        agui_validate(event.data)


async def test_resume_refuses_a_bad_last_event_id_and_other_agents_paths(alice: Any) -> None:
    await whole_stream(alice)
    run = await AgentRun.objects.aget()
    for bad in ("abc", "1.2.3", "-1", "01"):
        communicator = await request(
            "GET", f"/api/ag-ui/calculator/runs/{run.id}/", token=access_token(alice), headers={"Last-Event-ID": bad}
        )
        assert await refusal(communicator) == (400, "invalid_last_event_id"), bad
    communicator = await request("GET", f"/api/ag-ui/demo/runs/{run.id}/", token=access_token(alice))
    assert await refusal(communicator) == (404, "not_found")


async def test_an_idle_stream_gets_keepalives_and_leaves_its_group_when_the_client_goes(
    alice: Any, settings: Any, channel_layers: ChannelLayers
) -> None:
    layer = channel_layers("memory")
    settings.AGUI_KEEPALIVE_SECONDS = 0.05
    communicator = await request("POST", "/api/ag-ui/test_hangs/", token=access_token(alice), body=RUN_INPUT)
    start = await communicator.receive_output(TIMEOUT_SECONDS)
    assert start["status"] == 200
    received = b""
    while received.count(b": keep-alive\n\n") < 3:
        received += (await communicator.receive_output(TIMEOUT_SECONDS))["body"]
    events, comments = sse_parse(received.decode())
    assert [event.data["type"] for event in events][:3] == ["RUN_STARTED", "STEP_STARTED", "REASONING_START"]
    assert comments.count("keep-alive") >= 3
    assert layer.groups.get(user_group_name(alice.pk))
    await communicator.send_input({"type": "http.disconnect"})
    await communicator.wait(TIMEOUT_SECONDS)
    assert not layer.groups.get(user_group_name(alice.pk))


async def test_the_stream_ends_when_its_token_expires_and_the_run_goes_on(alice: Any, settings: Any) -> None:
    settings.AGUI_KEEPALIVE_SECONDS = 0.05
    token = access_token(alice, lifetime=timedelta(seconds=1))
    communicator = await request("POST", "/api/ag-ui/test_hangs/", token=token, body=RUN_INPUT)
    status, _, body = await answer(communicator)  # Ends by itself, without the run's end.
    # (A token's exp is whole seconds: this one lasts from a moment to a second, so keep-alives may not come.)
    events, _ = sse_parse(body.decode())
    assert status == 200
    assert [event.data["type"] for event in events][:2] == ["RUN_STARTED", "STEP_STARTED"]
    assert not [event for event in events if event.data["type"] in {"RUN_FINISHED", "RUN_ERROR"}]
    assert (await AgentRun.objects.aget()).status == "running"
