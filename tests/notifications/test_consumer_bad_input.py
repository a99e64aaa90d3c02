"""Bad client input gets a clear error and loses nothing (docs/protocol.md, "Errors")."""

import json
import uuid
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from notifications.services import aevent_record
from tests.servers import DaphneServer
from tests.wsclient import access_token, ws_connect

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("server_log_clean", "redis_layer")]


@pytest.mark.parametrize(
    ("frame", "code", "detail"),
    [
        (
            "{not json",
            "invalid_json",
            "Not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
        ),
        ("[" * 3_000 + "]" * 3_000, "invalid_json", "JSON nested more than 32 levels deep is refused."),
        (
            '{"type": "ping", "ref": ' + '{"a": ' * 40 + "1" + "}" * 41,
            "invalid_json",
            "JSON nested more than 32 levels deep is refused.",
        ),
        (
            '{"type": "run.start", "agent": "demo", "input": ' + "[" * 5_000 + "]" * 5_000 + "}",
            "invalid_json",
            "JSON nested more than 32 levels deep is refused.",
        ),
        ('{"type": "ping", "ref": NaN}', "invalid_json", "Not valid JSON: NaN is not a JSON value"),
        ('{"type": "ping", "ref": "\\u0000"}', "invalid_json", "Strings with NUL characters (\\u0000) are refused."),
        # Quoted in an error frame, or echoed in a pong, a lone surrogate could not be sent (was a 1011).
        (
            '{"type": "ping", "\\ud800": 1}',
            "invalid_json",
            "A string holds a lone surrogate ('\\ud800'), which UTF-8 cannot carry.",
        ),
        (
            '{"type": "ping", "ref": "\\udfff"}',
            "invalid_json",
            "A string holds a lone surrogate ('\\udfff'), which UTF-8 cannot carry.",
        ),
        ("[1, 2]", "invalid_message", "A message must be a JSON object."),
        ('"ping"', "invalid_message", "A message must be a JSON object."),
        ("{}", "unknown_type", 'A message must have a "type" field.'),
        ('{"type": 3}', "unknown_type", '"type" must be a string.'),
        ('{"type": "subscribe"}', "unknown_type", "Unknown message type 'subscribe'."),
        ('{"type": "resume"}', "invalid_message", 'resume needs "after", a non-negative integer.'),
        ('{"type": "resume", "after": -1}', "invalid_message", '"after" must be a non-negative integer.'),
        ('{"type": "resume", "after": "3"}', "invalid_message", '"after" must be a non-negative integer.'),
        ('{"type": "resume", "after": true}', "invalid_message", '"after" must be a non-negative integer.'),
        ('{"type": "resume", "after": 1.5}', "invalid_message", '"after" must be a non-negative integer.'),
        ('{"type": "resume", "afer": 1}', "invalid_message", "Unexpected field(s) for resume: afer."),
        ('{"type": "ack", "seq": null}', "invalid_message", '"seq" must be a non-negative integer.'),
        ('{"type": "ping", "ref": {"a": 1}}', "invalid_message", '"ref" must be a string or an integer.'),
        ('{"type": "auth"}', "invalid_message", 'auth needs "token", a non-empty string.'),
        ('{"type": "auth", "token": ""}', "invalid_message", 'auth needs "token", a non-empty string.'),
    ],
)
async def test_bad_message_gets_an_error_and_the_socket_keeps_working(
    daphne: DaphneServer, alice: Any, frame: str, code: str, detail: str
) -> None:
    async with ws_connect(daphne.ws_url, access_token(alice)) as client:
        await client.send(frame)
        assert await client.recv() == {"type": "error", "code": code, "detail": detail}
        await aevent_record(user_id=alice.pk, event="agent_started", run_id=uuid.uuid4(), agent="demo", data={})
        [event] = await client.events(1)
        assert event["seq"] == 1
        await client.send({"type": "ping", "ref": "still-alive"})
        assert await client.recv() == {"type": "pong", "ref": "still-alive"}


async def test_binary_frame_is_an_error(daphne: DaphneServer, alice: Any) -> None:
    async with ws_connect(daphne.ws_url, access_token(alice)) as client:
        await client.send(b'{"type": "ping"}')
        error = await client.expect("error")
        assert error["code"] == "invalid_message"
        await client.send({"type": "ping"})
        assert await client.recv() == {"type": "pong"}


async def test_frame_over_64_kib_closes_1009(daphne: DaphneServer, alice: Any) -> None:
    async with ws_connect(daphne.ws_url, access_token(alice)) as client:
        at_limit = json.dumps({"type": "ping", "ref": "x"}).ljust(64 * 1024)
        await client.send(at_limit)  # Exactly 64 KiB is allowed (and is valid JSON).
        assert await client.recv() == {"type": "pong", "ref": "x"}
        await client.send("x" * (64 * 1024 + 1))
        assert await client.closed() == 1009


async def test_fragmented_message_over_64_kib_is_refused(daphne: DaphneServer, alice: Any) -> None:
    async with ws_connect(daphne.ws_url, access_token(alice)) as client:
        big = json.dumps({"type": "ping", "ref": "y"}).ljust(64 * 1024 + 10)
        await client.ws.send([big[i : i + 16 * 1024] for i in range(0, len(big), 16 * 1024)])
        error = await client.expect("error")
        assert error == {"type": "error", "code": "invalid_message", "detail": "Messages are limited to 65536 bytes."}
        await client.send({"type": "ping"})
        assert await client.recv() == {"type": "pong"}


async def test_flooding_gets_rate_limited_then_closed_4429(daphne: DaphneServer, alice: Any) -> None:
    async with ws_connect(daphne.ws_url, access_token(alice)) as client:
        # Burst 40 at 20/s: a flood is served up to the burst, then refused,
        # and the tenth refusal in a row closes the socket.
        for index in range(200):
            await client.send({"type": "ping", "ref": index})
        frames = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                frames.append(await client.recv())
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4429
        assert [frame["type"] for frame in frames].count("pong") >= 40
        assert frames[-9:] == [{"type": "error", "code": "rate_limited", "detail": "Too many messages; slow down."}] * 9
