"""Outages of PostgreSQL and Redis under a running server: fast, honest answers, and nothing lost.

A daphne server runs on a PostgreSQL cluster and a Redis of this module's
own, which the tests stop and start under it (``pg_ctl stop -m fast``, as a
crash or failover would). Timing bounds are measured by the tests, with
margins over the targets in README ("Outages"); nothing here sleeps.
"""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from notifications.metrics import PENDING_QUERY_TIMEOUT_SECONDS
from tests.agents.conftest import assert_lifecycle
from tests.conftest import SESSION_PREFIX
from tests.scrape import parse, value
from tests.servers import (
    ROOT,
    DaphneServer,
    HttpAnswer,
    LineReader,
    PostgresCluster,
    RedisServer,
    WorkerProcess,
    http_request,
    started,
    wait_for,
)
from tests.wsclient import Client, ws_connect

pytestmark = pytest.mark.e2e

PASSWORD = "outage-password"
HEARTBEAT_SECONDS = 0.3
# Targets (README, "Outages") and the margins the tests allow over them on a shared machine.
HEALTH_DOWN_SECONDS = 2.0
API_DOWN_SECONDS = 2.0 + 1.0
RECOVERY_SECONDS = 2.0 + 1.0
# A demo run that is still going when the database is stopped under it.
LONG_DEMO_INPUT = '{"steps": 50, "delay": 0.05}'
# The end of a run is retried at most AGENT_END_RETRY_MAX_SECONDS (1 s) apart, after a probe (0.5 s).
RUN_END_AFTER_RECOVERY_SECONDS = 1.5 + 1.5


@dataclass
class Stack:
    cluster: PostgresCluster
    redis: RedisServer
    server: DaphneServer
    user_id: int
    token: str

    @property
    def database_url(self) -> str:
        return self.cluster.url("app")

    def get(self, path: str, **kwargs: Any) -> HttpAnswer:
        return http_request(f"{self.server.http_url}{path}", token=self.token, timeout=20, **kwargs)

    async def aget(self, path: str, **kwargs: Any) -> HttpAnswer:
        return await asyncio.to_thread(self.get, path, **kwargs)

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.database_url, connect_timeout=5) as connection:
            return connection.execute(sql, params).fetchall()

    def log(self, *, run_id: str | None = None) -> list[tuple[int, str, dict[str, Any]]]:
        """The user's events in the log, in seq order (those of one run, if given)."""
        rows = self.query(
            "SELECT seq, event, data, run_id::text FROM notifications_event WHERE user_id = %s ORDER BY seq",
            self.user_id,
        )
        return [(seq, event, data) for seq, event, data, run in rows if run_id is None or run == run_id]

    def run_row(self, run_id: str) -> tuple[str, Any]:
        [(status, error)] = self.query("SELECT status, error FROM agents_agentrun WHERE id = %s", run_id)
        return status, error

    def pending(self) -> int:
        [(count,)] = self.query("SELECT count(*) FROM notifications_pendingevent")
        return int(count)

    async def start_run(self, input: dict[str, Any]) -> str:
        answer = await self.aget("/api/runs/", body={"agent": "demo", "input": input})
        assert answer.status == 201, answer.body
        return str(answer.json()["id"])

    def wait_healthy(self, *, timeout: float) -> float:
        """Poll /healthz until it says 200; return how long that took."""
        started = time.monotonic()
        wait_for(lambda: self.get("/healthz").status == 200, timeout=timeout, what="/healthz to answer 200")
        return time.monotonic() - started


def shell(code: str, *, database_url: str) -> None:
    """Run Python in a management shell on the cluster, with an in-memory layer (no publish reaches Redis)."""
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": ""}
    subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def stack(
    postgres_cluster_factory: Callable[[], PostgresCluster],
    redis_server_factory: Callable[[], RedisServer],
    daphne_factory: Callable[..., DaphneServer],
) -> Iterator[Stack]:
    cluster = postgres_cluster_factory()
    redis = redis_server_factory()
    shell(
        "from django.contrib.auth import get_user_model; "
        f"get_user_model().objects.create_user('outage', password='{PASSWORD}')",
        database_url=cluster.url("app"),
    )
    server = daphne_factory(
        redis_url=redis.url,
        DATABASE_URL=cluster.url("app"),
        WS_HEARTBEAT_SECONDS=str(HEARTBEAT_SECONDS),
        AGENT_LOST_GRACE_SECONDS="600",  # No reaper here: runs must end by themselves.
    )
    login = http_request(f"{server.http_url}/api/auth/token/", body={"username": "outage", "password": PASSWORD})
    assert login.status == 200, login.body
    with psycopg.connect(cluster.url("app")) as connection:
        [(user_id,)] = connection.execute("SELECT id FROM auth_user").fetchall()
    stack = Stack(cluster=cluster, redis=redis, server=server, user_id=user_id, token=login.json()["access"])
    yield stack
    if not cluster.running():
        cluster.start()


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[Client]:
    """A live socket of the stack's user, on a healthy stack."""
    if not stack.cluster.running():
        stack.cluster.start()
    await asyncio.to_thread(stack.wait_healthy, timeout=10)
    async with ws_connect(stack.server.ws_url, stack.token) as client:
        yield client


