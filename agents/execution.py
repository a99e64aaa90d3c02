"""One run's execution: its events in lifecycle order, its start, its single end, its cancel request.

Every event goes through ``notifications.services`` under one lock, checked
by ``Lifecycle``. The end (``agent_completed`` or ``agent_error``) is
written in the same transaction that moves the run out of its active
status, so it happens exactly once even if a reaper races the runner.
The agent sees none of this: it gets ``context``, which emits through
``emit``. The runner (``run_execute``) and the supervisor drive the rest.
"""

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.utils import timezone

from notifications.exceptions import DATABASE_UNAVAILABLE, InvalidEventData
from notifications.models import Event, EventType
from notifications.services import aevent_record, aevents_record_if

from . import metrics
from .context import RunContext
from .exceptions import EventsUnavailable
from .lifecycle import Lifecycle
from .models import ACTIVE_STATUSES, AgentRun, RunStatus
from .restart import CALL_STOPPED_MESSAGE, earlier_attempt_read, restart_thought

logger = logging.getLogger(__name__)

FINISH_RETRY_FIRST_SECONDS = 0.1
UNAVAILABLE_MESSAGE = "The run's events could not be recorded because the database was unavailable."
Observer = Callable[[Event], None]


@dataclass(frozen=True, slots=True)
class Outcome:
    status: RunStatus
    result: Any = None
    kind: str | None = None  # agent_error kind; None when completed.
    message: str = ""


