"""A small test client over the ``websockets`` library, following docs/protocol.md, and its tokens.

Every frame it receives, and every close, is checked against docs/asyncapi.yaml
(tests/asyncapi.py), and so is every message it sends as a dict: a test that
means to send an invalid message sends it as text, or passes ``checked=False``.
"""

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from rest_framework_simplejwt.settings import api_settings
from rest_framework_simplejwt.tokens import AccessToken, RefreshToken, SlidingToken
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from tests.asyncapi import contract

RECV_TIMEOUT_SECONDS = 5.0


def access_token(user: Any, *, lifetime: timedelta | None = None) -> str:
    token = AccessToken.for_user(user)
    if lifetime is not None:
        token.set_exp(lifetime=lifetime)
    return str(token)


def expired_token(user: Any) -> str:
    return access_token(user, lifetime=timedelta(seconds=-60))


def retyped_token(user: Any, token_type: str | None) -> str:
    """Return an access token signed with our key, its type claim changed (``None``: removed)."""
    token = AccessToken.for_user(user)
    if token_type is None:
        del token[api_settings.TOKEN_TYPE_CLAIM]
    else:
        token[api_settings.TOKEN_TYPE_CLAIM] = token_type
    return str(token)


def refresh_token(user: Any) -> str:
    """Return a refresh token; it is recorded for the blacklist, so call it where the ORM may run."""
    return str(RefreshToken.for_user(user))


def sliding_token(user: Any) -> str:
    """Return a sliding token (simplejwt's third type); the ORM runs as for ``refresh_token``."""
    return str(SlidingToken.for_user(user))


# Tokens of the user, signed with our key and unexpired unless named so, that
# must be refused wherever an access token is needed.
REFUSED_TOKENS: dict[str, Callable[[Any], str]] = {
    "refresh": refresh_token,
    "sliding": sliding_token,
    "no-type": lambda user: retyped_token(user, None),
    "unknown-type": lambda user: retyped_token(user, "id"),
    "expired": expired_token,
}


class Client:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.heartbeats = 0

    async def send(self, message: Any, *, checked: bool = True) -> None:
        """Send text or bytes as they are, or a dict as JSON (a documented client message, unless not ``checked``)."""
        if isinstance(message, str | bytes):
            await self.ws.send(message)
            return
        if checked:
            contract().client_frame_check(message)
        await self.ws.send(json.dumps(message))

    async def frame(self) -> dict[str, Any]:
        """Receive one frame, whatever it is, checked against docs/asyncapi.yaml; the caller bounds the wait.

        The one place frames come in: a close is checked on its way out too.
        """
        try:
            text = await self.ws.recv()
        except ConnectionClosed as exc:
            if exc.rcvd is not None:
                contract().close_check(exc.rcvd.code, exc.rcvd.reason)
            raise
        frame = json.loads(text)
        contract().server_frame_check(frame)
        return frame  # type: ignore[no-any-return]

    async def recv(self, *, timeout: float = RECV_TIMEOUT_SECONDS, heartbeats: bool = False) -> dict[str, Any]:
        """Return the next frame, skipping heartbeats unless asked for them."""
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.frame()
                if frame["type"] == "heartbeat":
                    self.heartbeats += 1
                    if not heartbeats:
                        continue
                return frame

    async def expect(self, kind: str, *, timeout: float = RECV_TIMEOUT_SECONDS) -> dict[str, Any]:
        frame = await self.recv(timeout=timeout, heartbeats=kind == "heartbeat")
        assert frame["type"] == kind, f"expected {kind}, got {frame}"
        return frame

    async def events(self, count: int, *, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Collect ``count`` event frames; any other non-heartbeat frame fails."""
        received: list[dict[str, Any]] = []
        async with asyncio.timeout(timeout):
            while len(received) < count:
                frame = await self.recv(timeout=timeout)
                assert frame["type"] == "event", f"expected an event, got {frame}"
                received.append(frame)
        return received

    async def settle(self) -> list[dict[str, Any]]:
        """Round-trip a ping; return every non-heartbeat frame that came before the pong."""
        await self.send({"type": "ping", "ref": "settle"})
        seen: list[dict[str, Any]] = []
        while (frame := await self.recv()) != {"type": "pong", "ref": "settle"}:
            seen.append(frame)
        return seen

    async def quiet(self, *, beats: int = 2) -> list[dict[str, Any]]:
        """Read until ``beats`` heartbeats pass; return every non-heartbeat frame seen.

        The server catches up from the log before each heartbeat, so anything
        still owed would arrive before the second one.
        """
        seen: list[dict[str, Any]] = []
        start = self.heartbeats
        while self.heartbeats - start < beats:
            frame = await self.recv(heartbeats=True)
            if frame["type"] == "heartbeat":
                continue
            seen.append(frame)
        return seen

    async def closed(self, *, timeout: float = RECV_TIMEOUT_SECONDS) -> int | None:
        """Wait for the server to close; return the close code it sent, failing on any frame."""
        code, _ = await self.close_frame(timeout=timeout)
        return code

    async def close_frame(self, *, timeout: float = RECV_TIMEOUT_SECONDS) -> tuple[int | None, str]:
        """Wait for the server to close, failing on any frame but a heartbeat; return its code and reason."""
        async with asyncio.timeout(timeout):
            try:
                while True:
                    frame = await self.frame()
                    assert frame["type"] == "heartbeat", f"expected a close, got {frame}"
            except ConnectionClosed as exc:
                return (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd is not None else (None, "")

    async def first_close_code(self, *, timeout: float = RECV_TIMEOUT_SECONDS) -> int | None:
        """Expect a close before any frame at all; return its code."""
        async with asyncio.timeout(timeout):
            try:
                frame = await self.frame()
            except ConnectionClosed as exc:
                return exc.rcvd.code if exc.rcvd is not None else None
        raise AssertionError(f"expected a close before any frame, got {frame!r}")


@asynccontextmanager
async def ws_connect(
    url: str,
    token: str | None = None,
    *,
    subprotocols: list[str] | None = None,
    origin: str | None = None,
    hello: bool = True,
) -> AsyncIterator[Client]:
    """Connect offering ``["jwt", token]``; wait for hello unless told not to."""
    offered = subprotocols if subprotocols is not None else (["jwt", token] if token else [])
    async with connect(
        url,
        subprotocols=[Subprotocol(p) for p in offered] or None,
        origin=origin,  # type: ignore[arg-type]
        open_timeout=RECV_TIMEOUT_SECONDS,
        close_timeout=2,
        ping_interval=None,
        max_size=None,
    ) as ws:
        client = Client(ws)
        if hello:
            await client.expect("hello")
        yield client
