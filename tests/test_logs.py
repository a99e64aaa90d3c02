"""Server logs: JSON lines on request, an access log without query strings, and never a token."""

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from tests.servers import DaphneServer
from tests.wsclient import access_token, ws_connect

PASSWORD = "log-test-password"


def request(url: str, body: dict[str, Any] | None = None, token: str | None = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        with error:
            return error.code, None


async def test_json_logs_carry_requests_and_connections_but_no_token(
    daphne_factory: Callable[..., DaphneServer], redis_url: str, make_user: Callable[..., Any]
) -> None:
    server = daphne_factory(redis_url=redis_url, LOG_FORMAT="json")
    user = await asyncio.to_thread(make_user, "logged")
    await asyncio.to_thread(_set_password, user)
    status, pair = await asyncio.to_thread(
        request, f"{server.http_url}/api/auth/token/", {"username": "logged", "password": PASSWORD}
    )
    assert status == 200
    secrets = [pair["access"], pair["refresh"], PASSWORD, access_token(user)]
    # Every way a token travels: a header, the WebSocket's subprotocol, an auth message, a refresh
    # body, a query string a careless client added, and a forged token that gets refused.
    await asyncio.to_thread(request, f"{server.http_url}/api/runs/", token=pair["access"])
    await asyncio.to_thread(request, f"{server.http_url}/api/auth/token/refresh/", {"refresh": pair["refresh"]})
    await asyncio.to_thread(request, f"{server.http_url}/api/events/?token={pair['access']}", token=pair["access"])
    async with ws_connect(server.ws_url, pair["access"]) as client:
        await client.send({"type": "auth", "token": secrets[3]})
        await client.expect("auth.ok")
        await client.send({"type": "auth", "token": pair["refresh"]})
        assert (await client.expect("error"))["code"] == "invalid_token"
    forged = pair["access"][:-4] + "AAAA"
    secrets.append(forged)
    async with ws_connect(server.ws_url + f"?token={forged}", forged, hello=False) as client:
        assert await client.first_close_code() == 4401

    server.stop()  # (everything is written)
    lines = server.log().splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(record) for record in records)
    requests = [record["request"] for record in records if record["logger"] == "access"]
    assert requests[:4] == [
        "POST /api/auth/token/",
        "GET /api/runs/",
        "POST /api/auth/token/refresh/",
        "GET /api/events/?…",
    ]
    assert requests.count("WSCONNECT /ws/notifications/") == 2
    text = "\n".join(lines)
    for secret in secrets:
        assert secret not in text
    assert "token=" not in text


def _set_password(user: Any) -> None:
    user.set_password(PASSWORD)
    user.save()
