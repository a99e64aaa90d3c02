"""Scale-out on one machine: two daphne servers and two drainers on one Redis and one PostgreSQL.

The deployment of docker-compose.yml, with real processes: users connect to
either server; runs started through one reach the user's sockets on both, in
order and once; events whose publish failed reach them through the drainers;
a server stopped with SIGTERM closes its sockets with 1001 and cancels its
runs; its clients move to the other server, resume, and miss nothing.
"""

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.db import connection
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from tests.conftest import LIFECYCLE_OF_TWO_STEPS, SESSION_PREFIX, manage
from tests.e2e import events_until_closed, of_run, start_run, until_event, until_logged
from tests.e2e import login as e2e_login
from tests.servers import ROOT, DaphneServer, LineReader, RedisServer, WorkerProcess, free_port
from tests.wsclient import ws_connect

PASSWORD = "scale-out-password"

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def scratch_database(scratch_postgres: Callable[[str], str]) -> str:
    """A PostgreSQL database of this test's own, with Alice and Bob."""
    url = scratch_postgres("scaleout")
    for username in ("alice", "bob"):
        manage("demo_setup", "--username", username, "--password", PASSWORD, database_url=url)
    return url


def logged(database_url: str, username: str) -> list[tuple[int, str, str, bool]]:
    """A user's log: (seq, event, run_id, published) in seq order."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT e.seq, e.event, e.run_id::text, p.event_id IS NULL FROM notifications_event e "
            "JOIN auth_user u ON u.id = e.user_id LEFT JOIN notifications_pendingevent p ON p.event_id = e.id "
            "WHERE u.username = %s ORDER BY e.seq",
            [username],
        ).fetchall()
    return [(int(seq), event, run_id, published) for seq, event, run_id, published in rows]


async def until_all_published(database_url: str, username: str, *, timeout: float = 15.0) -> None:
    """Poll the log (there is nothing to wait on but the database) until every event is published."""
    async with asyncio.timeout(timeout):
        while True:
            if all(published for *_, published in await asyncio.to_thread(logged, database_url, username)):
                return
            await asyncio.sleep(0.05)


async def login(server: DaphneServer, username: str) -> str:
    return await e2e_login(server, username, PASSWORD)


@pytest.fixture
def drainers(scratch_database: str, redis: RedisServer) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Two drain_events processes on the scratch database; stopped with SIGTERM, each must exit 0."""
    env = {
        **os.environ,
        "DATABASE_URL": scratch_database,
        "REDIS_URL": redis.url,
        "CHANNEL_LAYER_PREFIX": SESSION_PREFIX,
        "PYTHONUNBUFFERED": "1",
    }
    command = [sys.executable, "manage.py", "drain_events", "--min-age", "0", "--poll-interval", "0.05"]
    processes = [
        subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)
    ]
    try:
        yield processes
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            assert process.stdout is not None
            code = process.wait(timeout=15)
            assert code == 0, LineReader(process.stdout).lines
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
            if process.stdout is not None:
                process.stdout.close()


@pytest.fixture(scope="module")
def redis(redis_server_factory: Callable[[], RedisServer]) -> RedisServer:
    return redis_server_factory()


