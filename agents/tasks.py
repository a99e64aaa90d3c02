"""The task engine's job that executes a run on a worker (AGENT_EXECUTION=worker).

Procrastinate discovers this module (``PROCRASTINATE_AUTODISCOVER_MODULE_NAME``).
A run's job is deferred in the transaction that creates the run, so a run that
was answered with 201 always has its job; ``agents.workers`` executes it.
"""

import uuid

from procrastinate import JobContext
from procrastinate.contrib.django import app

RUN_TASK = "agents.run"
RUN_QUEUE = "agents"


@app.task(name=RUN_TASK, queue=RUN_QUEUE, pass_context=True)
async def run(context: JobContext, run_id: str) -> None:
    """Execute run ``run_id`` in this worker, until its end is recorded."""
    from .workers import arun_job_execute  # The worker's side, imported where it runs.

    assert context.job.id is not None
    await arun_job_execute(uuid.UUID(run_id), job_id=context.job.id, attempts=context.job.attempts)


def run_job_defer(run_id: uuid.UUID) -> int:
    """Enqueue the run's job on the current database connection: inside the caller's transaction."""
    return run.defer(run_id=str(run_id))