async def test_postgres_outage_gets_fast_answers_and_recovers_at_once(stack: Stack, client: Client) -> None:
    assert (await stack.aget("/healthz")).status == 200
    await asyncio.to_thread(stack.cluster.stop)

    health = await stack.aget("/healthz")
    assert health.status == 503 and health.seconds < HEALTH_DOWN_SECONDS, (health.status, health.seconds)
    assert health.json()["database"] == {"ok": False, "error": health.json()["database"]["error"]}
    assert health.json()["channel_layer"]["ok"] is True

    runs = await stack.aget("/api/runs/")
    assert runs.status == 503 and runs.seconds < API_DOWN_SECONDS, (runs.status, runs.seconds)
    assert runs.json() == {"code": "unavailable", "detail": "The database is unavailable; try again shortly."}
    # Known down now: every answer is immediate, and still honest.
    answers = [await stack.aget(path) for path in ("/healthz", "/api/runs/", "/api/events/", "/healthz")]
    assert [answer.status for answer in answers] == [503] * 4
    assert max(answer.seconds for answer in answers) < 0.5, [answer.seconds for answer in answers]

    started = time.monotonic()
    async with ws_connect(stack.server.ws_url, stack.token, hello=False) as refused:
        assert await refused.first_close_code(timeout=API_DOWN_SECONDS) == 4503
    assert time.monotonic() - started < API_DOWN_SECONDS

    # The live socket stays open through the outage; what needs the database is refused, clearly.
    await client.send({"type": "ping", "ref": "during"})
    assert await client.recv() == {"type": "pong", "ref": "during"}
    await client.send({"type": "run.start", "agent": "demo", "input": {}})
    refusal = await client.expect("error")
    assert refusal["code"] == "unavailable"

    await asyncio.to_thread(stack.cluster.start)
    recovered_in = await asyncio.to_thread(stack.wait_healthy, timeout=10)
    assert recovered_in < RECOVERY_SECONDS, recovered_in
    assert (await stack.aget("/api/runs/")).status == 200

    # It catches up from the log: an event written by another process and never
    # published arrives with the next heartbeat.
    await asyncio.to_thread(
        shell,
        "import uuid; from notifications.services import event_record; "
        f"event_record(user_id={stack.user_id}, event='agent_started', run_id=uuid.uuid4(), "
        "agent='elsewhere', data={})",
        database_url=stack.database_url,
    )
    [event] = await client.events(1, timeout=5)
    assert event["agent"] == "elsewhere" and event["seq"] == stack.log()[-1][0]
    async with ws_connect(stack.server.ws_url, stack.token) as fresh:
        await fresh.send({"type": "ping"})
        assert await fresh.recv() == {"type": "pong"}


async def test_a_scrape_with_postgres_down_answers_in_bound_and_says_the_pending_query_failed(
    stack: Stack, client: Client
) -> None:
    up = await pending_query_back(stack)
    await asyncio.to_thread(stack.cluster.stop)
    async with ws_connect(stack.server.ws_url, stack.token, hello=False) as refused:
        assert await refused.first_close_code(timeout=API_DOWN_SECONDS) == 4503
    scrape = await stack.aget("/metrics")
    assert scrape.status == 200 and scrape.seconds < PENDING_QUERY_TIMEOUT_SECONDS + 0.5, scrape.seconds
    down = parse(scrape.body.decode())
    assert value(down, "agentstream_pending_query_ok") == 0.0
    assert ("agentstream_pending_events", ()) not in down
    assert (
        value(down, "agentstream_database_errors_total", operation="connect")
        == value(up, "agentstream_database_errors_total", operation="connect") + 1
    )
    assert (
        value(down, "agentstream_ws_connects_total", result="4503")
        == value(up, "agentstream_ws_connects_total", result="4503") + 1
    )
    await asyncio.to_thread(stack.cluster.start)
    await asyncio.to_thread(stack.wait_healthy, timeout=10)
    await pending_query_back(stack)


async def pending_query_back(stack: Stack) -> dict[Any, float]:
    """Scrape until the pending query works again (just after an outage the pool may still be reconnecting)."""
    async with asyncio.timeout(RECOVERY_SECONDS + PENDING_QUERY_TIMEOUT_SECONDS):
        while True:
            samples = parse((await stack.aget("/metrics")).body.decode())
            if value(samples, "agentstream_pending_query_ok") == 1:
                return samples
            await asyncio.sleep(0.05)


