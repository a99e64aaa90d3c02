"""Runs on workers (AGENT_EXECUTION=worker): real daphne, real run_worker processes, real PostgreSQL and Redis.

The web server only enqueues; a worker executes. Its stop is graceful (no
new run, a grace, then a cancel that says so); a second signal cuts the
grace short; a stopped web server touches no run; a killed worker's runs end
as lost, or continue on another worker when their agent is restartable.
"""

import asyncio
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from django.conf import settings as django_settings

from agents.services import WORKER_LOST_MESSAGE, WORKER_STOPPED_REASON
from tests.conftest import LIFECYCLE_OF_TWO_STEPS, SESSION_PREFIX, manage
from tests.e2e import login, post, run_log, run_row, start_run, until_event, until_logged, until_run_ended
from tests.servers import DaphneServer, RedisServer, WorkerProcess
from tests.wsclient import ws_connect

PASSWORD = "workers-password"
# Fast heartbeats and checks, so that a dead worker is found in about a second, not ten.
WORKER_ENV = {
    "AGENT_WORKER_HEARTBEAT_SECONDS": "0.2",
    "AGENT_WORKER_STALLED_SECONDS": "1",
    "AGENT_WORKER_REAP_SECONDS": "0.2",
    "AGENT_WORKER_POLL_SECONDS": "0.2",
    "AGENT_CANCEL_POLL_SECONDS": "0.1",
    "AGENT_MODULES": "tests.agents.worker_agents",
}
WEB_ENV = {"AGENT_EXECUTION": "worker", "AGENT_MODULES": "tests.agents.worker_agents"}
LONG_RUN = {"steps": 50, "delay": 0.2}  # Ten seconds: longer than any test lets it go on.

pytestmark = pytest.mark.e2e


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
def web(daphne_factory: Callable[..., DaphneServer], database: str, redis: RedisServer) -> DaphneServer:
    """A web server that only enqueues runs."""
    return daphne_factory(redis_url=redis.url, DATABASE_URL=database, **WEB_ENV)


@pytest.fixture
def worker_factory(database: str, redis: RedisServer, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start run_worker processes; each still running at the end is stopped (SIGTERM, then SIGKILL)."""
    workers: list[WorkerProcess] = []

    def start(*args: str, **env: str) -> WorkerProcess:
        worker = WorkerProcess(
            env={
                "DATABASE_URL": database,
                "REDIS_URL": redis.url,
                "CHANNEL_LAYER_PREFIX": SESSION_PREFIX,
                "DJANGO_SECRET_KEY": django_settings.SECRET_KEY,
                **WORKER_ENV,
                **env,
            },
            log_path=tmp_path / f"worker-{len(workers)}.log",
            args=args,
        )
        worker.start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()


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
    web: DaphneServer, database: str, worker_factory: Callable[..., WorkerProcess]
) -> None:
    token = await login(web, "alice", PASSWORD)
    async with ws_connect(web.ws_url, token) as client:
        run_id = await start_run(web, token, "demo", {"steps": 2, "delay": 0})
        # No worker yet: the web server did not execute it, and its job waits.
        assert await asyncio.to_thread(run_row, database, run_id) == ("queued", None)
        assert await asyncio.to_thread(job_statuses, database, run_id) == ["todo"]
        assert await asyncio.to_thread(events_of, database, run_id) == []

        worker = worker_factory()
        frames = await until_event(client, "agent_completed")
        assert [(f["run_id"], f["event"]) for f in frames] == [(run_id, event) for event in LIFECYCLE_OF_TWO_STEPS]
        assert [f["seq"] for f in frames] == [seq for seq, _, _ in await asyncio.to_thread(run_log, database, run_id)]
    assert worker.executed() == {run_id}
    assert await asyncio.to_thread(run_row, database, run_id) == ("completed", None)


async def test_sigterm_on_a_web_server_touches_no_run(
    daphne_factory: Callable[..., DaphneServer],
    database: str,
    redis: RedisServer,
    worker_factory: Callable[..., WorkerProcess],
) -> None:
    worker_factory()
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
    web: DaphneServer, database: str, worker_factory: Callable[..., WorkerProcess]
) -> None:
    token = await login(web, "alice", PASSWORD)
    worker = worker_factory(AGENT_WORKER_SHUTDOWN_GRACE_SECONDS="60")
    going = await start_run(web, token, "demo", {"steps": 6, "delay": 0.1})
    await until_logged(database, going, 2)
    worker.signal(signal.SIGTERM)
    await asyncio.to_thread(worker.wait_log, "Stopping: taking no new run")
    later = await start_run(web, token, "demo", {"steps": 1, "delay": 0})
    assert await wait_exit(worker) == 0  # Once its run has finished, well within the grace.
    assert await asyncio.to_thread(run_row, database, going) == ("completed", None)
    assert worker.executed() == {going}
    assert await asyncio.to_thread(run_row, database, later) == ("queued", None)

    successor = worker_factory()
    assert await until_run_ended(database, later) == ("completed", None)
    assert successor.executed() == {later}


async def test_a_worker_cancels_the_runs_still_going_when_its_grace_ends_and_exits_0(
    web: DaphneServer, database: str, worker_factory: Callable[..., WorkerProcess]
) -> None:
    token = await login(web, "alice", PASSWORD)
    worker = worker_factory(AGENT_WORKER_SHUTDOWN_GRACE_SECONDS="0.3")
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
    web: DaphneServer, database: str, worker_factory: Callable[..., WorkerProcess]
) -> None:
    token = await login(web, "alice", PASSWORD)
    worker = worker_factory(AGENT_WORKER_SHUTDOWN_GRACE_SECONDS="600")  # Only the second signal can end it.
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
    web: DaphneServer, database: str, worker_factory: Callable[..., WorkerProcess], through: str
) -> None:
    token = await login(web, "alice", PASSWORD)
    worker_factory()
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
    web: DaphneServer, database: str, worker_factory: Callable[..., WorkerProcess]
) -> None:
    token = await login(web, "alice", PASSWORD)
    worker_factory()
    run_id = await start_run(web, token, "demo", {"steps": 2, "delay": 30}, timeout=0.3)
    status, error = await until_run_ended(database, run_id)
    assert status == "timed_out" and error is not None and error["kind"] == "timeout"
    assert (await asyncio.to_thread(events_of, database, run_id)).count("agent_error") == 1


async def test_a_killed_workers_run_ends_lost_and_no_other_worker_executes_it(
    web: DaphneServer, database: str, worker_factory: Callable[..., WorkerProcess]
) -> None:
    token = await login(web, "alice", PASSWORD)
    doomed = worker_factory()
    run_id = await start_run(web, token, "demo", LONG_RUN)
    await until_logged(database, run_id, 3)
    survivor = worker_factory()
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
    web: DaphneServer, database: str, worker_factory: Callable[..., WorkerProcess]
) -> None:
    token = await login(web, "alice", PASSWORD)
    doomed = worker_factory()
    run_id = await start_run(web, token, "restartable_steps", {"steps": 40, "delay": 0.05})
    await until_logged(database, run_id, 5)
    doomed.signal(signal.SIGKILL)
    survivor = worker_factory()
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
