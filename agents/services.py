"""Start, cancel and reap agent runs."""

import logging
import uuid
from datetime import timedelta

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from notifications.exceptions import InvalidJson
from notifications.jsonlimits import json_encoded_size
from notifications.models import EventType
from notifications.services import event_record

from . import metrics
from .exceptions import InvalidRunInput, RunFinished, RunNotFound, TooManyRuns
from .execution import Observer, RunExecution
from .models import ACTIVE_STATUSES, AgentRun, RunStatus
from .registry import agent_get, agent_input_validate
from .supervisor import SupervisorClosed, supervisor
from .tasks import run_job_defer

logger = logging.getLogger(__name__)

LOST_MESSAGE = "The process running this agent stopped before the run ended."
CANCEL_MESSAGE = "The run was cancelled by the user."
WORKER_STOPPED_REASON = "The run was cancelled because the worker running it stopped."
WORKER_LOST_MESSAGE = "The worker running this agent stopped responding before the run ended."


def run_create(*, user_id: int, agent: str, input: object, run_timeout: object = None) -> AgentRun:
    """Validate and create a queued run; raise ``RunRefused`` (with a protocol code) if not allowed."""
    spec = agent_get(agent)
    _input_size_check(input)
    validated = agent_input_validate(spec, input)
    timeout_seconds = _timeout_resolve(run_timeout)
    with transaction.atomic():
        # Lock the user row so that concurrent starts count each other.
        get_user_model()._default_manager.select_for_update().filter(pk=user_id).first()
        active = AgentRun.objects.filter(user_id=user_id, status__in=ACTIVE_STATUSES).count()
        limit: int = settings.AGENT_MAX_ACTIVE_RUNS_PER_USER
        if active >= limit:
            raise TooManyRuns(f"You already have {active} runs going; the limit is {limit}.")
        run = AgentRun.objects.create(
            user_id=user_id,
            agent=spec.name,
            input=validated,
            timeout_seconds=timeout_seconds,
            created_at=timezone.now(),
        )
        if settings.AGENT_EXECUTION == "worker":
            # In the run's transaction: a run that exists always has its job.
            run_job_defer(run.id)
        return run


async def arun_start(
    *, user_id: int, agent: str, input: object, run_timeout: object = None, observer: Observer | None = None
) -> AgentRun:
    """Create a run and start executing it: in this process, or on a worker (``AGENT_EXECUTION``).

    In process, raises ``SupervisorClosed`` while the process shuts down; a
    run created just before that is removed again, since it never started.
    For a worker, the run is only enqueued (``observer`` is not called: follow
    the run's events in the log instead).
    """
    if settings.AGENT_EXECUTION == "worker":
        queued: AgentRun = await database_sync_to_async(run_create)(
            user_id=user_id, agent=agent, input=input, run_timeout=run_timeout
        )
        return queued
    if not supervisor.accepting:
        raise SupervisorClosed("The server is shutting down; no new runs start.")
    run: AgentRun = await database_sync_to_async(run_create)(
        user_id=user_id, agent=agent, input=input, run_timeout=run_timeout
    )
    try:
        supervisor.start(
            agent_get(run.agent), RunExecution(run, observer=observer), timeout_seconds=run.timeout_seconds
        )
    except SupervisorClosed:
        await AgentRun.objects.filter(pk=run.pk, status=RunStatus.QUEUED).adelete()
        raise
    return run


async def arun_cancel(*, user_id: int, run_id: uuid.UUID) -> AgentRun:
    """Ask a run to stop, wherever it executes; raise if it is not the user's or already ended."""
    run: AgentRun = await database_sync_to_async(_cancel_request)(user_id=user_id, run_id=run_id)
    supervisor.cancel(run.id, reason=CANCEL_MESSAGE)  # Other processes see cancel_requested_at.
    return run


def _cancel_request(*, user_id: int, run_id: uuid.UUID) -> AgentRun:
    run = AgentRun.objects.filter(pk=run_id, user_id=user_id).first()
    if run is None:
        raise RunNotFound(f"No run {run_id}.")
    if run.status not in ACTIVE_STATUSES:
        raise RunFinished(f"The run has already ended ({run.status}).")
    AgentRun.objects.filter(pk=run.pk, cancel_requested_at__isnull=True).update(cancel_requested_at=timezone.now())
    run.refresh_from_db()
    return run


def runs_reap_lost(*, grace_seconds: float) -> int:
    """End runs whose process died: still active well past their timeout.

    Each gets ``agent_error`` kind ``lost`` and status ``failed``, in the same
    transaction that claims it, so a run is never ended twice.
    """
    now = timezone.now()
    # Active runs are few (bounded per user) and indexed; the deadline is
    # per run, so it is computed here rather than in portable SQL.
    # On workers a queued run waits for a free worker, however long: its job is in the
    # queue, and a worker that takes it starts it.
    statuses = [RunStatus.RUNNING] if settings.AGENT_EXECUTION == "worker" else list(ACTIVE_STATUSES)
    active = AgentRun.objects.filter(status__in=statuses).only(
        "pk", "user_id", "agent", "timeout_seconds", "started_at", "created_at"
    )
    overdue = [
        run
        for run in active
        if (run.started_at or run.created_at) + timedelta(seconds=run.timeout_seconds + grace_seconds) < now
    ]
    reaped = 0
    for run in overdue:
        with transaction.atomic():
            reaped += run_end_lost(run, message=LOST_MESSAGE)
    return reaped


def run_end_lost(run: AgentRun, *, message: str) -> bool:
    """End an active run as ``lost`` (one ``agent_error``), unless something ended it first.

    Call it inside a transaction: the claim and the event commit together, so
    a run is never ended twice. ``run`` needs its pk, user, agent and start.
    """
    now = timezone.now()
    claimed = AgentRun.objects.filter(pk=run.pk, status__in=ACTIVE_STATUSES).update(
        status=RunStatus.FAILED, finished_at=now, error={"kind": "lost", "message": message}
    )
    if not claimed:
        return False
    began = run.started_at or run.created_at
    event_record(
        user_id=run.user_id,
        event=EventType.AGENT_ERROR,
        run_id=run.pk,
        agent=run.agent,
        data={"kind": "lost", "message": message, "duration_ms": int((now - began).total_seconds() * 1000)},
    )
    transaction.on_commit(lambda: metrics.run_ended(outcome="lost", duration_seconds=(now - began).total_seconds()))
    logger.warning("Run %s of %s was lost; ended it: %s", run.pk, run.agent, message)
    return True


def runs_reap_lost_default() -> int:
    """Reap lost runs with the configured grace (a drain_events hook)."""
    return runs_reap_lost(grace_seconds=settings.AGENT_LOST_GRACE_SECONDS)


def _input_size_check(value: object) -> None:
    try:
        size = json_encoded_size(value, max_depth=settings.JSON_MAX_DEPTH)
    except InvalidJson as exc:
        raise InvalidRunInput(f"input must be JSON: {exc}") from None
    limit: int = settings.AGENT_INPUT_MAX_BYTES
    if size > limit:
        raise InvalidRunInput(f"input is {size} bytes; the limit is {limit}.")


def _timeout_resolve(value: object) -> float:
    maximum: float = settings.AGENT_RUN_MAX_TIMEOUT_SECONDS
    if value is None:
        return float(min(settings.AGENT_RUN_TIMEOUT_SECONDS, maximum))
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= maximum:
        raise InvalidRunInput(f"timeout must be a number of seconds above 0 and at most {maximum:g}.")
    return float(value)