async def test_a_run_whose_events_cannot_be_written_ends_once_as_unavailable(stack: Stack, client: Client) -> None:
    run_id = await stack.start_run(json.loads(LONG_DEMO_INPUT))
    first = await client.events(2, timeout=10)
    assert [frame["event"] for frame in first] == ["agent_started", "agent_thinking"]
    written_before = len(stack.log(run_id=run_id))

    since = stack.server.log_size()
    await asyncio.to_thread(stack.cluster.stop)
    await asyncio.to_thread(
        wait_for,
        lambda: "it ends as unavailable" in stack.server.log()[since:],
        timeout=10,
        what="the run to find its events cannot be written",
    )
    await asyncio.to_thread(stack.cluster.start)
    restarted = time.monotonic()

    received = first + await _events_until_end(client, run_id, timeout=10)
    assert time.monotonic() - restarted < RUN_END_AFTER_RECOVERY_SECONDS
    assert received[-1]["event"] == "agent_error"
    assert received[-1]["data"]["kind"] == "unavailable"
    assert received[-1]["data"]["message"] == (
        "The run's events could not be recorded because the database was unavailable."
    )

    status, error = await asyncio.to_thread(stack.run_row, run_id)
    assert status == "failed" and error["kind"] == "unavailable"
    log = await asyncio.to_thread(stack.log, run_id=run_id)
    assert len(log) >= written_before
    assert_lifecycle([(name, data) for _, name, data in log])
    # Everything the run wrote, once each, in order, and what the client saw is the log.
    assert [(frame["seq"], frame["event"]) for frame in received] == [(seq, name) for seq, name, _ in log]
    assert _gapless(await asyncio.to_thread(stack.log))


@pytest.mark.parametrize("first_back", ["redis", "postgres"])
async def test_redis_and_postgres_down_then_back_lose_nothing(stack: Stack, client: Client, first_back: str) -> None:
    with _Drainer(stack) as drainer:
        run_id = await stack.start_run(json.loads(LONG_DEMO_INPUT))
        first = await client.events(2, timeout=10)
        since = stack.server.log_size()
        # Before the stops: the drainer may find the database gone while the cluster is stopping.
        drainer_since = len(drainer.log())
        await asyncio.to_thread(stack.redis.stop)
        await asyncio.to_thread(stack.cluster.stop)
        await asyncio.to_thread(
            wait_for,
            lambda: (
                "it ends as unavailable" in stack.server.log()[since:]
                and "Database unavailable" in drainer.log()[drainer_since:]
            ),
            timeout=10,
            what="the run and the drainer to find the database gone",
        )
        for part in ["redis", "postgres"] if first_back == "redis" else ["postgres", "redis"]:
            await asyncio.to_thread(stack.redis.start if part == "redis" else stack.cluster.start)

        received = first + await _events_until_end(client, run_id, timeout=15)
        log = await asyncio.to_thread(stack.log, run_id=run_id)
        assert_lifecycle([(name, data) for _, name, data in log])
        assert log[-1][1] == "agent_error" and log[-1][2]["kind"] == "unavailable"
        assert [(frame["seq"], frame["event"]) for frame in received] == [(seq, name) for seq, name, _ in log]
        assert _gapless(await asyncio.to_thread(stack.log))

        # The drainer publishes whatever the server could not, and both processes live on.
        await asyncio.to_thread(wait_for, lambda: stack.pending() == 0, timeout=15, what="no pending events")
        assert (
            drainer.process.poll() is None and stack.server.process is not None and stack.server.process.poll() is None
        )
        assert "Traceback" not in drainer.log(), drainer.log()
        await asyncio.to_thread(stack.wait_healthy, timeout=10)
        # The socket lived through both outages and still works.
        await client.send({"type": "ping", "ref": "after"})
        assert await client.recv() == {"type": "pong", "ref": "after"}


async def _events_until_end(client: Client, run_id: str, *, timeout: float) -> list[dict[str, Any]]:
    """Collect the run's events from the socket until its terminal one."""
    received: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while not received or received[-1]["event"] not in {"agent_completed", "agent_error"}:
            frame = await client.recv(timeout=timeout)
            assert frame["type"] == "event", frame
            if frame["run_id"] == run_id:
                received.append(frame)
    return received


def _gapless(log: list[tuple[int, str, dict[str, Any]]]) -> bool:
    return [seq for seq, _, _ in log] == list(range(log[0][0], log[0][0] + len(log)))


