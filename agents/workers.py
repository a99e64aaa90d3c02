"""Runs on worker processes (``manage.py run_worker``, AGENT_EXECUTION=worker), through Procrastinate.

A worker takes run jobs (``agents.tasks``) and executes each run with this
process's supervisor, exactly as a web server does in process: the same
events, cancel requests (polled), timeouts and single end. What is added:

- **Stopping.** ``aworker_serve`` stops taking jobs when asked, lets the runs
  in progress finish for ``AGENT_WORKER_SHUTDOWN_GRACE_SECONDS``, then cancels
  the rest (``agent_error`` kind ``cancelled``, saying the worker stopped).
- **Dying.** A worker writes a heartbeat; the runs of one whose heartbeat is
  older than ``AGENT_WORKER_STALLED_SECONDS`` end as ``lost`` (or start again,
  for restartable agents), found by ``runs_reap_stalled``, which every worker
  and ``drain_events`` run.
"""

import asyncio
import logging
import time
import uuid
from datetime import timedelta
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import DatabaseError, transaction
from django.db.models import Q
from django.db.models.functions import Now
from django.utils import timezone
from procrastinate import manager, sql
from procrastinate.contrib.django import app
from procrastinate.contrib.django.django_connector import DjangoConnector
from procrastinate.contrib.django.models import ProcrastinateJob
from procrastinate.contrib.django.settings import settings as procrastinate_settings
from procrastinate.contrib.django.utils import connector_params
from procrastinate.psycopg_connector import PsycopgConnector
from procrastinate.worker import Worker

from .context import RunContext
from .exceptions import AgentError, UnknownAgent
from .execution import RunExecution
from .models import ACTIVE_STATUSES, AgentRun, RunStatus
from .registry import AgentSpec, agent_get
from .services import CANCEL_MESSAGE, WORKER_LOST_MESSAGE, WORKER_STOPPED_REASON, run_end_lost
from .supervisor import supervisor
from .tasks import RUN_TASK

logger = logging.getLogger(__name__)

STOP_TIMEOUT_SECONDS = 10.0  # For the engine to unregister once every run has ended.
WORKER_POOL_MAX_SIZE = 10  # The engine's connections: fetching, heartbeats, LISTEN, finishing jobs.


async def arun_job_execute(run_id: uuid.UUID, *, job_id: int, attempts: int) -> None:
    """Execute a run's job: start the run here and return once its end is recorded.

    A run that already ended (cancelled and reaped, say) is not started. A run
    that is already running lost its worker: only a restartable agent's run
    comes here again (``runs_reap_stalled``), and it continues the same run.
    If the job itself is cancelled (the engine aborts it), the run ends as
    cancelled before the cancellation goes on.
    """
    run = await AgentRun.objects.filter(pk=run_id).afirst()
    if run is None or run.status not in ACTIVE_STATUSES:
        logger.info("Job %s: run %s has already ended; nothing to do", job_id, run_id)
        return
    spec = _spec_for(run.agent)
    if run.status == RunStatus.RUNNING and not spec.restartable:
        # Never executed twice: the reaper ends it as lost.
        logger.error("Job %s: run %s is already running and its agent is not restartable", job_id, run_id)
        return
    restart = max(attempts, 1) if run.status == RunStatus.RUNNING else 0
    task = supervisor.start(spec, RunExecution(run, restart=restart), timeout_seconds=run.timeout_seconds)
    if run.cancel_requested_at is not None:  # Asked while it was queued.
        supervisor.cancel(run.id, reason=CANCEL_MESSAGE)
    logger.info("Job %s: executing run %s of %s (attempt %d)", job_id, run_id, run.agent, attempts + 1)
    try:
        await asyncio.wait([task])
    except asyncio.CancelledError:
        supervisor.cancel(run.id, reason=WORKER_STOPPED_REASON)
        await asyncio.wait([task], timeout=settings.AGENT_SHUTDOWN_TIMEOUT_SECONDS)
        raise


def _spec_for(name: str) -> AgentSpec:
    """The run's agent; one this worker does not have fails the run with a clear error."""
    try:
        return agent_get(name)
    except UnknownAgent:

        async def missing(ctx: RunContext, input: dict[str, object]) -> None:
            raise AgentError(f"This worker has no agent named {name!r}; deploy the same agents on every process.")

        return AgentSpec(name, "", missing, lambda value: value)


