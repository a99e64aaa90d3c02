"""Execute one run: its context for the agent, its events, its single end.

Every event goes through ``notifications.services`` in lifecycle order,
checked by ``Lifecycle``. The end (``agent_completed`` or ``agent_error``)
is written in the same transaction that moves the run out of its active
status, so it happens exactly once even if a reaper races the runner.
"""

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from django.conf import settings
from django.utils import timezone

from notifications.exceptions import DATABASE_UNAVAILABLE, InvalidEventData, InvalidJson
from notifications.jsonlimits import json_encoded_size
from notifications.models import Event, EventType
from notifications.services import aevent_record, aevents_record_if

from . import metrics
from .exceptions import AgentError, EventsUnavailable, ToolError, UnknownTool
from .lifecycle import Lifecycle
from .models import ACTIVE_STATUSES, AgentRun, RunStatus
from .registry import AgentSpec, tool_get

logger = logging.getLogger(__name__)

MESSAGE_MAX_CHARS = 500
RESULT_ENVELOPE_BYTES = 1024
FINISH_RETRY_FIRST_SECONDS = 0.1
UNAVAILABLE_MESSAGE = "The run's events could not be recorded because the database was unavailable."
Observer = Callable[[Event], None]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Outcome:
    status: RunStatus
    result: Any = None
    kind: str | None = None  # agent_error kind; None when completed.
    message: str = ""


def user_message(exc: BaseException) -> str:
    """What the user may read about a failure: our own errors' text, otherwise only the type."""
    if isinstance(exc, AgentError):
        # (Without NUL, which the log cannot store: the run's end must always be writable.)
        return str(exc).replace("\x00", "")[:MESSAGE_MAX_CHARS]
    return f"The agent failed with an internal error ({type(exc).__name__})."


