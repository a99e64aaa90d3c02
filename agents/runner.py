"""Execute one run: its agent under a timeout, then its single end.

The run's execution (``agents.execution.RunExecution``) records the events
and the end; this module decides what the end is: the agent's result, its
error, a timeout, a cancel, or an outage of the database.
"""

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

from django.conf import settings

from notifications.exceptions import InvalidJson
from notifications.jsonlimits import json_encoded_size

from .exceptions import AgentError, EventsUnavailable, UnknownTool, user_message
from .execution import UNAVAILABLE_MESSAGE, Outcome, RunExecution
from .models import RunStatus
from .registry import AgentSpec

logger = logging.getLogger(__name__)

RESULT_ENVELOPE_BYTES = 1024
T = TypeVar("T")


async def run_execute(spec: AgentSpec, execution: RunExecution, timeout_seconds: float) -> RunStatus | None:
    """Run the agent under its timeout and record its end; return the final status.

    Cancelling this task (the supervisor does, for a user's cancel or a
    shutdown) ends the run as ``cancelled``: the cancellation is absorbed so
    that the end can still be recorded, and the task returns normally.
    """
    started = await _uncancellable(execution.start())
    if not started:
        logger.info("Run %s was no longer queued; not started", execution.run_id)
        return None
    ctx = execution.context
    # A restarted run's timeout counts from its first start.
    deadline = asyncio.timeout(timeout_seconds - execution.elapsed_seconds())
    try:
        if execution.unavailable:
            raise EventsUnavailable(UNAVAILABLE_MESSAGE)
        if execution.cancel_requested:  # Asked before or while it started.
            raise asyncio.CancelledError
        async with deadline:
            result = await spec.func(ctx, ctx.input)
        if deadline.expired():  # The agent swallowed the timeout's cancellation.
            raise TimeoutError
        if execution.cancel_requested:  # ...or a cancel's.
            raise asyncio.CancelledError
        outcome = _completed(result)
    except TimeoutError as exc:
        if deadline.expired():
            message = f"The run took longer than its timeout of {timeout_seconds:g} s."
            outcome = Outcome(RunStatus.TIMED_OUT, kind="timeout", message=message)
        else:
            outcome = _failed(execution, exc)
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None:
            current.uncancel()
        outcome = Outcome(RunStatus.CANCELLED, kind="cancelled", message=execution.cancel_reason)
    except Exception as exc:
        outcome = _failed(execution, exc)
    if execution.unavailable:
        # Some of the run's events are missing from the log, whatever the agent did next.
        outcome = Outcome(RunStatus.FAILED, kind="unavailable", message=UNAVAILABLE_MESSAGE)
    await _uncancellable(execution.finish(outcome))
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


def _failed(execution: RunExecution, exc: BaseException) -> Outcome:
    if isinstance(exc, AgentError):
        logger.info("Run %s of %s failed: %s", execution.run_id, execution.agent, exc)
    else:
        logger.exception("Run %s of %s raised", execution.run_id, execution.agent, exc_info=exc)
    kind = "not_found" if isinstance(exc, UnknownTool) else "exception"
    return Outcome(RunStatus.FAILED, kind=kind, message=user_message(exc))


async def _uncancellable(coro: Coroutine[Any, Any, T]) -> T:
    """Await ``coro`` to the end even if this task is cancelled meanwhile.

    Recording a run's start or end must not be cut in half. A cancel that
    arrives meanwhile is absorbed: the execution's ``cancel_requested``
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
