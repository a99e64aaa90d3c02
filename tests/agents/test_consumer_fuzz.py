"""A fuzz run against a live server: a few hundred generated frames on one socket.

Hypothesis draws each frame (valid and invalid JSON, every message type
with mutated fields, binary frames, big and deep ones within the size limit,
fragmented ones) and the test checks the server's answer to it against
docs/protocol.md; a ping after each frame marks where that answer ends.
Hypothesis runs in a worker thread and hands each frame to the test's event
loop, which owns the socket.
"""

import asyncio
import itertools
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import Phase, example, given, settings
from hypothesis import strategies as st

from agents.protocol import RUN_PARSERS, RunCancel, RunStart
from notifications.exceptions import ProtocolError
from notifications.protocol import Ack, Auth, Ping, Resume, client_message_parse
from notifications.services import aevent_record
from tests.agents.conftest import BUILTIN_AGENTS, run_inputs, run_timeouts
from tests.hostile import BASE_TYPES, RUN_TYPES, big_strings, frames_text, weighted
from tests.servers import DaphneServer
from tests.wsclient import Client, access_token, ws_connect

pytestmark = pytest.mark.e2e

FRAMES = 300
MAX_MESSAGE_BYTES = 65_536
REPLY_TIMEOUT_SECONDS = 10.0
TERMINAL = {"agent_completed", "agent_error"}
RUN_START_ERRORS = {"unknown_agent", "too_many_runs", "invalid_message", "unavailable"}
RUN_CANCEL_ERRORS = {"not_found", "invalid_message"}
VALID_TOKEN = "<the connection's own token>"


def _fits(text: str) -> bool:
    """A frame a client can send without being closed: UTF-8 text within the size limit."""
    try:
        return len(text.encode()) <= MAX_MESSAGE_BYTES
    except UnicodeEncodeError:  # A lone surrogate cannot travel raw; escaped, it can.
        return False


def _run_start(agent: str, run_input: Any, run_timeout: Any) -> str | None:
    try:
        return json.dumps({"type": "run.start", "agent": agent, "input": run_input, "timeout": run_timeout})
    except (TypeError, ValueError):  # Not JSON: no client could send it.
        return None