def runs_reap_stalled(*, seconds_since_heartbeat: float, exclude_worker_id: int | None = None) -> int:
    """End the runs of workers that stopped writing their heartbeat; return how many ended.

    Each stalled job is handled in its own transaction, locked (``SKIP
    LOCKED``) so that reapers in several processes never handle one twice: a
    restartable agent's run goes back to the queue (the same run continues on
    another worker); any other ends as ``lost`` and its job as failed. A
    worker passes its own id: it never reaps its own runs, even if the
    database was down for so long that its heartbeat looks dead.
    """
    ended = 0
    stalled = _stalled_jobs(seconds_since_heartbeat)
    if exclude_worker_id is not None:
        stalled = stalled.exclude(worker_id=exclude_worker_id)
    for job_id in list(stalled.values_list("pk", flat=True)):
        with transaction.atomic():
            job = stalled.select_for_update(skip_locked=True, of=("self",)).filter(pk=job_id).first()
            if job is None:  # Another reaper has it, or its worker is back.
                continue
            run = AgentRun.objects.filter(pk=job.args.get("run_id"), status__in=ACTIVE_STATUSES).first()
            if run is not None:
                if _restartable(run.agent) and job.attempts < settings.AGENT_RESTART_MAX_ATTEMPTS:
                    _job_manager().retry_job_by_id(job.pk, retry_at=timezone.now())
                    logger.warning("Run %s lost its worker; starting it again (restart %d)", run.pk, job.attempts + 1)
                    continue
                ended += run_end_lost(run, message=WORKER_LOST_MESSAGE)
            _job_manager().connector.get_sync_connector().execute_query(
                query=sql.queries["finish_job"], job_id=job.pk, status="failed", delete_job=False
            )
    return ended


def runs_reap_stalled_default() -> int:
    """Reap dead workers' runs with the configured threshold (a drain_events hook)."""
    return runs_reap_stalled(seconds_since_heartbeat=settings.AGENT_WORKER_STALLED_SECONDS)


def _worker_connector() -> PsycopgConnector:
    """The engine's connections for a worker (LISTEN needs its own): bounded waits, so a dead database is seen soon."""
    pool = settings.DATABASES["default"].get("OPTIONS", {}).get("pool", {})
    return PsycopgConnector(
        kwargs=connector_params(procrastinate_settings.DATABASE_ALIAS),
        min_size=1,
        max_size=WORKER_POOL_MAX_SIZE,
        timeout=pool.get("timeout", 2.0) if isinstance(pool, dict) else 2.0,
    )


def _stalled_jobs(seconds_since_heartbeat: float):  # type: ignore[no-untyped-def]
    cutoff = Now() - timedelta(seconds=seconds_since_heartbeat)
    return ProcrastinateJob.objects.filter(status="doing", task_name=RUN_TASK).filter(
        Q(worker__isnull=True) | Q(worker__last_heartbeat__lt=cutoff)
    )


def _restartable(name: str) -> bool:
    try:
        return agent_get(name).restartable
    except UnknownAgent:
        return False


def _job_manager() -> manager.JobManager:
    # On the Django connection, so that it is in the caller's transaction.
    return manager.JobManager(DjangoConnector(alias=procrastinate_settings.DATABASE_ALIAS))


