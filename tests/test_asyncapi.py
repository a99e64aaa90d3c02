"""docs/asyncapi.yaml: valid AsyncAPI 3, in step with the code, and enforced on the test client's frames."""

import ast
import asyncio
import json
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from agents.protocol import RUN_PARSERS
from config.server import CLOSE_GOING_AWAY
from notifications import consumers
from tests.asyncapi import DOCUMENT_PATH, FrameMismatch, contract, document_load
from tests.conftest import unavailable
from tests.servers import ROOT
from tests.wsclient import ws_connect

VALIDATOR_DIR = ROOT / "tools" / "asyncapi"
VALIDATE_TIMEOUT_SECONDS = 60
SEVERITY_ERROR, SEVERITY_WARNING = 0, 1


def asyncapi_validate(path: Path) -> tuple[int, dict[str, Any]]:
    """Run the official parser (@asyncapi/parser, installed by ``make setup``) on ``path``."""
    node = shutil.which("node")
    if node is None or not (VALIDATOR_DIR / "node_modules" / "@asyncapi" / "parser").is_dir():
        unavailable("Node.js or tools/asyncapi/node_modules is missing (run make setup): AsyncAPI validation SKIPPED.")
    done = subprocess.run(
        [node, "validate.mjs", str(path)],
        cwd=VALIDATOR_DIR,
        capture_output=True,
        text=True,
        timeout=VALIDATE_TIMEOUT_SECONDS,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return done.returncode, report


def test_document_is_valid_asyncapi_3() -> None:
    code, report = asyncapi_validate(DOCUMENT_PATH)
    problems = [d for d in report["diagnostics"] if d["severity"] in (SEVERITY_ERROR, SEVERITY_WARNING)]
    assert (code, report["parsed"], problems) == (0, True, [])
    assert document_load()["asyncapi"].startswith("3.")


def _action_of_asyncapi_2(document: dict[str, Any]) -> None:
    document["operations"]["sendHello"]["action"] = "publish"


def _message_missing(document: dict[str, Any]) -> None:
    del document["channels"]["notifications"]["messages"]["hello"]


@pytest.mark.parametrize(
    ("breaking", "at"),
    [(_action_of_asyncapi_2, ["operations", "sendHello", "action"]), (_message_missing, ["operations", "sendHello"])],
)
def test_parser_refuses_a_broken_document(
    tmp_path: Path, breaking: Callable[[dict[str, Any]], None], at: list[str]
) -> None:
    document = document_load()
    breaking(document)
    broken = tmp_path / "asyncapi.json"
    broken.write_text(json.dumps(document))
    code, report = asyncapi_validate(broken)
    errors = [d["path"][: len(at)] for d in report["diagnostics"] if d["severity"] == SEVERITY_ERROR]
    assert (code, report["parsed"], at in errors) == (1, False, True), report


def test_every_example_matches_its_message() -> None:
    checked = 0
    for message in document_load()["components"]["messages"].values():
        for example in message.get("examples", []):
            kind = example["payload"]["type"]
            check = contract().server_frame_check if kind in contract().server else contract().client_frame_check
            check(example["payload"])
            checked += 1
    assert checked >= 12


def _literal_dict_types(path: Path) -> set[str]:
    """The ``type`` of every dict literal in a module that has a string constant one."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "type" and isinstance(value, ast.Constant):
                    found.add(str(value.value))
    return found


def test_server_frames_are_the_ones_the_code_sends() -> None:
    sent = set()
    for module in ("notifications/consumers.py", "agents/consumers.py", "notifications/frames.py"):
        sent |= _literal_dict_types(ROOT / module)
    assert set(contract().server) == sent


def test_client_messages_are_the_ones_the_server_parses() -> None:
    assert set(contract().client) == set(RUN_PARSERS)


def _error_codes_in_code() -> set[str]:
    """Codes passed as literals to ``ProtocolError``/``_send_error``, and ``RunRefused`` subclasses' codes."""
    codes = set()
    for path in [*(ROOT / "notifications").glob("*.py"), *(ROOT / "agents").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
                callee = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if callee in ("ProtocolError", "_send_error"):
                    codes.add(str(node.args[0].value))
            if isinstance(node, ast.ClassDef) and path.name == "exceptions.py":
                for statement in node.body:
                    if isinstance(statement, ast.Assign) and isinstance(statement.value, ast.Constant):
                        if any(isinstance(t, ast.Name) and t.id == "code" for t in statement.targets):
                            codes.add(str(statement.value.value))
    return codes


def test_error_codes_are_the_ones_the_code_sends() -> None:
    documented = document_load()["components"]["schemas"]["ErrorCode"]["enum"]
    assert set(documented) == _error_codes_in_code()


def test_the_servers_close_codes_are_documented() -> None:
    ours = {consumers.CLOSE_UNAUTHORIZED, consumers.CLOSE_RATE_LIMITED, consumers.CLOSE_UNAVAILABLE, CLOSE_GOING_AWAY}
    assert ours <= contract().close_codes
    assert contract().reason_codes == {consumers.CLOSE_UNAVAILABLE, CLOSE_GOING_AWAY}


# The hook: the test client fails the test on a frame or a close the document does not describe.

Handler = Callable[[ServerConnection], Awaitable[None]]


@asynccontextmanager
async def fake_server(handler: Handler) -> AsyncIterator[str]:
    """A WebSocket server that plays ``handler`` to each client (a server that breaks the contract)."""
    async with serve(handler, "127.0.0.1", 0, subprotocols=["jwt"]) as server:  # type: ignore[list-item]
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/ws/notifications/"


def sends(*frames: Any, close: tuple[int, str] | None = None) -> Handler:
    async def handler(connection: ServerConnection) -> None:
        for frame in frames:
            await connection.send(json.dumps(frame))
        if close is not None:
            await connection.close(*close)
        else:
            await asyncio.wait_for(connection.wait_closed(), timeout=5)

    return handler


HELLO = {"type": "hello", "user": {"id": 1, "username": "demo"}, "last_seq": 0, "heartbeat_seconds": 25}


@pytest.mark.parametrize(
    "frame",
    [
        {**HELLO, "last_seq": -1},  # out of range
        {**HELLO, "extra": 1},  # a field the document does not list
        {"type": "hello", "user": {"id": 1}, "last_seq": 0, "heartbeat_seconds": 25},  # a field missing
        {"type": "welcome"},  # a type the document does not list
        {"type": "error", "code": "oops", "detail": "no such code"},
    ],
)
async def test_client_fails_on_a_frame_the_document_does_not_describe(frame: dict[str, Any]) -> None:
    async with fake_server(sends(frame)) as url, ws_connect(url, "token", hello=False) as client:
        with pytest.raises(FrameMismatch):
            await client.recv()


async def test_client_passes_a_frame_the_document_describes() -> None:
    async with fake_server(sends(HELLO, {"type": "pong", "ref": 7})) as url, ws_connect(url, "token") as client:
        assert await client.recv() == {"type": "pong", "ref": 7}


@pytest.mark.parametrize("close", [(4000, ""), (4503, "soon"), (1001, '{"retry_after": "2"}')])
async def test_client_fails_on_an_undocumented_close(close: tuple[int, str]) -> None:
    async with fake_server(sends(HELLO, close=close)) as url, ws_connect(url, "token") as client:
        with pytest.raises(FrameMismatch):
            await client.closed()


async def test_client_passes_a_documented_close() -> None:
    async with fake_server(sends(HELLO, close=(4503, '{"retry_after": 2.5}'))) as url, ws_connect(url, "t") as client:
        assert await client.closed() == 4503


async def test_client_refuses_to_send_an_undocumented_message() -> None:
    received: list[str] = []

    async def record(connection: ServerConnection) -> None:
        await connection.send(json.dumps(HELLO))
        async with asyncio.timeout(5):
            async for text in connection:
                received.append(str(text))

    async with fake_server(record) as url, ws_connect(url, "token") as client:
        with pytest.raises(FrameMismatch):
            await client.send({"type": "resume", "after": "1"})
        await client.send({"type": "resume", "after": "1"}, checked=False)
        await client.send({"type": "ping", "ref": "done"})
    assert received == ['{"type": "resume", "after": "1"}', '{"type": "ping", "ref": "done"}']
