"""Helpers for tests that drive real server and worker processes over HTTP and WebSocket."""

import asyncio
import json
import urllib.request
from typing import Any

import psycopg
from websockets.exceptions import ConnectionClosed

from tests.servers import DaphneServer
from tests.wsclient import Client


def post(url: str, body: dict[str, Any], token: str | None = None) -> dict[str, Any]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


async def login(server: DaphneServer, username: str, password: str) -> str:
    pair = await asyncio.to_thread(
        post, f"{server.http_url}/api/auth/token/", {"username": username, "password": password}
    )
    return str(pair["access"])


async def start_run(
    server: DaphneServer, token: str, agent: str, input: dict[str, Any], *, timeout: float | None = None
) -> str:
    body: dict[str, Any] = {"agent": agent, "input": input}
    if timeout is not None:
        body["timeout"] = timeout
    run = await asyncio.to_thread(post, f"{server.http_url}/api/runs/", body, token)
    return str(run["id"])


def of_run(frames: list[dict[str, Any]], run_id: str) -> list[tuple[int, str]]:
    return [(frame["seq"], frame["event"]) for frame in frames if frame["run_id"] == run_id]


async def events_until_closed(client: Client, *, timeout: float = 15.0) -> tuple[list[dict[str, Any]], int | None]:
    """Collect event frames until the server closes; return them and the close code."""
    frames: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        try:
            while True:
                frame = await client.frame()
                if frame["type"] == "event":
                    frames.append(frame)
        except ConnectionClosed as exc:
            return frames, exc.rcvd.code if exc.rcvd is not None else None


async def until_event(client: Client, event: str, *, timeout: float = 15.0) -> list[dict[str, Any]]:
    """Collect event frames up to and including the first ``event``."""
    frames: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while not frames or frames[-1]["event"] != event:
            frames += await client.events(1, timeout=timeout)
    return frames


def run_row(database_url: str, run_id: str) -> tuple[str, dict[str, Any] | None]:
    """A run's status and error, read as an operator would."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT status, error FROM agents_agentrun WHERE id = %s", [run_id]).fetchone()
    assert row is not None, f"no run {run_id}"
    return str(row[0]), row[1]


def run_log(database_url: str, run_id: str) -> list[tuple[int, str, dict[str, Any]]]:
    """A run's events in the log: (seq, event, data) in seq order."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT seq, event, data FROM notifications_event WHERE run_id = %s ORDER BY seq", [run_id]
        ).fetchall()
    return [(int(seq), str(event), data) for seq, event, data in rows]


async def until_run_ended(database_url: str, run_id: str, *, timeout: float = 30.0) -> tuple[str, Any]:
    """Poll the run's row (nothing else to wait on from outside the processes) until it has ended."""
    async with asyncio.timeout(timeout):
        while True:
            status, error = await asyncio.to_thread(run_row, database_url, run_id)
            if status not in ("queued", "running"):
                return status, error
            await asyncio.sleep(0.05)


async def until_logged(database_url: str, run_id: str, count: int, *, timeout: float = 30.0) -> None:
    """Poll until the run has at least ``count`` events in the log."""
    async with asyncio.timeout(timeout):
        while True:
            if len(await asyncio.to_thread(run_log, database_url, run_id)) >= count:
                return
            await asyncio.sleep(0.05)
