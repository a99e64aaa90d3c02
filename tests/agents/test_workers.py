"""Runs on workers (AGENT_EXECUTION=worker): real daphne, real run_worker processes, real PostgreSQL and Redis.

The web server only enqueues; a worker executes. Its stop is graceful (no
new run, a grace, then a cancel that says so); a second signal cuts the
grace short; a stopped web server touches no run; a killed worker's runs end
as lost, or continue on another worker when their agent is restartable.
"""

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from django.db import connection

from agents.services import CANCEL_MESSAGE, WORKER_LOST_MESSAGE, WORKER_STOPPED_REASON
from tests.conftest import LIFECYCLE_OF_TWO_STEPS, SESSION_PREFIX, manage
from tests.e2e import login, post, run_log, run_row, start_run, until_event, until_logged, until_run_ended
from tests.servers import ROOT, DaphneServer, LineReader, RedisServer, WorkerProcess
from tests.wsclient import ws_connect

PASSWORD = "workers-password"
WEB_ENV = {"AGENT_EXECUTION": "worker", "AGENT_MODULES": "tests.agents.worker_agents"}
LONG_RUN = {"steps": 50, "delay": 0.2}  # Ten seconds: longer than any test lets it go on.

# They use a PostgreSQL database of their own whatever the suite's database is, so the suite's
# PostgreSQL run covers them; under SQLite (where runs stay in process) they would repeat it.
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(connection.vendor != "postgresql", reason="workers: covered by the PostgreSQL run"),
]


@pytest.fixture(scope="module")
def database(scratch_postgres: Callable[[str], str]) -> str:
    """A PostgreSQL database of this module's own, with Alice."""
    url = scratch_postgres("workers")
    manage("demo_setup", "--username", "alice", "--password", PASSWORD, database_url=url)
    return url


@pytest.fixture(scope="module")
def redis(redis_server_factory: Callable[[], RedisServer]) -> RedisServer:
    return redis_server_factory()


@pytest.fixture(scope="module")
def web(daphne_factory: Callable[..., DaphneServer], database: str, redis: RedisServer) -> Iterator[DaphneServer]:
    """A web server that only enqueues runs (stopped after the module: its connections are not the session's)."""
    server = daphne_factory(redis_url=redis.url, DATABASE_URL=database, **WEB_ENV)
    yield server
    server.stop()


@pytest.fixture
def start_worker(
    worker_factory: Callable[..., WorkerProcess], database: str, redis: RedisServer
) -> Callable[..., WorkerProcess]:
    """Start a worker on this module's database and Redis (stopped at the end of the test)."""

    def start(*args: str, **env: str) -> WorkerProcess:
        return worker_factory(*args, database_url=database, redis_url=redis.url, **env)

    return start


def job_statuses(database: str, run_id: str) -> list[str]:
    with psycopg.connect(database) as conn:
        rows = conn.execute(
            "SELECT status FROM procrastinate_jobs WHERE args->>'run_id' = %s ORDER BY id", [run_id]
        ).fetchall()
    return [str(status) for (status,) in rows]


def events_of(database: str, run_id: str) -> list[str]:
    return [event for _, event, _ in run_log(database, run_id)]


async def wait_exit(worker: WorkerProcess, timeout: float = 15.0) -> int:
    return await asyncio.to_thread(worker.wait, timeout)


async def test_a_run_waits_in_the_queue_until_a_worker_executes_it_and_streams_to_the_socket(
    web: DaphneServer, database: str, start_worker: Callable[..., WorkerProcess]
) -> None:
    token = await login(web, "alice", PASSWORD)
    async with ws_connect(web.ws_url, token) as client:
        run_id = await start_run(web, token, "demo", {"steps": 2, "delay": 0})
        # No worker yet: the web server did not execute it, and its job waits.
        assert await asyncio.to_thread(run_row, database, run_id) == ("queued", None)
        assert await asyncio.to_thread(job_statuses, database, run_id) == ["todo"]
        assert await asyncio.to_thread(events_of, database, run_id) == []

        worker = start_worker()
        frames = await until_event(client, "agent_completed")
        assert [(f["run_id"], f["event"]) for f in frames] == [(run_id, event) for event in LIFECYCLE_OF_TWO_STEPS]
        assert [f["seq"] for f in frames] == [seq for seq, _, _ in await asyncio.to_thread(run_log, database, run_id)]
    assert worker.executed() == {run_id}
    assert await asyncio.to_thread(run_row, database, run_id) == ("completed", None)