async def test_two_servers_and_two_drainers_deliver_every_event_once_in_order_through_a_server_stop(
    scratch_database: str,
    redis: RedisServer,
    daphne_factory: Callable[..., DaphneServer],
    drainers: list[subprocess.Popen[bytes]],
) -> None:
    env = {"DATABASE_URL": scratch_database, "AGENT_CANCEL_POLL_SECONDS": "0.1"}
    server_a = daphne_factory(redis_url=redis.url, **env)
    server_b = daphne_factory(redis_url=redis.url, **env)
    alice = await login(server_a, "alice")
    bob = await login(server_b, "bob")

    async with (
        ws_connect(server_a.ws_url, alice) as on_a,
        ws_connect(server_b.ws_url, alice) as on_b,
        ws_connect(server_b.ws_url, bob) as bob_on_b,
    ):
        # 1. A run started through server A reaches Alice on A and on B, in order, once.
        first = await start_run(server_a, alice, "demo", {"steps": 2, "delay": 0.01})
        from_a, from_b = await asyncio.gather(
            until_event(on_a, "agent_completed"), until_event(on_b, "agent_completed")
        )
        assert [event for _, event in of_run(from_a, first)] == LIFECYCLE_OF_TWO_STEPS
        assert of_run(from_a, first) == of_run(from_b, first)

        # 2. Events whose publish failed (their writer's Redis was down) come through the drainers.
        dead_redis = f"redis://127.0.0.1:{free_port()}/0"
        cli = await asyncio.create_subprocess_exec(
            sys.executable, "manage.py", "run_agent", "demo", "--user", "alice", "--input", '{"steps": 2, "delay": 0}',
            cwd=ROOT,
            env={**os.environ, **env, "REDIS_URL": dead_redis, "CHANNEL_LAYER_PREFIX": SESSION_PREFIX},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        assert await asyncio.wait_for(cli.wait(), timeout=60) == 0
        drained_a, drained_b = await asyncio.gather(
            until_event(on_a, "agent_completed"), until_event(on_b, "agent_completed")
        )
        assert [frame["event"] for frame in drained_a] == LIFECYCLE_OF_TWO_STEPS
        assert drained_a == drained_b

        # 3. A long run on A; A stops with SIGTERM mid-run.
        long_run = await start_run(server_a, alice, "demo", {"steps": 50, "delay": 0.1})
        before_stop = await on_a.events(3)
        server_a.signal(signal.SIGTERM)
        more, code = await events_until_closed(on_a)
        assert code == 1001
        before_stop += more
        assert await asyncio.to_thread(server_a.wait, 15) == 0
        # B's socket sees the run end: cancelled by A's shutdown.
        on_b_frames = await until_event(on_b, "agent_error")
        assert on_b_frames[-1]["run_id"] == long_run and on_b_frames[-1]["data"]["kind"] == "cancelled"

        # 4. A's client moves to B and resumes after the last event it saw: nothing is missing.
        seen_on_a = from_a + drained_a + before_stop
        async with ws_connect(server_b.ws_url, alice) as moved:
            await moved.send({"type": "resume", "after": seen_on_a[-1]["seq"]})
            resumed = await until_event(moved, "agent_error")
            assert (await moved.expect("resumed"))["last_seq"] == resumed[-1]["seq"]
            seen_on_a += resumed
            assert await moved.settle() == []

        log = await asyncio.to_thread(logged, scratch_database, "alice")
        everything = [(seq, event, run_id) for seq, event, run_id, _ in log]
        assert [(f["seq"], f["event"], f["run_id"]) for f in seen_on_a] == everything
        assert [(f["seq"], f["event"], f["run_id"]) for f in from_b + drained_b + on_b_frames] == everything
        assert [event for _, event, run_id in everything if run_id == long_run][-1] == "agent_error"
        # Nothing stays pending: a publish is marked just after it is sent, and an end that
        # A wrote while stopping, without the time to mark it, is published by the drainers.
        await until_all_published(scratch_database, "alice")
        # (A drainer's second publish of an event reaches no one: connections drop it by seq.)
        assert await on_b.settle() == []
        assert await bob_on_b.settle() == []  # Bob saw none of it.
    server_b.assert_log_clean()


# Runs on workers: web servers restarted under them, a worker killed under them.

WORKER_WEB_ENV = {
    "AGENT_EXECUTION": "worker",
    "AGENT_MAX_ACTIVE_RUNS_PER_USER": "50",
    "AGENT_MODULES": "tests.agents.worker_agents",
}
TERMINAL = {"agent_completed", "agent_error"}


async def follow(
    servers: list[DaphneServer], token: str, run_ids: set[str], *, after: int, timeout: float = 90.0
) -> list[dict[str, Any]]:
    """A client that stays with the user's runs to their ends: on each close it moves to the next server and resumes.

    It starts after seq ``after`` (the user's last event before the runs), and
    returns every event frame it received, in order of receipt.
    """
    frames: list[dict[str, Any]] = []
    ended: set[str] = set()
    attempt = 0
    async with asyncio.timeout(timeout):
        while not run_ids <= ended:
            server = servers[attempt % len(servers)]
            attempt += 1
            try:
                async with ws_connect(server.ws_url, token) as client:
                    # As docs/protocol.md section 4 tells a client: hold events back until
                    # `resumed`, then process only those newer than the last one processed.
                    await client.send({"type": "resume", "after": frames[-1]["seq"] if frames else after})
                    held: list[dict[str, Any]] = []
                    resumed = False
                    while not run_ids <= ended:
                        frame = await client.frame()
                        if frame["type"] == "resumed":
                            resumed = True
                        elif frame["type"] == "event":
                            held.append(frame)
                        if not resumed:
                            continue
                        for event in held:
                            if event["seq"] > (frames[-1]["seq"] if frames else after):
                                frames.append(event)
                                if event["event"] in TERMINAL:
                                    ended.add(event["run_id"])
                        held = []
            except (ConnectionClosed, OSError, InvalidHandshake):
                await asyncio.sleep(0.05)  # A server stopping or starting: try the next one.
    return frames


def last_seq(database_url: str, username: str) -> int:
    return max((seq for seq, *_ in logged(database_url, username)), default=0)


def ended_runs(database_url: str, run_ids: set[str]) -> dict[str, tuple[str, Any]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT id::text, status, error FROM agents_agentrun WHERE id::text = ANY(%s)", [list(run_ids)]
        ).fetchall()
    return {run_id: (status, error) for run_id, status, error in rows if status not in ("queued", "running")}


def assert_received_the_log(frames: list[dict[str, Any]], database_url: str, username: str, run_ids: set[str]) -> None:
    """Every event of the runs, once, in the log's order."""
    log = [(seq, event, run_id) for seq, event, run_id, _ in logged(database_url, username) if run_id in run_ids]
    got = [(f["seq"], f["event"], f["run_id"]) for f in frames if f["run_id"] in run_ids]
    assert got == log


async def gated_runs_followed(
    database_url: str, servers: tuple[DaphneServer, DaphneServer], tokens: tuple[str, str], gate: Path
) -> tuple[set[str], set[str], list["asyncio.Task[list[dict[str, Any]]]"]]:
    """Ten runs each for Alice (through A) and Bob (through B), held at ``gate``; a client following each user."""
    server_a, server_b = servers
    alice, bob = tokens
    alice_after, bob_after = last_seq(database_url, "alice"), last_seq(database_url, "bob")
    held = {"steps": 6, "gate": str(gate)}
    alice_runs = {await start_run(server_a, alice, "gated_steps", held) for _ in range(10)}
    bob_runs = {await start_run(server_b, bob, "gated_steps", held) for _ in range(10)}
    following = [
        asyncio.create_task(follow([server_a, server_b], alice, alice_runs, after=alice_after)),
        asyncio.create_task(follow([server_b, server_a], bob, bob_runs, after=bob_after)),
    ]
    return alice_runs, bob_runs, following


@pytest.mark.skipif(connection.vendor != "postgresql", reason="workers: covered by the PostgreSQL run")
async def test_two_web_servers_and_two_workers_keep_every_run_through_restarts_and_a_killed_worker(
    scratch_database: str,
    redis: RedisServer,
    daphne_factory: Callable[..., DaphneServer],
    worker_factory: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    server_a = daphne_factory(redis_url=redis.url, DATABASE_URL=scratch_database, **WORKER_WEB_ENV)
    server_b = daphne_factory(redis_url=redis.url, DATABASE_URL=scratch_database, **WORKER_WEB_ENV)
    workers = [
        worker_factory("--concurrency", "10", database_url=scratch_database, redis_url=redis.url) for _ in range(2)
    ]
    alice, bob = await login(server_a, "alice"), await login(server_b, "bob")

    # 1. Twenty runs in flight; both web servers restarted one after the other. The runs are held
    # halfway until the gate opens, so they are all still going through both restarts.
    gate = tmp_path / "restarts-done"
    alice_runs, bob_runs, following = await gated_runs_followed(
        scratch_database, (server_a, server_b), (alice, bob), gate
    )
    await until_logged(scratch_database, next(iter(alice_runs)), 3)
    for server in (server_a, server_b):
        await asyncio.to_thread(server.restart)
    assert ended_runs(scratch_database, alice_runs | bob_runs) == {}  # All twenty went on through both.
    gate.touch()
    alice_frames, bob_frames = await asyncio.gather(*following)
    ended = ended_runs(scratch_database, alice_runs | bob_runs)
    assert set(ended.values()) == {("completed", None)} and len(ended) == 20
    assert_received_the_log(alice_frames, scratch_database, "alice", alice_runs)
    assert_received_the_log(bob_frames, scratch_database, "bob", bob_runs)
    assert workers[0].executed() | workers[1].executed() == alice_runs | bob_runs

    # 2. Twenty more fill both workers; one is killed. Its runs end lost, the other's complete.
    gate = tmp_path / "worker-killed"
    alice_runs, bob_runs, following = await gated_runs_followed(
        scratch_database, (server_a, server_b), (alice, bob), gate
    )
    for run_id in alice_runs | bob_runs:
        await until_logged(scratch_database, run_id, 2)  # Every run is executing somewhere.
    doomed, survivor = workers
    on_doomed = doomed.executed() & (alice_runs | bob_runs)
    on_survivor = survivor.executed() & (alice_runs | bob_runs)
    assert len(on_doomed) == len(on_survivor) == 10  # Ten at a time each.
    doomed.signal(signal.SIGKILL)
    async with asyncio.timeout(30):  # The requirement: a killed worker's runs end within 30 s.
        while not on_doomed <= set(ended_runs(scratch_database, on_doomed)):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    lost = ended_runs(scratch_database, on_doomed)
    assert {status for status, _ in lost.values()} == {"failed"}
    assert {error["kind"] for _, error in lost.values()} == {"lost"}
    assert ended_runs(scratch_database, on_survivor) == {}  # Held at the gate until now.
    gate.touch()
    alice_frames, bob_frames = await asyncio.gather(*following)
    completed = ended_runs(scratch_database, on_survivor)
    assert set(completed.values()) == {("completed", None)} and len(completed) == 10
    assert_received_the_log(alice_frames, scratch_database, "alice", alice_runs)
    assert_received_the_log(bob_frames, scratch_database, "bob", bob_runs)
    for run_id in alice_runs | bob_runs:
        events = [event for _, event, run, _ in logged(scratch_database, "alice") + logged(scratch_database, "bob")
                  if run == run_id]  # fmt: skip
        assert events.count("agent_started") == 1 and sum(event in TERMINAL for event in events) == 1
    assert survivor.executed() & on_doomed == set()  # No run executed twice.
    server_a.assert_log_clean()
    server_b.assert_log_clean()
    for server in (server_a, server_b):  # Their connections are not the session's to hold.
        server.stop()