class RunExecution:
    """Execute one queued run: ``start``, events through ``emit``, then ``finish`` once.

    ``cancel`` may come at any time, from the supervisor; ``end_abandon``
    when the process must stop before the end could be written.
    """

    def __init__(self, run: AgentRun, *, observer: Observer | None = None, restart: int = 0) -> None:
        self.run_id: uuid.UUID = run.id
        self.user_id: int = run.user_id
        self.agent: str = run.agent
        self.context = RunContext(run, emit=self.emit)
        self._input: dict[str, Any] = run.input
        self._observer = observer
        self._lifecycle = Lifecycle()
        self._emit_lock = asyncio.Lock()
        self._started_at = time.monotonic()
        self._running = False
        self._cancel_requested = False
        self._cancel_reason = "The run was cancelled."
        self._unavailable = False
        self._end_abandoned = asyncio.Event()
        # Above 0: the run is already running, and this is its restart number (agents.restart).
        self._restart = restart
        self._first_started_at = run.started_at

    @property
    def running(self) -> bool:
        """Whether ``start`` has been entered (and the run's task is therefore executing it)."""
        return self._running

    @property
    def cancel_requested(self) -> bool:
        return self._cancel_requested

    @property
    def cancel_reason(self) -> str:
        return self._cancel_reason

    @property
    def unavailable(self) -> bool:
        """Whether one of the run's events could not be written: it ends as ``unavailable``, emitting nothing more."""
        return self._unavailable

    def cancel(self, reason: str) -> None:
        """Record that the run should stop, and why.

        A run cancelled before its task ran sees the request when it starts;
        one that is ``running`` must also have its task cancelled, which is
        the caller's (the supervisor owns the task).
        """
        self._cancel_reason = reason
        self._cancel_requested = True

    def end_abandon(self) -> None:
        """Stop retrying the write of the run's end (the process is stopping); the reaper will end it."""
        self._end_abandoned.set()

    async def emit(self, event: str, data: dict[str, Any], *, call_id: str | None = None, tool: str = "") -> None:
        """Record one of the run's events after checking its order; raise ``EventsUnavailable`` once one failed."""
        async with self._emit_lock:
            if self._unavailable:
                raise EventsUnavailable(UNAVAILABLE_MESSAGE)
            # Advance first: once the write has been handed to the database it
            # happens, even if this task is cancelled while it publishes.
            before = self._lifecycle.snapshot()
            self._lifecycle.advance(event, call_id=call_id, tool=tool)
            try:
                # Cancelled meanwhile, it still returns only once the event is written (groupcommit): the
                # run's end, written next under this lock, cannot overtake it.
                record = await aevent_record(
                    user_id=self.user_id, event=event, run_id=self.run_id, agent=self.agent, data=data
                )
            except InvalidEventData:
                self._lifecycle.restore(before)  # Nothing was written.
                raise
            except DATABASE_UNAVAILABLE as exc:
                self._lifecycle.restore(before)
                self._unavailable = True
                logger.warning("Run %s could not record %s; it ends as unavailable: %s", self.run_id, event, exc)
                raise EventsUnavailable(UNAVAILABLE_MESSAGE) from exc
        self._observe(record)

    async def start(self) -> bool:
        """Move the run to running and record agent_started; False if it is no longer queued.

        If the database is unavailable the run is started all the same, as
        ``unavailable``: ``finish`` then records its end once it is back.
        """
        self._running = True
        if self._restart:
            return await self._start_again()
        self._started_at = time.monotonic()
        now = timezone.now()

        def claim() -> bool:
            return bool(
                AgentRun.objects.filter(pk=self.run_id, status=RunStatus.QUEUED).update(
                    status=RunStatus.RUNNING, started_at=now
                )
            )

        async with self._emit_lock:
            self._lifecycle.check(EventType.AGENT_STARTED)
            try:
                records = await aevents_record_if(
                    condition=claim,
                    user_id=self.user_id,
                    run_id=self.run_id,
                    agent=self.agent,
                    events=[(EventType.AGENT_STARTED, {"input": self._input})],
                )
            except DATABASE_UNAVAILABLE as exc:
                logger.warning("Run %s could not start; it ends as unavailable: %s", self.run_id, exc)
                self._unavailable = True
                return True
            if records:
                self._lifecycle.advance(EventType.AGENT_STARTED)
                metrics.run_started()
        for record in records:
            self._observe(record)
        return bool(records)

    def elapsed_seconds(self) -> float:
        """Seconds since the run first started: a restarted run's timeout and duration count from then."""
        return time.monotonic() - self._started_at

    async def _start_again(self) -> bool:
        """Take a running run over from its dead worker; False if something ended it meanwhile.

        In one transaction, while the run is still running: its open tool
        calls are closed as failed and an ``agent_thinking`` says that it
        starts again. The agent then runs from its beginning, its steps
        counting on from the earlier attempt's.
        """
        if self._first_started_at is not None:
            self._started_at = time.monotonic() - (timezone.now() - self._first_started_at).total_seconds()
        async with self._emit_lock:
            try:
                earlier = await database_sync_to_async(earlier_attempt_read)(self.run_id)
                if earlier.ended:
                    return False
                self._lifecycle.restore((True, False, earlier.open_calls))
                events = _calls_closed(earlier.open_calls, message=CALL_STOPPED_MESSAGE)
                step = earlier.steps + 1
                events.append((EventType.AGENT_THINKING, {"thought": restart_thought(self._restart), "step": step}))
                records = await aevents_record_if(
                    condition=_still_running(self.run_id),
                    user_id=self.user_id,
                    run_id=self.run_id,
                    agent=self.agent,
                    events=events,
                )
            except DATABASE_UNAVAILABLE as exc:
                logger.warning("Run %s could not start again; it ends as unavailable: %s", self.run_id, exc)
                self._unavailable = True
                return True
            if not records:
                return False
            for event, data in events:
                self._lifecycle.advance(event, call_id=data.get("call_id"))
            self.context.steps_continue_after(step)
        logger.warning("Run %s lost its worker and starts again (restart %d)", self.run_id, self._restart)
        for record in records:
            self._observe(record)
        return True

    async def finish(self, outcome: Outcome) -> None:
        """Close any open tool calls and record the one terminal event, with the run's end.

        All of it is written in the transaction that moves the run out of its
        active status, so if a reaper ended the run first nothing is written
        after its ``agent_error``. Calling it again is a no-op.
        """
        duration_ms = int((time.monotonic() - self._started_at) * 1000)
        async with self._emit_lock:
            if self._lifecycle.finished:
                return
            events = _calls_closed(self._lifecycle.open_calls, message=outcome.message)
            if outcome.kind is None:
                events.append((EventType.AGENT_COMPLETED, {"result": outcome.result, "duration_ms": duration_ms}))
                error = None
            else:
                data = {"kind": outcome.kind, "message": outcome.message, "duration_ms": duration_ms}
                events.append((EventType.AGENT_ERROR, data))
                error = {"kind": outcome.kind, "message": outcome.message}
            records = await self._retrying(
                lambda: aevents_record_if(
                    condition=_end_claim(self.run_id, outcome, error),
                    user_id=self.user_id,
                    run_id=self.run_id,
                    agent=self.agent,
                    events=events,
                )
            )
            # Written now, by whoever claimed the run first, or left to the
            # reaper: the run is over either way, and emits nothing more.
            self._lifecycle.finished = True
            if records:
                metrics.run_ended(outcome=outcome.kind or "completed", duration_seconds=duration_ms / 1000)
        for record in records:
            self._observe(record)

    def _observe(self, record: Event) -> None:
        if self._observer is not None:
            self._observer(record)

    async def _retrying(self, write: Callable[[], Awaitable[list[Event]]]) -> list[Event]:
        """Write the run's end, retrying through a database outage until it is written or abandoned.

        The delay doubles up to ``AGENT_END_RETRY_MAX_SECONDS``, so the end
        is written within about that long of the database coming back. If
        the process stops first (``end_abandon``), the run stays active and
        the reaper that drain_events runs ends it as ``lost``.
        """
        delay = FINISH_RETRY_FIRST_SECONDS
        while True:
            try:
                return await write()
            except DATABASE_UNAVAILABLE as exc:
                if self._end_abandoned.is_set():
                    logger.warning("The end of run %s was not recorded; the reaper will end it: %s", self.run_id, exc)
                    return []
                logger.warning("Could not record the end of run %s, retrying in %.1f s: %s", self.run_id, delay, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._end_abandoned.wait(), timeout=delay)
            delay = min(delay * 2, settings.AGENT_END_RETRY_MAX_SECONDS)


def _calls_closed(open_calls: dict[str, str], *, message: str) -> list[tuple[str, dict[str, Any]]]:
    """A failed ``tool_completed`` for each call still open, cut short by the run's end or restart."""
    return [
        (
            EventType.TOOL_COMPLETED,
            {"call_id": call_id, "tool": tool, "ok": False, "error": message, "duration_ms": None},
        )
        for call_id, tool in open_calls.items()
    ]


def _still_running(run_id: uuid.UUID) -> Callable[[], bool]:
    def claim() -> bool:
        return AgentRun.objects.filter(pk=run_id, status=RunStatus.RUNNING).exists()

    return claim


def _end_claim(run_id: uuid.UUID, outcome: Outcome, error: dict[str, str] | None) -> Callable[[], bool]:
    def claim() -> bool:
        return bool(
            AgentRun.objects.filter(pk=run_id, status__in=ACTIVE_STATUSES).update(
                status=outcome.status,
                result=outcome.result if outcome.kind is None else None,
                error=error,
                finished_at=timezone.now(),
            )
        )

    return claim
