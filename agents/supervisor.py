"""Own the asyncio tasks of the runs this process executes.

Runs live in the process that started them (the ASGI server or the
``run_agent`` command). The supervisor tracks their tasks, cancels one on
request (also when another process asks, through ``cancel_requested_at``),
and at shutdown cancels them all and waits, bounded, for each to record its
``agent_error`` (kind ``cancelled``).
"""

import asyncio
import contextvars
import logging
import uuid
from dataclasses import dataclass

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import DatabaseError

from .execution import Outcome, RunExecution
from .models import AgentRun, RunStatus
from .registry import AgentSpec
from .runner import run_execute

logger = logging.getLogger(__name__)

SHUTDOWN_REASON = "The run was cancelled because the server is shutting down."
FORCE_END_TIMEOUT_SECONDS = 2.0


@dataclass(slots=True)
class _Tracked:
    task: asyncio.Task[object]
    execution: RunExecution


class SupervisorClosed(RuntimeError):
    """The supervisor is shutting down and starts no new runs."""


class RunSupervisor:
    def __init__(self) -> None:
        self._runs: dict[uuid.UUID, _Tracked] = {}
        self._poller: asyncio.Task[None] | None = None
        self._closing = False

    def __contains__(self, run_id: uuid.UUID) -> bool:
        return run_id in self._runs

    def __len__(self) -> int:
        return len(self._runs)

    @property
    def accepting(self) -> bool:
        return not self._closing

    def open(self) -> None:
        """Accept runs again after a shutdown (a process that goes on, such as a test run)."""
        self._closing = False

    def start(self, spec: AgentSpec, execution: RunExecution, *, timeout_seconds: float) -> asyncio.Task[object]:
        """Start executing a queued run on the running loop."""
        if self._closing:
            raise SupervisorClosed("The server is shutting down; no new runs start.")
        # A fresh context: a run started from a sync view (through
        # async_to_sync) must not inherit that request's thread executor,
        # which is gone by the time the run touches the database.
        task: asyncio.Task[object] = asyncio.get_running_loop().create_task(
            run_execute(spec, execution, timeout_seconds),
            name=f"agent-run-{execution.run_id}",
            context=contextvars.Context(),
        )
        self._runs[execution.run_id] = _Tracked(task, execution)
        task.add_done_callback(lambda done: self._forget(execution.run_id, done))
        if self._poller is None:
            self._poller = asyncio.get_running_loop().create_task(
                self._poll_cancels(), name="agent-run-cancels", context=contextvars.Context()
            )
        return task

    def cancel(self, run_id: uuid.UUID, *, reason: str) -> bool:
        """Cancel a run executing in this process; False if it is not here."""
        tracked = self._runs.get(run_id)
        if tracked is None or tracked.task.done():
            return False
        tracked.execution.cancel(reason)
        # A task cancelled before it first ran would never record the run's
        # end: until it runs, the request alone stops it.
        if tracked.execution.running:
            tracked.task.cancel()
        return True

    def abandon_end(self, run_id: uuid.UUID) -> None:
        """Stop waiting for a run's end to be written (the database is down and the process must stop)."""
        tracked = self._runs.get(run_id)
        if tracked is not None:
            tracked.execution.end_abandon()

    async def join(self, run_id: uuid.UUID) -> None:
        """Wait for a run of this process to end (for commands and tests)."""
        tracked = self._runs.get(run_id)
        if tracked is not None:
            await asyncio.wait([tracked.task])

    async def shutdown(self, *, timeout_seconds: float, reason: str = SHUTDOWN_REASON) -> None:
        """Stop accepting runs, cancel every run, and wait up to ``timeout_seconds`` for their ends."""
        self._closing = True
        tasks = [tracked.task for tracked in self._runs.values()]
        for run_id in list(self._runs):
            self.cancel(run_id, reason=reason)
        if tasks:
            logger.info("Cancelling %d run(s) for shutdown", len(tasks))
            _, pending = await asyncio.wait(tasks, timeout=timeout_seconds)
            if pending:
                # An agent that ignores its cancellation, or an end that the
                # database will not take: either way it is ended here or by the reaper.
                logger.error("%d run(s) did not end within %ss; ending them in the log", len(pending), timeout_seconds)
                stuck = [tracked.execution for tracked in self._runs.values() if tracked.task in pending]
                for execution in stuck:
                    execution.end_abandon()
                await self._force_end(stuck, reason=reason)
        await self._poller_stop()

    async def _force_end(self, executions: list[RunExecution], *, reason: str) -> None:
        """Record the end of runs whose agents ignore cancellation (they can emit nothing more)."""
        for execution in executions:
            try:
                await asyncio.wait_for(
                    execution.finish(Outcome(RunStatus.CANCELLED, kind="cancelled", message=reason)),
                    timeout=FORCE_END_TIMEOUT_SECONDS,
                )
            except DatabaseError as exc:  # The reaper will end it as lost.
                logger.warning("Could not record the end of run %s: %s", execution.run_id, exc)
            except Exception:  # The reaper will end it as lost.
                logger.exception("Could not record the end of run %s", execution.run_id)

    def _forget(self, run_id: uuid.UUID, task: asyncio.Task[object]) -> None:
        self._runs.pop(run_id, None)
        if not task.cancelled() and task.exception() is not None:
            logger.error("Run %s task failed", run_id, exc_info=task.exception())

    async def _poll_cancels(self) -> None:
        """Cancel local runs that another process asked to cancel; stop when none are left."""
        interval: float = settings.AGENT_CANCEL_POLL_SECONDS
        try:
            while self._runs:
                await asyncio.sleep(interval)
                local = list(self._runs)
                try:
                    requested = await database_sync_to_async(_cancel_requested)(local)
                except DatabaseError as exc:  # The database is down: try again next interval.
                    logger.warning("Could not check for cancel requests: %s", exc)
                    continue
                except Exception:  # Keep polling whatever one check hit.
                    logger.exception("Could not check for cancel requests")
                    continue
                for run_id in requested:
                    self.cancel(run_id, reason="The run was cancelled by the user.")
        finally:
            self._poller = None

    async def _poller_stop(self) -> None:
        poller = self._poller
        if poller is not None:
            poller.cancel()
            await asyncio.wait([poller])


def _cancel_requested(run_ids: list[uuid.UUID]) -> list[uuid.UUID]:
    return list(AgentRun.objects.filter(pk__in=run_ids, cancel_requested_at__isnull=False).values_list("pk", flat=True))


supervisor = RunSupervisor()


async def ashutdown() -> None:
    """Shutdown hook for the server: cancel this process's runs and wait for their ends."""
    await supervisor.shutdown(timeout_seconds=settings.AGENT_SHUTDOWN_TIMEOUT_SECONDS)