class _Worker(Worker):
    """The engine's worker, which also says when it stops by itself (its heartbeat could not be written, say)."""

    def __init__(self, *args: Any, stopped: asyncio.Event, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stopped = stopped

    def stop(self) -> None:
        super().stop()  # type: ignore[no-untyped-call]
        self.stopped.set()


async def aworker_serve(
    *, concurrency: int, queues: list[str], stop: asyncio.Event, stop_now: asyncio.Event, name: str | None = None
) -> bool:
    """Take and execute run jobs until ``stop`` is set; return False if the worker stopped by itself.

    Once ``stop`` is set no job is taken; the runs in progress get
    ``AGENT_WORKER_SHUTDOWN_GRACE_SECONDS`` (cut short by ``stop_now``) to
    finish, then the rest are cancelled and their ends recorded. A worker
    that stops by itself cancels its runs at once: without its heartbeat,
    the others would soon end them as lost while they still ran here.
    """
    with app.replace_connector(_worker_connector()):
        async with app.open_async():
            app.perform_import_paths()
            engine_stopped = asyncio.Event()
            worker = _Worker(
                app,
                stopped=engine_stopped,
                queues=queues,
                name=name,
                concurrency=concurrency,
                install_signal_handlers=False,
                shutdown_graceful_timeout=None,  # The grace is ours, below: ours ends the runs properly.
                update_heartbeat_interval=settings.AGENT_WORKER_HEARTBEAT_SECONDS,
                stalled_worker_timeout=settings.AGENT_WORKER_STALLED_SECONDS,
                fetch_job_polling_interval=settings.AGENT_WORKER_POLL_SECONDS,
                delete_jobs="successful",
            )
            serving = asyncio.create_task(worker.run(), name="worker")  # type: ignore[no-untyped-call]
            reaping = asyncio.create_task(_reap_forever(worker), name="worker-reaper")
            fencing = asyncio.create_task(_fence(worker, engine_stopped), name="worker-fence")
            waiting = [asyncio.create_task(stop.wait()), asyncio.create_task(engine_stopped.wait())]
            try:
                await asyncio.wait([serving, *waiting], return_when=asyncio.FIRST_COMPLETED)
                by_itself = not stop.is_set()
                if by_itself:
                    logger.error("The worker stopped by itself (see above); cancelling its runs")
                await _stop(worker, serving, stop_now, grace_seconds=0 if by_itself else None)
            finally:
                for task in (reaping, fencing, *waiting):
                    task.cancel()
                await asyncio.wait([reaping, fencing, *waiting])
                if not serving.done():
                    serving.cancel()
                    await asyncio.wait([serving])
            if by_itself and serving.exception() is not None:
                # Its database connections failed: said once here, and the exit status says it too.
                logger.error("The worker's engine failed: %s", _cause(serving.exception()))
            else:
                serving.result()  # An error in the engine is raised, not swallowed.
    return not by_itself


async def _stop(
    worker: Worker, serving: "asyncio.Task[None]", stop_now: asyncio.Event, *, grace_seconds: float | None
) -> None:
    worker.stop()  # No new job; the engine waits for the running ones.
    grace: float = settings.AGENT_WORKER_SHUTDOWN_GRACE_SECONDS if grace_seconds is None else grace_seconds
    if supervisor and grace > 0:
        logger.info("Stopping: %d run(s) get %.0f s to finish", len(supervisor), grace)
        now = asyncio.create_task(stop_now.wait())
        await asyncio.wait([serving, now], timeout=grace, return_when=asyncio.FIRST_COMPLETED)
        now.cancel()
        await asyncio.wait([now])
    if not serving.done():
        await supervisor.shutdown(timeout_seconds=settings.AGENT_SHUTDOWN_TIMEOUT_SECONDS, reason=WORKER_STOPPED_REASON)
    await asyncio.wait([serving], timeout=STOP_TIMEOUT_SECONDS)


async def _fence(worker: Worker, stopped: asyncio.Event) -> None:
    """Cancel this worker's runs before the others could think it dead: its heartbeat cannot be written.

    Every heartbeat interval this writes the worker's heartbeat itself (as the
    engine does), so it knows when one last got through. Once none has for
    half of ``AGENT_WORKER_STALLED_SECONDS`` it stops the worker, which
    cancels its runs at once: they stop here before another worker or the
    drainer, seeing the heartbeat stale, ends them as lost. The engine alone
    would wait for them, and they would go on writing after that end.
    """
    interval: float = settings.AGENT_WORKER_HEARTBEAT_SECONDS
    limit = settings.AGENT_WORKER_STALLED_SECONDS / 2
    last_written = time.monotonic()
    while True:
        await asyncio.sleep(interval)
        if worker.worker_id is None:  # Not registered yet, or already gone.
            last_written = time.monotonic()
            continue
        try:
            await app.job_manager.update_heartbeat(worker.worker_id)
        except Exception as exc:  # Any failure counts as a heartbeat not written; it is logged.
            logger.warning("Could not write the worker's heartbeat: %s", _cause(exc))
        else:
            last_written = time.monotonic()
        if time.monotonic() - last_written > limit:
            logger.error("No heartbeat written for %.1f s: stopping, and cancelling this worker's runs", limit)
            stopped.set()
            return


def _cause(exc: BaseException | None) -> str:
    """What failed: the engine wraps database errors in a ConnectorException that says only "Database error"."""
    return str(exc.__cause__ if exc is not None and exc.__cause__ is not None else exc).strip()


async def _reap_forever(worker: Worker) -> None:
    interval: float = settings.AGENT_WORKER_REAP_SECONDS
    while True:
        try:
            ended = await database_sync_to_async(runs_reap_stalled)(
                seconds_since_heartbeat=settings.AGENT_WORKER_STALLED_SECONDS, exclude_worker_id=worker.worker_id
            )
        except DatabaseError as exc:  # The database is down: the next round tries again.
            logger.warning("Could not look for the runs of stalled workers: %s", exc)
        except Exception:  # Keep reaping whatever one round hit.
            logger.exception("Could not look for the runs of stalled workers")
        else:
            if ended:
                logger.warning("Ended %d run(s) of stalled workers", ended)
        await asyncio.sleep(interval)
