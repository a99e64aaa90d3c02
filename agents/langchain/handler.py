"""A LangChain callback handler that records a runnable's work as its run's events.

Model tokens and reasoning become ``agent_thinking`` (coalesced: ``coalesce.py``),
tool starts, ends and errors become ``tool_executing`` / ``tool_completed``.
The run's ``agent_started`` and its one terminal event are its execution's, as
for every agent: the graph starts when the run does, and its end or error
is the agent function's return or raise (``register.graph_agent``).
"""

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

from django.conf import settings
from langchain_core.callbacks import AsyncCallbackHandler
from langchain_core.messages import BaseMessage, ToolMessage
from langchain_core.outputs import ChatGenerationChunk
from langchain_core.tools import ToolException

from ..context import RunContext
from ..exceptions import AgentError, ToolError, user_message
from .coalesce import Coalescer

logger = logging.getLogger(__name__)

T = TypeVar("T")
TEXT = "text"
REASONING = "reasoning"


class RunCallbackHandler(AsyncCallbackHandler):
    """Record one run's model thoughts and tool calls through its ``RunContext``.

    It is a streaming handler (``tap_output_aiter``, passing chunks through),
    so chat models stream their tokens to it even when a graph node calls
    ``ainvoke``. Errors recording an event are raised into the runnable
    (``raise_error``): a run whose events cannot be written must not go on
    as if they were. Call ``aclose`` when the runnable is done.
    """

    raise_error = True
    run_inline = True

    def __init__(self, ctx: RunContext, *, window_ms: float | None = None, max_chars: int | None = None) -> None:
        super().__init__()
        self.ctx = ctx
        self.coalescer = Coalescer(
            window_ms=settings.AGENT_THINKING_COALESCE_MS if window_ms is None else window_ms,
            max_chars=settings.AGENT_THINKING_COALESCE_CHARS if max_chars is None else max_chars,
        )
        self._calls: dict[uuid.UUID, str] = {}  # LangChain tool run id -> our call id.
        self._lock = asyncio.Lock()  # Thoughts go out in the order their text came.
        self._timer: asyncio.Task[None] | None = None
        self._loop = asyncio.get_running_loop()  # The run's: made by the run, on its loop.

    # Streaming: pass every chunk through untouched.

    async def tap_output_aiter(self, run_id: uuid.UUID, output: AsyncIterator[T]) -> AsyncIterator[T]:
        async for chunk in output:
            yield chunk

    def tap_output_iter(self, run_id: uuid.UUID, output: Iterator[T]) -> Iterator[T]:
        yield from output

    # Models.

    async def on_llm_new_token(self, token: Any, *, chunk: Any = None, **kwargs: Any) -> None:
        await self._on_run_loop(self._token(token, chunk))

    async def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        await self._on_run_loop(self.flush())

    async def on_llm_error(self, error: BaseException, **kwargs: Any) -> None:
        await self._on_run_loop(self.flush())

    # Tools.

    async def on_tool_start(
        self,
        serialized: dict[str, Any] | None,
        input_str: str,
        *,
        run_id: uuid.UUID,
        inputs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        name = str((serialized or {}).get("name") or kwargs.get("name") or "tool")
        args = jsonable(inputs) if isinstance(inputs, dict) else {"input": input_str}
        await self._on_run_loop(self._tool_started(run_id, name, args))

    async def on_tool_end(self, output: Any, *, run_id: uuid.UUID, **kwargs: Any) -> None:
        await self._on_run_loop(self._tool_completed(run_id, _tool_result(output)))

    async def on_tool_error(self, error: BaseException, *, run_id: uuid.UUID, **kwargs: Any) -> None:
        await self._on_run_loop(self._tool_failed(run_id, _tool_error_message(error)))

    # The runnable itself.

    async def on_chain_end(self, outputs: Any, *, parent_run_id: uuid.UUID | None = None, **kwargs: Any) -> None:
        if parent_run_id is None:
            await self._on_run_loop(self.flush())

    async def on_chain_error(
        self, error: BaseException, *, parent_run_id: uuid.UUID | None = None, **kwargs: Any
    ) -> None:
        if parent_run_id is None:
            await self._on_run_loop(self.flush())

    async def _on_run_loop(self, work: Coroutine[Any, Any, None]) -> None:
        """Do ``work`` on the run's event loop, wherever LangChain calls from.

        A sync tool runs in a worker thread, and LangChain calls this handler's
        callbacks for it there, on an event loop of its own: the run's context,
        its lock and its database connections belong to the run's loop.
        """
        if asyncio.get_running_loop() is self._loop:
            await work
        else:
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work, self._loop))

    async def _token(self, token: Any, chunk: Any) -> None:
        for kind, text in _token_texts(token, chunk):
            await self._think(self.coalescer.add(text, kind=kind, now_ms=_now_ms()))
        if self.coalescer.pending and self._timer is None:
            self._timer = self._loop.create_task(self._flush_when_due(), name="thinking-flush")

    async def _tool_started(self, run_id: uuid.UUID, name: str, args: dict[str, Any]) -> None:
        await self.flush()
        self._calls[run_id] = await self.ctx.tool_started(name, args)

    async def _tool_completed(self, run_id: uuid.UUID, result: Any) -> None:
        call_id = self._calls.pop(run_id, None)
        if call_id is None:
            return
        try:
            await self.ctx.tool_completed(call_id, result)
        except ToolError as exc:  # Already recorded as the call's failure; the graph has its result.
            logger.info("Run %s: %s", self.ctx.run_id, exc)

    async def _tool_failed(self, run_id: uuid.UUID, message: str) -> None:
        call_id = self._calls.pop(run_id, None)
        if call_id is not None:
            await self.ctx.tool_failed(call_id, message)

    async def flush(self) -> None:
        """Send whatever text is held, as one thought."""
        await self._think(self.coalescer.drain())

    async def aclose(self, *, flush: bool = True) -> None:
        """Stop the flush timer; send what is held unless ``flush`` is False (the run was cancelled)."""
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
            await asyncio.gather(timer, return_exceptions=True)
        if flush:
            await self.flush()

    async def _think(self, chunks: list[str]) -> None:
        if not chunks:
            return
        async with self._lock:
            for chunk in chunks:
                await self.ctx.think(chunk)

    async def _flush_when_due(self) -> None:
        """Send held text once it is a window old, for a stream that paused mid-chunk."""
        try:
            while self.coalescer.pending:
                wait_ms = self.coalescer.oldest_ms + self.coalescer.window_ms - _now_ms()
                await asyncio.sleep(max(wait_ms, 0) / 1000)
                await self._think(self.coalescer.due(now_ms=_now_ms()))
        finally:
            if self._timer is asyncio.current_task():
                self._timer = None