class RunContext:
    """What an agent receives: ``think`` and ``tool``, bound to one run."""

    def __init__(self, run: AgentRun, *, observer: Observer | None = None) -> None:
        self.run_id: uuid.UUID = run.id
        self.user_id: int = run.user_id
        self.agent: str = run.agent
        self.input: dict[str, Any] = run.input
        self.cancel_reason = "The run was cancelled."
        # Set by the supervisor. A run cancelled before its task ran sees the
        # flag when it starts; one that is running is also cancelled outright.
        self.cancel_requested = False
        self.running = False
        # Set when one of the run's events could not be written: the run then
        # ends as ``unavailable``, and nothing more is emitted.
        self.unavailable = False
        # Set when the process stops waiting for the run's end to be written.
        self._end_abandoned = asyncio.Event()
        self._observer = observer
        self._lifecycle = Lifecycle()
        self._emit_lock = asyncio.Lock()
        self._step = 0
        self._started_at = time.monotonic()
        self._calls: dict[str, tuple[str, float]] = {}  # Started tool calls: call id -> (tool, start time).

    async def think(self, thought: str) -> None:
        """Tell the user what the agent is thinking."""
        self._step += 1
        await self._emit(EventType.AGENT_THINKING, {"thought": str(thought), "step": self._step})

    async def tool(self, name: str, /, **args: Any) -> Any:
        """Call a registered tool, announcing it before and reporting it after.

        A tool that raises is reported (``ok: false``) and then raised to the
        agent as ``ToolError``, which the agent may handle. Only the text of a
        ``ToolError`` (or other ``AgentError``) reaches the user.
        """
        spec = tool_get(name)
        spec.bind(args)
        call_id = await self.tool_started(name, args)
        try:
            result = await (spec.func(**args) if spec.is_async else asyncio.to_thread(spec.func, **args))
        except Exception as exc:
            message = user_message(exc)
            await self.tool_failed(call_id, message)
            raise ToolError(f"Tool {name} failed: {message}") from exc
        await self.tool_completed(call_id, result)
        return result

    async def tool_started(self, name: str, args: dict[str, Any]) -> str:
        """Announce a call of tool ``name`` (``tool_executing``); return its call id.

        For tools that something else executes, such as a LangChain tool inside
        a graph; ``tool`` uses it for registered ones. Every call started is
        ended by ``tool_completed`` or ``tool_failed``, or else by the run's end.
        Raises ``ToolError`` if the arguments cannot be sent (not JSON, too large).
        """
        call_id = uuid.uuid4().hex
        try:
            await self._emit(
                EventType.TOOL_EXECUTING, {"call_id": call_id, "tool": name, "args": args}, call_id=call_id, tool=name
            )
        except InvalidEventData as exc:
            raise ToolError(f"Bad arguments for tool {name}: {exc}") from None
        self._calls[call_id] = (name, time.monotonic())
        return call_id

    async def tool_completed(self, call_id: str, result: Any) -> None:
        """Report a started call's result (``tool_completed``, ok).

        A result that cannot be sent (not JSON, too large) is reported as the
        call's failure instead, and raised as ``ToolError``.
        """
        name, started = self._calls[call_id]
        data = {"call_id": call_id, "tool": name, "ok": True, "result": result, "duration_ms": _ms_since(started)}
        try:
            await self._emit(EventType.TOOL_COMPLETED, data, call_id=call_id)
        except InvalidEventData:
            message = "The tool returned a result that cannot be sent (not JSON, or too large)."
            await self.tool_failed(call_id, message)
            raise ToolError(f"Tool {name} failed: {message}") from None
        del self._calls[call_id]

    async def tool_failed(self, call_id: str, message: str) -> None:
        """Report that a started call failed (``tool_completed``, not ok), with a message the user may read."""
        name, started = self._calls[call_id]
        data = {"call_id": call_id, "tool": name, "ok": False, "error": message, "duration_ms": _ms_since(started)}
        await self._emit(EventType.TOOL_COMPLETED, data, call_id=call_id)
        del self._calls[call_id]

    async def _emit(self, event: str, data: dict[str, Any], *, call_id: str | None = None, tool: str = "") -> None:
        async with self._emit_lock:
            if self.unavailable:
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
                self.unavailable = True
                logger.warning("Run %s could not record %s; it ends as unavailable: %s", self.run_id, event, exc)
                raise EventsUnavailable(UNAVAILABLE_MESSAGE) from exc
        self._observe(record)

    def end_abandon(self) -> None:
        """Stop retrying the write of the run's end (the process is stopping); the reaper will end it."""
        self._end_abandoned.set()

    def _observe(self, record: Event) -> None:
        if self._observer is not None:
            self._observer(record)

    async def _start(self) -> bool:
        """Move the run to running and record agent_started; False if it is no longer queued."""
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
            records = await aevents_record_if(
                condition=claim,
                user_id=self.user_id,
                run_id=self.run_id,
                agent=self.agent,
                events=[(EventType.AGENT_STARTED, {"input": self.input})],
            )
            if records:
                self._lifecycle.advance(EventType.AGENT_STARTED)
                metrics.run_started()
        for record in records:
            self._observe(record)
        return bool(records)

    async def _finish(self, outcome: Outcome) -> None:
        """Close any open tool calls and record the one terminal event, with the run's end.

        All of it is written in the transaction that moves the run out of its
        active status, so if a reaper ended the run first nothing is written
        after its ``agent_error``. Calling it again is a no-op.
        """
        duration_ms = _ms_since(self._started_at)
        async with self._emit_lock:
            if self._lifecycle.finished:
                return
            events: list[tuple[str, dict[str, Any]]] = [
                (
                    EventType.TOOL_COMPLETED,
                    {"call_id": call_id, "tool": tool, "ok": False, "error": outcome.message, "duration_ms": None},
                )
                for call_id, tool in self._lifecycle.open_calls.items()
            ]
            if outcome.kind is None:
                events.append((EventType.AGENT_COMPLETED, {"result": outcome.result, "duration_ms": duration_ms}))
                error = None
            else:
                data = {"kind": outcome.kind, "message": outcome.message, "duration_ms": duration_ms}
                events.append((EventType.AGENT_ERROR, data))
                error = {"kind": outcome.kind, "message": outcome.message}
            records = await self._retrying(
                lambda: aevents_record_if(
                    condition=_finish_claim(self.run_id, outcome, error),
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


def _finish_claim(run_id: uuid.UUID, outcome: Outcome, error: dict[str, str] | None) -> Callable[[], bool]:
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


async def run_execute(spec: AgentSpec, ctx: RunContext, timeout_seconds: float) -> RunStatus | None:
    """Run the agent under its timeout and record its end; return the final status.

    Cancelling this task (the supervisor does, for a user's cancel or a
    shutdown) ends the run as ``cancelled``: the cancellation is absorbed so
    that the end can still be recorded, and the task returns normally.
    """
    ctx.running = True
    try:
        started = await _uncancellable(ctx._start())
    except DATABASE_UNAVAILABLE as exc:
        logger.warning("Run %s could not start; it ends as unavailable: %s", ctx.run_id, exc)
        ctx.unavailable = started = True
    if not started:
        logger.info("Run %s was no longer queued; not started", ctx.run_id)
        return None
    deadline = asyncio.timeout(timeout_seconds)
    try:
        if ctx.unavailable:
            raise EventsUnavailable(UNAVAILABLE_MESSAGE)
        if ctx.cancel_requested:  # Asked before or while it started.
            raise asyncio.CancelledError
        async with deadline:
            result = await spec.func(ctx, ctx.input)
        if deadline.expired():  # The agent swallowed the timeout's cancellation.
            raise TimeoutError
        if ctx.cancel_requested:  # ...or a cancel's.
            raise asyncio.CancelledError
        outcome = _completed(result)
    except TimeoutError as exc:
        if deadline.expired():
            message = f"The run took longer than its timeout of {timeout_seconds:g} s."
            outcome = Outcome(RunStatus.TIMED_OUT, kind="timeout", message=message)
        else:
            outcome = _failed(ctx, exc)
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None:
            current.uncancel()
        outcome = Outcome(RunStatus.CANCELLED, kind="cancelled", message=ctx.cancel_reason)
    except Exception as exc:
        outcome = _failed(ctx, exc)
    if ctx.unavailable:
        # Some of the run's events are missing from the log, whatever the agent did next.
        outcome = Outcome(RunStatus.FAILED, kind="unavailable", message=UNAVAILABLE_MESSAGE)
    await _uncancellable(ctx._finish(outcome))
    return outcome.status


def _completed(result: Any) -> Outcome:
    """Completed, unless the result cannot travel in an event."""
    try:
        size = json_encoded_size(result, max_depth=settings.JSON_MAX_DEPTH)
    except InvalidJson:
        return Outcome(RunStatus.FAILED, kind="exception", message="The agent returned a result that is not JSON.")
    if size > settings.EVENT_DATA_MAX_BYTES - RESULT_ENVELOPE_BYTES:
        return Outcome(RunStatus.FAILED, kind="exception", message="The agent returned a result that is too large.")
    return Outcome(RunStatus.COMPLETED, result=result)


def _failed(ctx: RunContext, exc: BaseException) -> Outcome:
    if isinstance(exc, AgentError):
        logger.info("Run %s of %s failed: %s", ctx.run_id, ctx.agent, exc)
    else:
        logger.exception("Run %s of %s raised", ctx.run_id, ctx.agent, exc_info=exc)
    kind = "not_found" if isinstance(exc, UnknownTool) else "exception"
    return Outcome(RunStatus.FAILED, kind=kind, message=user_message(exc))


async def _uncancellable(coro: Coroutine[Any, Any, T]) -> T:
    """Await ``coro`` to the end even if this task is cancelled meanwhile.

    Recording a run's start or end must not be cut in half. A cancel that
    arrives meanwhile is absorbed: the supervisor's ``cancel_requested`` flag
    still says it happened.
    """
    task = asyncio.ensure_future(coro)
    while True:
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            if task.done():  # The cancel landed just as it finished.
                return task.result()


def _ms_since(start: float) -> int:
    return int((time.monotonic() - start) * 1000)
