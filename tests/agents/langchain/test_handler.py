"""RunCallbackHandler on its own, with a context that records what it is told."""

import asyncio
import uuid
from typing import Any

import pytest
from langchain_core.messages import AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGenerationChunk

from agents.context import RunContext
from agents.exceptions import ToolError
from agents.langchain.handler import RunCallbackHandler

WAIT_SECONDS = 2.0


class Recorder:
    """The part of ``RunContext`` the handler uses, recording each call."""

    def __init__(self, *, unsendable: bool = False) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.thought = asyncio.Event()
        self.unsendable = unsendable
        self.run_id = uuid.uuid4()
        self.loops: set[asyncio.AbstractEventLoop] = set()

    async def think(self, thought: str) -> None:
        self.loops.add(asyncio.get_running_loop())
        self.calls.append(("think", thought))
        self.thought.set()

    async def tool_started(self, name: str, args: dict[str, Any]) -> str:
        self.loops.add(asyncio.get_running_loop())
        self.calls.append(("started", name, args))
        return f"call-{len(self.calls)}"

    async def tool_completed(self, call_id: str, result: Any) -> None:
        self.loops.add(asyncio.get_running_loop())
        self.calls.append(("completed", call_id, result))
        if self.unsendable:
            raise ToolError("Tool t failed: The tool returned a result that cannot be sent.")

    async def tool_failed(self, call_id: str, message: str) -> None:
        self.calls.append(("failed", call_id, message))


def handler_of(recorder: Recorder, **limits: Any) -> RunCallbackHandler:
    ctx: RunContext = recorder  # type: ignore[assignment]  # Duck-typed: only what the handler calls.
    return RunCallbackHandler(ctx, **limits)


def chunk(content: Any = "", **kwargs: Any) -> ChatGenerationChunk:
    return ChatGenerationChunk(message=AIMessageChunk(content=content, additional_kwargs=kwargs))


async def test_text_of_a_paused_stream_goes_out_when_the_window_has_passed() -> None:
    recorder = Recorder()
    handler = handler_of(recorder, window_ms=20, max_chars=1000)
    await handler.on_llm_new_token("Thinking", chunk=chunk("Thinking"), run_id=uuid.uuid4())
    await handler.on_llm_new_token(" slowly", chunk=chunk(" slowly"), run_id=uuid.uuid4())
    assert recorder.calls == []
    await asyncio.wait_for(recorder.thought.wait(), timeout=WAIT_SECONDS)
    assert recorder.calls == [("think", "Thinking slowly")]
    await handler.aclose()
    assert recorder.calls == [("think", "Thinking slowly")]


async def test_a_cancelled_run_drops_what_is_held() -> None:
    recorder = Recorder()
    handler = handler_of(recorder, window_ms=60_000, max_chars=1000)
    await handler.on_llm_new_token("half a", chunk=chunk("half a"), run_id=uuid.uuid4())
    await handler.aclose(flush=False)
    assert recorder.calls == []


async def test_reasoning_blocks_and_text_blocks_are_separate_thoughts() -> None:
    recorder = Recorder()
    handler = handler_of(recorder, window_ms=60_000, max_chars=1000)
    blocks = [{"type": "reasoning", "reasoning": "Why? "}, {"type": "text", "text": "Because."}]
    await handler.on_llm_new_token("", chunk=chunk(blocks), run_id=uuid.uuid4())
    await handler.on_llm_end(None, run_id=uuid.uuid4())
    assert recorder.calls == [("think", "Why? "), ("think", "Because.")]
    await handler.aclose()


async def test_a_tool_start_sends_the_held_text_first_and_results_become_json() -> None:
    recorder = Recorder()
    handler = handler_of(recorder, window_ms=60_000, max_chars=1000)
    await handler.on_llm_new_token("Let me look.", chunk=chunk("Let me look."), run_id=uuid.uuid4())
    first, second, third = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await handler.on_tool_start({"name": "search"}, "{'q': 'x'}", run_id=first, inputs={"q": "x"})
    await handler.on_tool_start({"name": "raw"}, "just text", run_id=second)
    await handler.on_tool_start({}, "", run_id=third, inputs={"when": object, "who": HumanMessage("hi")})
    await handler.on_tool_end(ToolMessage(content="found", tool_call_id="c"), run_id=first)
    await handler.on_tool_end(complex(1, 2), run_id=second)
    await handler.on_tool_error(ValueError("secret detail"), run_id=third)
    await handler.on_tool_end("late", run_id=uuid.uuid4())  # Not a call it saw start: ignored.
    assert recorder.calls == [
        ("think", "Let me look."),
        ("started", "search", {"q": "x"}),
        ("started", "raw", {"input": "just text"}),
        ("started", "tool", {"when": "<class 'object'>", "who": {"role": "human", "content": "hi"}}),
        ("completed", "call-2", "found"),
        ("completed", "call-3", "(1+2j)"),
        ("failed", "call-4", "The agent failed with an internal error (ValueError)."),
    ]
    await handler.aclose()


async def test_an_unsendable_result_is_the_calls_failure_not_the_graphs(caplog: pytest.LogCaptureFixture) -> None:
    recorder = Recorder(unsendable=True)
    handler = handler_of(recorder)
    run_id = uuid.uuid4()
    await handler.on_tool_start({"name": "t"}, "", run_id=run_id, inputs={})
    await handler.on_tool_end("x" * 10, run_id=run_id)
    assert "cannot be sent" in caplog.text
    await handler.aclose()


async def test_callbacks_from_a_worker_threads_loop_are_recorded_on_the_runs_loop() -> None:
    """As LangChain calls them for a sync tool: from a worker thread, on an event loop of its own."""
    recorder = Recorder()
    handler = handler_of(recorder, window_ms=60_000, max_chars=1000)
    run_id = uuid.uuid4()

    def in_a_worker_thread() -> None:
        asyncio.run(handler.on_tool_start({"name": "sync_tool"}, "", run_id=run_id, inputs={"n": 1}))
        asyncio.run(handler.on_llm_new_token("held", chunk=chunk("held"), run_id=uuid.uuid4()))
        asyncio.run(handler.on_tool_end(2, run_id=run_id))

    await asyncio.wait_for(asyncio.to_thread(in_a_worker_thread), timeout=WAIT_SECONDS)
    await handler.aclose()
    assert recorder.calls == [("started", "sync_tool", {"n": 1}), ("completed", "call-1", 2), ("think", "held")]
    assert recorder.loops == {asyncio.get_running_loop()}