texts = weighted(
    (8, frames_text(BASE_TYPES + RUN_TYPES)),
    (1, st.builds(_run_start, st.sampled_from(BUILTIN_AGENTS), run_inputs, run_timeouts).filter(bool)),
    (1, st.builds(lambda ref: json.dumps({"type": "ping", "ref": ref}), big_strings(max_size=MAX_MESSAGE_BYTES - 100))),
    (
        1,
        st.builds(
            lambda pad: json.dumps({"type": "run.start", "agent": "demo", "input": {"pad": pad}}),
            big_strings(max_size=MAX_MESSAGE_BYTES // 4 - 100),
        ),
    ),
    (1, st.integers(min_value=0, max_value=MAX_MESSAGE_BYTES // 2).map(lambda depth: "[" * depth + "]" * depth)),
).filter(_fits)


def _fragments(text: str, size: int) -> tuple[str, list[str]]:
    """``text`` cut into fragments of ``size`` characters (64 at most)."""
    size = max(size, len(text) // 64 + 1)
    return ("fragments", [text[i : i + size] for i in range(0, len(text), size)] or [""])


# What to send: ("text", str), ("binary", bytes), ("fragments", [str, ...]), or ("auth", VALID_TOKEN).
frames = weighted(
    (14, texts.map(lambda text: ("text", text))),
    (
        3,
        st.builds(
            _fragments,
            texts | st.just(json.dumps({"type": "ping", "ref": "big"}).ljust(MAX_MESSAGE_BYTES + 10)),
            st.integers(min_value=1, max_value=16_384),
        ),
    ),
    (2, (st.binary(max_size=64) | texts.map(str.encode)).map(lambda data: ("binary", data))),
    (1, st.just(("auth", VALID_TOKEN))),
)


@dataclass
class Session:
    """The socket the frames go to; a new one only if a frame got the last one closed (a failure)."""

    url: str
    token: str
    stack: AsyncExitStack
    client: Client | None = None
    pings: "itertools.count[int]" = field(default_factory=itertools.count)
    accepted_runs: set[str] = field(default_factory=set)
    ended_runs: set[str] = field(default_factory=set)
    events: list[dict[str, Any]] = field(default_factory=list)

    async def socket(self) -> Client:
        if self.client is None or self.client.ws.close_code is not None:
            self.client = await self.stack.enter_async_context(ws_connect(self.url, self.token))
        return self.client

    async def exchange(self, frame: tuple[str, Any]) -> list[dict[str, Any]]:
        """Send one frame, then a ping; return every frame before its pong except events."""
        client = await self.socket()
        kind, payload = frame
        if kind == "fragments":
            await client.ws.send(payload)
        elif kind == "auth":
            await client.send({"type": "auth", "token": self.token})
        else:
            await client.ws.send(payload)
        marker = f"fuzz-{next(self.pings)}"
        await client.send({"type": "ping", "ref": marker})
        replies = []
        while (reply := await client.recv(timeout=REPLY_TIMEOUT_SECONDS)) != {"type": "pong", "ref": marker}:
            if reply["type"] == "event":
                self.observe(reply)
            else:
                replies.append(reply)
        return replies

    def observe(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        if event["event"] in TERMINAL:
            self.ended_runs.add(event["run_id"])


def expected_text(frame: tuple[str, Any]) -> str | None:
    """The text the server will parse, or None for a frame it refuses unread (binary)."""
    kind, payload = frame
    if kind == "fragments":
        return "".join(payload)
    if kind == "auth":
        return json.dumps({"type": "auth", "token": "valid"})
    return payload if kind == "text" else None


def check_replies(frame: tuple[str, Any], replies: list[dict[str, Any]], session: Session) -> None:
    """Hold the server's answer to one frame to docs/protocol.md, sections 3, 4 and 7."""
    for reply in replies:
        if reply["type"] == "error":
            assert isinstance(reply["detail"], str) and reply["detail"], reply
    codes = [reply.get("code") for reply in replies]
    text = expected_text(frame)
    if text is None:
        assert codes == ["invalid_message"], replies
        return
    if len(text.encode()) > MAX_MESSAGE_BYTES:
        assert replies == [
            {"type": "error", "code": "invalid_message", "detail": "Messages are limited to 65536 bytes."}
        ]
        return
    try:
        message = client_message_parse(text, RUN_PARSERS)
    except ProtocolError as exc:
        assert codes == [exc.code], replies
        return
    match message:
        case Ping(ref=None):
            assert replies == [{"type": "pong"}]
        case Ping(ref=ref):
            assert replies == [{"type": "pong", "ref": ref}]
        case Resume(after=after):
            if codes != ["invalid_message"]:
                [resumed] = replies
                assert resumed["type"] == "resumed" and resumed["after"] == after, replies
        case Ack():
            assert codes in ([], ["invalid_message"]), replies
        case Auth() if frame[0] == "auth":
            [ok] = replies
            assert ok["type"] == "auth.ok", replies
        case Auth():
            assert codes == ["invalid_token"], replies
        case RunStart(agent=agent):
            [reply] = replies
            if reply["type"] == "run.accepted":
                assert agent in {"demo", "calculator"}, replies
                session.accepted_runs.add(str(uuid.UUID(reply["run_id"])))
            else:
                assert reply["code"] in RUN_START_ERRORS, replies
        case RunCancel():
            assert codes in ([], *([code] for code in RUN_CANCEL_ERRORS)), replies
        case _:
            raise AssertionError(f"the parser returned {message!r}")


@pytest.fixture(scope="module")
def fuzz_daphne(daphne_factory: Callable[..., DaphneServer], redis_url: str) -> DaphneServer:
    """A server of its own: no rate limit in the way, and runs that end within two seconds."""
    return daphne_factory(
        redis_url=redis_url,
        WS_RATE_LIMIT_MESSAGES="1000000",
        WS_RATE_LIMIT_BURST="1000000",
        AGENT_RUN_TIMEOUT_SECONDS="1",
        AGENT_RUN_MAX_TIMEOUT_SECONDS="2",
    )


@pytest.fixture
async def session(fuzz_daphne: DaphneServer, alice: Any) -> AsyncIterator[Session]:
    async with AsyncExitStack() as stack:
        yield Session(url=fuzz_daphne.ws_url, token=access_token(alice), stack=stack)


@pytest.mark.usefixtures("redis_layer")
@pytest.mark.timeout(120)
async def test_fuzzed_frames_get_documented_answers_and_the_socket_keeps_working(
    fuzz_daphne: DaphneServer, session: Session, alice: Any
) -> None:
    mark = fuzz_daphne.log_size()
    loop = asyncio.get_running_loop()
    first = await session.socket()

    # Frames that closed the socket with 1011, or got a misleading answer, before the fixes.
    @example(frame=("text", '{"type": "ping", "ref": "\\ud800"}'))
    @example(frame=("text", '{"type": "ping", "\\ud800": 1}'))
    @example(frame=("text", '{"type": "run.start", "agent": "calculator", "input": {"expression": "\\ud800"}}'))
    @example(frame=("text", '{"type": "run.start", "agent": "calculator", "input": {"expression": "\\u0000"}}'))
    @example(frame=("text", '{"type": "run.start", "agent": "calculator", "input": {"expression": "1e999"}}'))
    @example(frame=("text", '{"type": "auth", "token": "\\ud800"}'))
    @example(frame=("text", "[" * 30_000 + "]" * 30_000))
    # No explain phase: it would replay frames on a socket whose state has moved on.
    @settings(max_examples=FRAMES, phases=[Phase.explicit, Phase.generate, Phase.shrink])
    @given(frame=frames)
    def fuzz(frame: tuple[str, Any]) -> None:
        replies = asyncio.run_coroutine_threadsafe(session.exchange(frame), loop).result(timeout=30)
        check_replies(frame, replies, session)

    await asyncio.to_thread(fuzz)
    assert session.client is first, "a frame got the socket closed"

    # Every run the fuzz started ends; then the socket still answers, and still delivers.
    async with asyncio.timeout(10):
        while not session.accepted_runs <= session.ended_runs:
            session.observe(await first.expect("event"))
    await first.send({"type": "ping", "ref": "after"})
    assert await first.recv() == {"type": "pong", "ref": "after"}
    run_id = uuid.uuid4()
    await aevent_record(user_id=alice.pk, event="agent_started", run_id=run_id, agent="fuzz", data={"after": True})
    async with asyncio.timeout(10):
        while (event := await first.expect("event"))["run_id"] != str(run_id):
            pass
    assert event["data"] == {"after": True}
    fuzz_daphne.assert_log_clean(since=mark)