class _Drainer:
    """``drain_events`` following the stack, stopped (SIGTERM, bounded) on the way out."""

    def __init__(self, stack: Stack) -> None:
        self.env = {
            **os.environ,
            "DATABASE_URL": stack.database_url,
            "REDIS_URL": stack.redis.url,
            "CHANNEL_LAYER_PREFIX": SESSION_PREFIX,
            "DRAIN_BACKOFF_MAX_SECONDS": "1",
        }
        self.log_path = stack.cluster.workdir / "drainer.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> "_Drainer":
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "manage.py", "drain_events", "--min-age", "0.5", "--poll-interval", "0.2"],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


@contextmanager
def run_agent_in_outage(stack: Stack) -> Iterator[tuple[subprocess.Popen[bytes], LineReader]]:
    """A ``run_agent`` run that has found its events cannot be written; the cluster is started again after."""
    env = {**os.environ, "DATABASE_URL": stack.database_url, "REDIS_URL": "", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "manage.py", "run_agent", "demo", "--user", "outage", "--input", LONG_DEMO_INPUT]
    with started(command, env) as process:
        assert process.stdout is not None
        output = LineReader(process.stdout)
        output.until("agent_thinking")
        stack.cluster.stop()
        try:
            output.until("it ends as unavailable", timeout=10)
            yield process, output
        finally:
            if not stack.cluster.running():
                stack.cluster.start()


def test_run_agent_ends_its_run_as_unavailable_when_the_database_is_back(stack: Stack) -> None:
    with run_agent_in_outage(stack) as (process, output):
        stack.cluster.start()
        end = output.until("agent_error", timeout=RUN_END_AFTER_RECOVERY_SECONDS + 5)
        assert '"kind": "unavailable"' in end
        assert process.wait(timeout=10) == 1


def test_run_agent_gives_up_on_a_second_interrupt_while_the_database_is_down(stack: Stack) -> None:
    with run_agent_in_outage(stack) as (process, output):
        process.send_signal(signal.SIGINT)
        # Handled before the second is sent: two SIGINTs sent at once may reach the process as one.
        output.until("Interrupted: cancelling the run", timeout=10)
        output.until("Could not record the end of run", timeout=10)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 1
        rest = output.buffer.decode() + (process.stdout.read().decode() if process.stdout else "")
        assert "The run's outcome could not be read, the database is unavailable" in rest
    # Its run is left active, for the reaper of drain_events to end as lost.
    [(status,)] = stack.query("SELECT status FROM agents_agentrun ORDER BY created_at DESC LIMIT 1")
    assert status == "running"
    # No reaper runs here: end it by hand, so that it does not count against the user's active runs.
    stack.query("UPDATE agents_agentrun SET status = 'failed' WHERE status = 'running' RETURNING id")


def test_run_agent_refuses_at_once_while_the_database_is_down(stack: Stack) -> None:
    env = {**os.environ, "DATABASE_URL": stack.database_url, "REDIS_URL": ""}
    stack.cluster.stop()
    try:
        begun = time.monotonic()
        with started([sys.executable, "manage.py", "run_agent", "demo", "--user", "outage"], env) as process:
            output, _ = process.communicate(timeout=20)
        assert process.returncode == 1
        assert "The database is unavailable" in output.decode()
        assert time.monotonic() - begun < 15
    finally:
        stack.cluster.start()


def test_a_worker_that_loses_the_database_cancels_its_runs_and_exits_1_then_they_end_once_as_lost(
    stack: Stack, worker_factory: Callable[..., WorkerProcess]
) -> None:
    """Without its heartbeat the others would end its runs while they still ran there: it stops them itself."""
    env = {"REDIS_URL": stack.redis.url, "AGENT_EXECUTION": "worker"}
    worker = worker_factory(database_url=stack.database_url, redis_url=stack.redis.url)
    code = (
        "from agents.services import run_create; "
        f"print(run_create(user_id={stack.user_id}, agent='demo', input={LONG_DEMO_INPUT}).id)"
    )
    created = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": stack.database_url, **env},
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    run_id = created.stdout.split()[-1]
    worker.wait_log(f"executing run {run_id}")
    stack.cluster.stop()
    try:
        assert worker.wait(timeout=30) == 1  # Bounded by the end's retries (AGENT_SHUTDOWN_TIMEOUT_SECONDS).
        assert "The worker stopped by itself" in worker.log()
    finally:
        stack.cluster.start()
    # Its end could not be written; the next worker finds its heartbeat stale and ends it, once.
    worker_factory(database_url=stack.database_url, redis_url=stack.redis.url)
    wait_for(lambda: stack.query("SELECT status FROM agents_agentrun WHERE id = %s", run_id) == [("failed",)],
             timeout=30, what="the run to be ended")  # fmt: skip
    events = [event for _, event, _ in stack.log(run_id=run_id)]
    assert events[0] == "agent_started" and events.count("agent_error") == 1 and events[-1] == "agent_error"
    [(error,)] = stack.query("SELECT error FROM agents_agentrun WHERE id = %s", run_id)
    assert error["kind"] == "lost"
