"""What an agent receives: its run's identity, ``think`` and ``tool``.

The context only says what happened; the run's execution
(``agents.execution.RunExecution``) records each event in lifecycle order,
and owns the run's start, its end and its cancellation. The one thing the
context needs from it is ``emit``.
"""

import asyncio
import time
import uuid
from typing import Any, Protocol

from notifications.exceptions import InvalidEventData
from notifications.models import EventType

from .exceptions import ToolError, user_message
from .models import AgentRun
from .registry import tool_get


class Emit(Protocol):
    """Record one of the run's events; raise ``InvalidEventData`` if its data cannot be sent."""

    async def __call__(
        self, event: str, data: dict[str, Any], *, call_id: str | None = None, tool: str = ""
    ) -> None: ...


class RunContext:
    """What an agent receives: ``think`` and ``tool``, bound to one run."""

    def __init__(self, run: AgentRun, *, emit: Emit) -> None:
        self.run_id: uuid.UUID = run.id
        self.user_id: int = run.user_id
        self.agent: str = run.agent
        self.input: dict[str, Any] = run.input
        self._emit = emit
        self._step = 0
        self._calls: dict[str, tuple[str, float]] = {}  # Started tool calls: call id -> (tool, start time).

    def steps_continue_after(self, step: int) -> None:
        """Count this attempt's thoughts on from ``step`` (a run started again after its worker died)."""
        self._step = step

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


def _ms_since(start: float) -> int:
    return int((time.monotonic() - start) * 1000)