def _now_ms() -> float:
    return time.monotonic() * 1000


def _token_texts(token: Any, chunk: Any) -> list[tuple[str, str]]:
    """The reasoning and answer text one streamed chunk carries, each with its kind."""
    texts: list[tuple[str, str]] = []
    message = chunk.message if isinstance(chunk, ChatGenerationChunk) else None
    if message is not None:
        reasoning = message.additional_kwargs.get("reasoning_content")
        if isinstance(reasoning, str) and reasoning:
            texts.append((REASONING, reasoning))
        if isinstance(message.content, list):
            for block in message.content:
                if isinstance(block, dict) and block.get("type") == "reasoning":
                    texts.append((REASONING, str(block.get("reasoning", ""))))
                elif isinstance(block, dict) and block.get("type") == "text":
                    texts.append((TEXT, str(block.get("text", ""))))
            return texts
    if isinstance(token, str) and token:
        texts.append((TEXT, token))
    return texts


def jsonable(value: Any) -> Any:
    """``value`` as JSON can carry it: messages as their role and content, anything else unknown as text."""
    if isinstance(value, BaseMessage):
        return {"role": value.type, "content": jsonable(value.content)}
    return json.loads(json.dumps(value, default=_json_default))


def _json_default(item: Any) -> Any:
    return jsonable(item) if isinstance(item, BaseMessage) else str(item)


def _tool_result(output: Any) -> Any:
    """What a tool returned, as the run reports it: a ``ToolMessage``'s content, else the value itself."""
    if isinstance(output, ToolMessage):
        return jsonable(output.content)
    return jsonable(output)


def _tool_error_message(error: BaseException) -> str:
    """A tool's error for the user: a ``ToolException``'s text is meant to be read, like our ``ToolError``."""
    if isinstance(error, ToolException):
        return user_message(AgentError(str(error)))
    return user_message(error)
