"""The queue side of worker execution on the suite's PostgreSQL: jobs made with their runs, dead workers' runs ended.

A worker is played here by Procrastinate's own job manager (register, fetch a
job); "dead" is a heartbeat set in the past, as a SIGKILLed worker leaves it.
The processes themselves are tested in test_workers.py.
"""

import uuid
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.db import connection, transaction
from django.test import Client
from procrastinate import manager

from agents.exceptions import TooManyRuns
from agents.models import AgentRun, RunStatus
from agents.services import WORKER_LOST_MESSAGE, run_create
from notifications.models import Event

pytestmark = [
    pytest.mark.skipif(connection.vendor != "postgresql", reason="the task engine is PostgreSQL's"),
    pytest.mark.django_db(transaction=True),
]


@pytest.fixture
def workers_mode(settings: Any) -> None:
    settings.AGENT_EXECUTION = "worker"


@pytest.fixture(autouse=True)
def empty_queue() -> None:
    """The engine's tables are not Django's to flush between tests: start each test with none of its jobs."""
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE procrastinate_jobs, procrastinate_workers CASCADE")


def job_manager() -> manager.JobManager:
    from procrastinate.contrib.django.django_connector import DjangoConnector

    return manager.JobManager(DjangoConnector())


def jobs_of(run_id: uuid.UUID) -> list[tuple[str, int]]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT status, attempts FROM procrastinate_jobs WHERE args->>'run_id' = %s ORDER BY id", [str(run_id)]
        )
        return [(str(status), int(attempts)) for status, attempts in cursor.fetchall()]


def taken_by_a_worker(*, heartbeat_age_seconds: float) -> int:
    """Register a worker, let it take the next job, and age its heartbeat; return the job's id."""
    jobs = job_manager()
    worker_id = async_to_sync(jobs.register_worker)()
    job = async_to_sync(jobs.fetch_job)(queues=["agents"], worker_id=worker_id)
    assert job is not None and job.id is not None
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE procrastinate_workers SET last_heartbeat = now() - %s * interval '1 second' WHERE id = %s",
            [heartbeat_age_seconds, worker_id],
        )
    return job.id


def reap() -> int:
    from agents.workers import runs_reap_stalled

    return runs_reap_stalled(seconds_since_heartbeat=10)


def test_a_run_and_its_job_are_made_in_one_transaction(alice: Any, workers_mode: None) -> None:
    run = run_create(user_id=alice.pk, agent="demo", input={})
    assert jobs_of(run.id) == [("todo", 0)]

    class Undone(Exception):
        pass

    with pytest.raises(Undone), transaction.atomic():
        undone = run_create(user_id=alice.pk, agent="demo", input={})
        raise Undone
    assert not AgentRun.objects.filter(pk=undone.pk).exists()
    assert jobs_of(undone.id) == []


def test_queued_runs_count_against_the_active_run_limit(alice: Any, workers_mode: None, settings: Any) -> None:
    settings.AGENT_MAX_ACTIVE_RUNS_PER_USER = 2
    for _ in range(2):
        run_create(user_id=alice.pk, agent="demo", input={})
    with pytest.raises(TooManyRuns):
        run_create(user_id=alice.pk, agent="demo", input={})
    assert AgentRun.objects.count() == 2


def test_a_dead_workers_run_ends_lost_once_and_its_job_fails(alice: Any, workers_mode: None) -> None:
    run = run_create(user_id=alice.pk, agent="demo", input={})
    taken_by_a_worker(heartbeat_age_seconds=60)
    assert reap() == 1
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert run.error == {"kind": "lost", "message": WORKER_LOST_MESSAGE}
    assert list(Event.objects.filter(run_id=run.id).values_list("event", flat=True)) == ["agent_error"]
    assert jobs_of(run.id) == [("failed", 1)]
    assert reap() == 0  # Nothing left to end, and nothing ended twice.
    assert Event.objects.filter(run_id=run.id).count() == 1


def test_a_live_workers_run_is_left_alone(alice: Any, workers_mode: None) -> None:
    run = run_create(user_id=alice.pk, agent="demo", input={})
    taken_by_a_worker(heartbeat_age_seconds=0)
    assert reap() == 0
    run.refresh_from_db()
    assert run.status == RunStatus.QUEUED
    assert jobs_of(run.id) == [("doing", 0)]


def test_a_restartable_run_goes_back_to_the_queue_until_its_restarts_are_used_up(
    alice: Any, workers_mode: None, settings: Any
) -> None:
    settings.AGENT_RESTART_MAX_ATTEMPTS = 2
    run = run_create(user_id=alice.pk, agent="restartable_steps", input={})
    for restart in (1, 2):
        taken_by_a_worker(heartbeat_age_seconds=60)
        assert reap() == 0
        assert jobs_of(run.id) == [("todo", restart)]
    taken_by_a_worker(heartbeat_age_seconds=60)
    assert reap() == 1
    run.refresh_from_db()
    assert run.error == {"kind": "lost", "message": WORKER_LOST_MESSAGE}
    assert jobs_of(run.id) == [("failed", 3)]


def test_the_job_of_a_run_that_already_ended_is_failed_without_a_second_end(alice: Any, workers_mode: None) -> None:
    run = run_create(user_id=alice.pk, agent="demo", input={})
    taken_by_a_worker(heartbeat_age_seconds=60)
    AgentRun.objects.filter(pk=run.pk).update(status=RunStatus.CANCELLED)
    assert reap() == 0
    assert jobs_of(run.id) == [("failed", 1)]
    assert not Event.objects.filter(run_id=run.id).exists()


def test_operators_see_a_queued_run_and_its_job_in_the_admin(
    alice: Any, workers_mode: None, staff_client: Client
) -> None:
    run = run_create(user_id=alice.pk, agent="demo", input={})
    runs = staff_client.get("/admin/agents/agentrun/", {"status__exact": "queued"})
    assert runs.status_code == 200 and str(run.id) in runs.content.decode()
    # Procrastinate's own admin pages, read-only, list the job that will execute it.
    jobs = staff_client.get("/admin/procrastinate/procrastinatejob/")
    assert jobs.status_code == 200 and str(run.id) in jobs.content.decode()