async def test_sigterm_on_a_web_server_touches_no_run(
    daphne_factory: Callable[..., DaphneServer],
    database: str,
    redis: RedisServer,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    start_worker()
    server = daphne_factory(redis_url=redis.url, DATABASE_URL=database, **WEB_ENV)
    token = await login(server, "alice", PASSWORD)
    run_id = await start_run(server, token, "demo", {"steps": 8, "delay": 0.1})
    await until_logged(database, run_id, 3)
    server.signal(signal.SIGTERM)
    assert await asyncio.to_thread(server.wait, 15) == 0
    assert await until_run_ended(database, run_id) == ("completed", None)
    events = await asyncio.to_thread(events_of, database, run_id)
    assert events[0] == "agent_started" and events[-1] == "agent_completed" and "agent_error" not in events


async def test_a_stopping_worker_takes_no_new_run_and_lets_its_runs_finish(
    web: DaphneServer, database: str, start_worker: Callable[..., WorkerProcess]
) -> None:
    token = await login(web, "alice", PASSWORD)
    worker = start_worker(AGENT_WORKER_SHUTDOWN_GRACE_SECONDS="60")
    going = await start_run(web, token, "demo", {"steps": 6, "delay": 0.1})
    await until_logged(database, going, 2)
    worker.signal(signal.SIGTERM)
    await asyncio.to_thread(worker.wait_log, "Stopping: taking no new run")
    later = await start_run(web, token, "demo", {"steps": 1, "delay": 0})
    assert await wait_exit(worker) == 0  # Once its run has finished, well within the grace.
    assert await asyncio.to_thread(run_row, database, going) == ("completed", None)
    assert worker.executed() == {going}
    assert await asyncio.to_thread(run_row, database, later) == ("queued", None)

    successor = start_worker()
    assert await until_run_ended(database, later) == ("completed", None)
    assert successor.executed() == {later}


async def test_a_worker_cancels_the_runs_still_going_when_its_grace_ends_and_exits_0(
    web: DaphneServer, database: str, start_worker: Callable[..., WorkerProcess]
) -> None:
    token = await login(web, "alice", PASSWORD)
    worker = start_worker(AGENT_WORKER_SHUTDOWN_GRACE_SECONDS="0.3")
    run_id = await start_run(web, token, "demo", LONG_RUN)
    await until_logged(database, run_id, 2)
    worker.signal(signal.SIGTERM)
    assert await wait_exit(worker) == 0
    status, error = await asyncio.to_thread(run_row, database, run_id)
    assert (status, error) == ("cancelled", {"kind": "cancelled", "message": WORKER_STOPPED_REASON})
    log = await asyncio.to_thread(run_log, database, run_id)
    assert [event for _, event, _ in log].count("agent_error") == 1
    assert log[-1][1:] == ("agent_error", {**log[-1][2], "kind": "cancelled", "message": WORKER_STOPPED_REASON})


async def test_a_second_signal_cancels_the_runs_at_once(
    web: DaphneServer, database: str, start_worker: Callable[..., WorkerProcess]
) -> None:
    token = await login(web, "alice", PASSWORD)
    worker = start_worker(AGENT_WORKER_SHUTDOWN_GRACE_SECONDS="600")  # Only the second signal can end it.
    run_id = await start_run(web, token, "demo", LONG_RUN)
    await until_logged(database, run_id, 2)
    worker.signal(signal.SIGTERM)
    await asyncio.to_thread(worker.wait_log, "Stopping: taking no new run")
    worker.signal(signal.SIGINT)
    assert await wait_exit(worker) == 0
    assert "Interrupted again: cancelling the runs in progress now." in worker.log()
    assert await asyncio.to_thread(run_row, database, run_id) == (
        "cancelled",
        {"kind": "cancelled", "message": WORKER_STOPPED_REASON},
    )


@pytest.mark.parametrize("through", ["api", "socket"])
async def test_a_cancel_reaches_the_worker(
    web: DaphneServer, database: str, start_worker: Callable[..., WorkerProcess], through: str
) -> None:
    token = await login(web, "alice", PASSWORD)
    start_worker()
    async with ws_connect(web.ws_url, token) as client:
        run_id = await start_run(web, token, "demo", LONG_RUN)
        await until_logged(database, run_id, 2)
        if through == "api":
            await asyncio.to_thread(post, f"{web.http_url}/api/runs/{run_id}/cancel/", {}, token)
        else:
            await client.send({"type": "run.cancel", "run_id": run_id})
        # Bounded by far less than the run's ten seconds: the worker polls for cancels every 0.1 s here.
        frames = await until_event(client, "agent_error", timeout=5)
    assert frames[-1]["run_id"] == run_id
    assert frames[-1]["data"]["kind"] == "cancelled"
    assert (await asyncio.to_thread(run_row, database, run_id))[0] == "cancelled"


async def test_a_run_times_out_on_a_worker(
    web: DaphneServer, database: str, start_worker: Callable[..., WorkerProcess]
) -> None:
    token = await login(web, "alice", PASSWORD)
    start_worker()
    run_id = await start_run(web, token, "demo", {"steps": 2, "delay": 30}, timeout=0.3)
    status, error = await until_run_ended(database, run_id)
    assert status == "timed_out" and error is not None and error["kind"] == "timeout"
    assert (await asyncio.to_thread(events_of, database, run_id)).count("agent_error") == 1


async def test_a_killed_workers_run_ends_lost_and_no_other_worker_executes_it(
    web: DaphneServer, database: str, start_worker: Callable[..., WorkerProcess]
) -> None:
    token = await login(web, "alice", PASSWORD)
    doomed = start_worker()
    run_id = await start_run(web, token, "demo", LONG_RUN)
    await until_logged(database, run_id, 3)
    survivor = start_worker()
    doomed.signal(signal.SIGKILL)
    assert await until_run_ended(database, run_id, timeout=30) == (
        "failed",
        {"kind": "lost", "message": WORKER_LOST_MESSAGE},
    )
    events = await asyncio.to_thread(events_of, database, run_id)
    assert events.count("agent_started") == 1 and events[-1] == "agent_error" and events.count("agent_error") == 1
    assert survivor.executed() == set()
    assert await asyncio.to_thread(job_statuses, database, run_id) == ["failed"]


async def test_a_restartable_run_continues_on_another_worker_after_its_worker_is_killed(
    web: DaphneServer, database: str, start_worker: Callable[..., WorkerProcess]
) -> None:
    token = await login(web, "alice", PASSWORD)
    doomed = start_worker()
    run_id = await start_run(web, token, "restartable_steps", {"steps": 40, "delay": 0.05})
    await until_logged(database, run_id, 5)
    doomed.signal(signal.SIGKILL)
    survivor = start_worker()
    assert await until_run_ended(database, run_id, timeout=30) == ("completed", None)
    assert survivor.executed() == {run_id}
    log = await asyncio.to_thread(run_log, database, run_id)
    events = [event for _, event, _ in log]
    assert events.count("agent_started") == 1 and events[-1] == "agent_completed"
    assert events.count("agent_completed") == 1 and "agent_error" not in events
    restarts = [data for _, event, data in log if event == "agent_thinking" and "again" in data["thought"]]
    assert len(restarts) == 1
    # Every call started is ended, the interrupted one as failed; nothing is left open.
    executing = {data["call_id"] for _, event, data in log if event == "tool_executing"}
    completed = [data["call_id"] for _, event, data in log if event == "tool_completed"]
    assert sorted(completed) == sorted(executing)
    assert [seq for seq, _, _ in log] == sorted({seq for seq, _, _ in log})


def test_run_worker_refuses_to_start_unless_runs_go_to_workers(database: str, tmp_path: Path) -> None:
    worker = WorkerProcess(env={"DATABASE_URL": database, "AGENT_EXECUTION": "inprocess"}, log_path=tmp_path / "w.log")
    with pytest.raises(RuntimeError, match="AGENT_EXECUTION is not worker"):
        worker.start()


# run_agent on workers: it enqueues, then follows the run's events in the log to its end.


def run_agent_command(database: str, redis: RedisServer, *args: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "manage.py", "run_agent", *args, "--user", "alice"],
        cwd=ROOT,
        env={
            **os.environ,
            "DATABASE_URL": database,
            "REDIS_URL": redis.url,
            "CHANNEL_LAYER_PREFIX": SESSION_PREFIX,
            "PYTHONUNBUFFERED": "1",
            "AGENT_EXECUTION": "worker",
            **env,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize(
    ("args", "code", "last"),
    [
        (("calculator", "--input", '{"expression": "6*7"}'), 0, "agent_completed"),
        (("demo", "--input", '{"steps": 2, "delay": 30}', "--timeout", "0.3"), 124, "agent_error"),
        (("demo", "--input", '{"fail": true, "delay": 0}'), 1, "agent_error"),
    ],
)
def test_run_agent_enqueues_and_prints_the_runs_events_from_the_worker(
    database: str,
    redis: RedisServer,
    start_worker: Callable[..., WorkerProcess],
    args: tuple[str, ...],
    code: int,
    last: str,
) -> None:
    worker = start_worker()
    process = run_agent_command(database, redis, *args)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == code, stderr
    lines = stdout.splitlines()
    assert lines[0].split()[1] == "agent_started" and lines[-1].split()[1] == last
    [run_id] = worker.executed()
    assert [int(line.split()[0]) for line in lines] == [seq for seq, _, _ in run_log(database, run_id)]


def test_run_agent_interrupted_asks_the_worker_to_cancel_and_follows_the_run_to_its_end(
    database: str, redis: RedisServer, start_worker: Callable[..., WorkerProcess]
) -> None:
    worker = start_worker()
    process = run_agent_command(database, redis, "demo", "--input", json.dumps(LONG_RUN))
    assert process.stdout is not None and process.stderr is not None
    output = LineReader(process.stdout)
    output.until("agent_started")
    process.send_signal(signal.SIGINT)
    assert "agent_error" in output.until("agent_error")
    assert process.wait(timeout=15) == 130
    [run_id] = worker.executed()
    assert run_row(database, run_id) == ("cancelled", {"kind": "cancelled", "message": CANCEL_MESSAGE})
    process.stdout.close()
    process.stderr.close()


def test_run_agent_says_when_no_worker_takes_the_run_and_stops_following_on_a_second_interrupt(
    database: str, redis: RedisServer
) -> None:
    process = run_agent_command(database, redis, "demo", RUN_AGENT_WORKER_HINT_SECONDS="0.2")
    assert process.stdout is not None and process.stderr is not None
    errors = LineReader(process.stderr)
    errors.until("no worker has taken it yet")
    process.send_signal(signal.SIGINT)
    errors.until("Interrupted: cancelling the run")
    process.send_signal(signal.SIGINT)
    errors.until("Interrupted again: not following the run any longer.")
    assert process.wait(timeout=15) == 130
    process.stdout.close()
    process.stderr.close()


async def test_a_worker_without_the_runs_agent_fails_the_run_and_says_why(
    web: DaphneServer, database: str, start_worker: Callable[..., WorkerProcess]
) -> None:
    token = await login(web, "alice", PASSWORD)
    start_worker(AGENT_MODULES="")  # The web server has tests.agents.worker_agents; this worker does not.
    run_id = await start_run(web, token, "restartable_steps", {"steps": 1})
    status, error = await until_run_ended(database, run_id)
    assert status == "failed"
    assert error == {
        "kind": "exception",
        "message": "This worker has no agent named 'restartable_steps'; deploy the same agents on every process.",
    }
