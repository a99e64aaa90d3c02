"""The WebSocket consumer: one user's events, in seq order, each once.

The channel layer is a hint that an event exists; the log is the truth. The
consumer remembers the last seq it sent (``sent_seq``). A layer message at or
below it is a duplicate and is dropped; one past a gap is preceded by the
missing events read from the log. Every heartbeat re-joins the user's group
and sends whatever the log has beyond ``sent_seq``, so a dropped layer
message or a Redis restart delays an event by at most one heartbeat.
"""

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

from autobahn.exception import Disconnected
from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from channels.utils import await_many_dispatch
from django.conf import settings
from django.db import DatabaseError

from .auth import JWT_SUBPROTOCOL, Identity, aidentity_from_token, token_from_subprotocols
from .exceptions import AuthenticationFailed, ProtocolError
from .frames import LayerEventMessage, encode, event_frame_text, isoformat_utc
from .protocol import Ack, Auth, ClientMessage, Ping, Resume, client_message_parse
from .ratelimit import TokenBucket
from .selectors import events_after, stream_last_seq
from .services import astream_ack, user_group_name

logger = logging.getLogger(__name__)

# Close codes; docs/protocol.md lists them for clients.
CLOSE_UNAUTHORIZED = 4401
CLOSE_RATE_LIMITED = 4429
CLOSE_UNAVAILABLE = 4503

LAYER_TIMEOUT_SECONDS = 5.0
CONNECT_WAIT_SECONDS = 5.0

aevents_after = database_sync_to_async(events_after)
astream_last_seq = database_sync_to_async(stream_last_seq)


class NotificationConsumer(AsyncWebsocketConsumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.identity: Identity | None = None
        self.group: str | None = None
        self.sent_seq = 0
        self.acked_seq = 0
        self.closing = False
        self.strikes = 0
        self.delivery_lock = asyncio.Lock()
        self.timer_task: asyncio.Task[None] | None = None
        self.bucket = TokenBucket(
            rate_per_second=settings.WS_RATE_LIMIT_MESSAGES / settings.WS_RATE_LIMIT_PER_SECONDS,
            burst=settings.WS_RATE_LIMIT_BURST,
        )

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Run the consumer; unlike the base class, survive a layer that is down.

        The base class lets a failing ``new_channel()`` escape as an HTTP 500.
        Here the client is told to come back later (close 4503), and the
        timer task is always cancelled and awaited on the way out.
        """
        self.scope = scope
        self.base_send = send
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        try:
            try:
                self.channel_name = await asyncio.wait_for(
                    self.channel_layer.new_channel(), timeout=LAYER_TIMEOUT_SECONDS
                )
            except Exception as exc:  # Any layer backend error.
                logger.warning("Channel layer unavailable, refusing a WebSocket: %s", exc)
                await self._refuse_unavailable(receive)
                return
            self.channel_receive = partial(self.channel_layer.receive, self.channel_name)
            try:
                await await_many_dispatch([receive, self.channel_receive], self.dispatch)
            except StopConsumer:
                pass
        finally:
            await self._timers_stop()

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Dispatch by type without the base class's per-message thread hop.

        Channels closes stale database connections before every handler by
        hopping to a thread; every ORM call here already goes through
        ``database_sync_to_async``, which does that itself, so live events
        are delivered without leaving the event loop.
        """
        handler = self._HANDLERS.get(message["type"])
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(self, message)

    # Connection lifecycle.

    async def websocket_connect(self, message: dict[str, Any]) -> None:
        subprotocols: list[str] = list(self.scope.get("subprotocols") or [])
        await self.accept(JWT_SUBPROTOCOL if JWT_SUBPROTOCOL in subprotocols else None)
        token = token_from_subprotocols(subprotocols)
        if token is None:
            logger.info("WebSocket refused: no token offered with the jwt subprotocol")
            await self._close(CLOSE_UNAUTHORIZED)
            return
        try:
            identity = await aidentity_from_token(token)
        except AuthenticationFailed as exc:
            logger.info("WebSocket refused: %s", exc)
            await self._close(CLOSE_UNAUTHORIZED)
            return
        self.identity = identity
        self.group = user_group_name(identity.user_id)
        # Join before reading last_seq: an event committed after the read then
        # arrives through the group, and one committed before it is <= last_seq.
        if not await self._group_join():
            await self._close(CLOSE_UNAVAILABLE)
            return
        self.sent_seq = await astream_last_seq(user_id=identity.user_id)
        await self._send(
            {
                "type": "hello",
                "user": {"id": identity.user_id, "username": identity.username},
                "last_seq": self.sent_seq,
                "heartbeat_seconds": _number(settings.WS_HEARTBEAT_SECONDS),
            }
        )
        self.timer_task = asyncio.create_task(self._timers(), name=f"ws-timers-user-{identity.user_id}")

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        self.closing = True
        if self.group is not None:
            try:
                await asyncio.wait_for(
                    self.channel_layer.group_discard(self.group, self.channel_name),
                    timeout=LAYER_TIMEOUT_SECONDS,
                )
            except Exception as exc:  # Membership expires by itself; nothing to lose.
                logger.warning("Could not leave group %s on disconnect: %s", self.group, exc)
        raise StopConsumer()

    async def websocket_receive(self, message: dict[str, Any]) -> None:
        if self.closing or self.identity is None:
            return
        if not self.bucket.take():
            self.strikes += 1
            if self.strikes >= settings.WS_RATE_LIMIT_STRIKES:
                logger.info("Closing connection of user %s: rate limit exceeded", self.identity.user_id)
                await self._close(CLOSE_RATE_LIMITED)
            else:
                await self._send_error("rate_limited", "Too many messages; slow down.")
            return
        self.strikes = 0
        text = message.get("text")
        if text is None:
            await self._send_error("invalid_message", "Binary frames are not supported; send JSON text.")
            return
        if len(text.encode()) > settings.WS_MAX_MESSAGE_BYTES:
            # Only a message fragmented into small frames gets here; the
            # server closes on any single frame over the limit with 1009.
            await self._send_error("invalid_message", f"Messages are limited to {settings.WS_MAX_MESSAGE_BYTES} bytes.")
            return
        try:
            parsed = client_message_parse(text)
        except ProtocolError as exc:
            await self._send_error(exc.code, exc.detail)
            return
        await self._client_message(parsed)

    # Client messages.

    async def _client_message(self, message: ClientMessage) -> None:
        match message:
            case Ping(ref=ref):
                await self._send({"type": "pong"} if ref is None else {"type": "pong", "ref": ref})
            case Resume(after=after):
                await self._resume(after)
            case Ack(seq=seq):
                await self._ack(seq)
            case Auth(token=token):
                await self._reauthenticate(token)

    async def _resume(self, after: int) -> None:
        assert self.identity is not None
        async with self.delivery_lock:
            last_seq = await astream_last_seq(user_id=self.identity.user_id)
            if after > last_seq:
                await self._send_error("invalid_message", f"Cannot resume after {after}: the last event is {last_seq}.")
                return
            # The client states what it has: replay everything after that,
            # even events this connection already sent.
            self.sent_seq = after
            count = await self._send_from_log()
            await self._send({"type": "resumed", "after": after, "last_seq": self.sent_seq, "count": count})

    async def _ack(self, seq: int) -> None:
        assert self.identity is not None
        if seq > self.sent_seq:
            await self._send_error(
                "invalid_message", f"Cannot ack {seq}: the last event sent on this connection is {self.sent_seq}."
            )
            return
        if seq <= self.acked_seq:
            return
        await astream_ack(user_id=self.identity.user_id, seq=seq)
        self.acked_seq = seq

    async def _reauthenticate(self, token: str) -> None:
        assert self.identity is not None
        try:
            identity = await aidentity_from_token(token)
        except AuthenticationFailed as exc:
            await self._send_error("invalid_token", str(exc))
            return
        if identity.user_id != self.identity.user_id:
            await self._send_error("invalid_token", "The token belongs to a different user.")
            return
        self.identity = dataclasses.replace(
            self.identity, expires_at=max(identity.expires_at, self.identity.expires_at)
        )
        await self._send({"type": "auth.ok", "expires_at": _unix_to_iso(self.identity.expires_at)})

    # Delivery.

    async def notification_event(self, message: LayerEventMessage) -> None:
        """Deliver a live event from the layer, filling any gap from the log first."""
        seq = message["seq"]
        async with self.delivery_lock:
            if self.closing or seq <= self.sent_seq:
                return
            if seq > self.sent_seq + 1:
                try:
                    await self._send_from_log(upto=seq - 1)
                except DatabaseError as exc:
                    logger.warning("Gap before seq %s not filled yet, the heartbeat will: %s", seq, exc)
                    return
                if self.sent_seq != seq - 1:
                    return  # Closing, or the log is behind; the heartbeat retries.
            await self._send_text(message["frame"])
            self.sent_seq = seq

    async def _send_from_log(self, *, upto: int | None = None) -> int:
        """Send the log's events after ``sent_seq`` (up to ``upto``); return how many.

        The caller holds ``delivery_lock``.
        """
        assert self.identity is not None
        batch_size: int = settings.WS_REPLAY_BATCH_SIZE
        sent = 0
        while not self.closing:
            limit = batch_size if upto is None else min(batch_size, upto - self.sent_seq)
            if limit <= 0:
                break
            batch = await aevents_after(user_id=self.identity.user_id, after=self.sent_seq, limit=limit)
            for event in batch:
                if self.closing:
                    break
                await self._send_text(event_frame_text(event))
                self.sent_seq = event.seq
                sent += 1
            if len(batch) < limit:
                break
        return sent

    # Heartbeat and token expiry.

    async def _timers(self) -> None:
        """Beat every heartbeat interval; close with 4401 when the token expires."""
        assert self.identity is not None
        loop = asyncio.get_running_loop()
        heartbeat: float = settings.WS_HEARTBEAT_SECONDS
        next_beat = loop.time() + heartbeat
        while not self.closing:
            token_left = self.identity.expires_at - time.time()
            if token_left <= 0:
                logger.info("Closing connection of user %s: access token expired", self.identity.user_id)
                await self._close(CLOSE_UNAUTHORIZED)
                return
            delay = min(next_beat - loop.time(), token_left)
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            try:
                await self._heartbeat()
            except Exception:  # Keep beating and watching the token whatever one beat hit.
                logger.exception("Heartbeat failed for user %s", self.identity.user_id)
            next_beat = loop.time() + heartbeat

    async def _heartbeat(self) -> None:
        await self._group_join()
        try:
            async with self.delivery_lock:
                if self.closing:
                    return
                await self._send_from_log()
                await self._send({"type": "heartbeat", "last_seq": self.sent_seq})
        except DatabaseError as exc:
            logger.warning("Heartbeat could not read the log, retrying next beat: %s", exc)

    async def _timers_stop(self) -> None:
        task, self.timer_task = self.timer_task, None
        if task is None:
            return
        task.cancel()
        await asyncio.wait([task])
        if not task.cancelled() and task.exception() is not None:
            logger.error("Connection timer task failed", exc_info=task.exception())

    # Helpers.

    async def _group_join(self) -> bool:
        """(Re-)join the user's group; membership can vanish with a Redis restart."""
        assert self.group is not None
        try:
            await asyncio.wait_for(
                self.channel_layer.group_add(self.group, self.channel_name), timeout=LAYER_TIMEOUT_SECONDS
            )
        except Exception as exc:  # Any layer backend error; the log still delivers.
            logger.warning("Could not join group %s: %s", self.group, exc)
            return False
        return True

    async def _refuse_unavailable(self, receive: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        try:
            message = await asyncio.wait_for(receive(), timeout=CONNECT_WAIT_SECONDS)
        except TimeoutError:
            return
        if message["type"] != "websocket.connect":
            return
        subprotocols = self.scope.get("subprotocols") or []
        await self.accept(JWT_SUBPROTOCOL if JWT_SUBPROTOCOL in subprotocols else None)
        await self._close(CLOSE_UNAVAILABLE)

    async def _close(self, code: int) -> None:
        if self.closing:
            return
        self.closing = True
        await self.close(code)

    async def _send(self, frame: dict[str, Any]) -> None:
        await self._send_text(encode(frame))

    async def _send_text(self, text: str) -> None:
        """Send a frame unless the connection is closing; a send that loses the race is not an error.

        The peer can close between our check and the send: daphne then
        raises autobahn's ``Disconnected`` (other ASGI servers an ``OSError``)
        before its disconnect message reaches us. The connection is over
        either way, and anything unsent is still in the log for a resume.
        """
        if self.closing:
            return
        try:
            await self.send(text_data=text)
        except (Disconnected, OSError) as exc:
            logger.debug("Send after the peer closed, dropped: %s", exc)
            self.closing = True

    async def _send_error(self, code: str, detail: str) -> None:
        await self._send({"type": "error", "code": code, "detail": detail})

    _HANDLERS: dict[str, Callable[["NotificationConsumer", Any], Awaitable[None]]] = {
        "websocket.connect": websocket_connect,
        "websocket.receive": websocket_receive,
        "websocket.disconnect": websocket_disconnect,
        "notification.event": notification_event,
    }


def _unix_to_iso(timestamp: float) -> str:
    return isoformat_utc(datetime.fromtimestamp(timestamp, tz=UTC))


def _number(value: float) -> float | int:
    """Render a whole number of seconds as an integer (25, not 25.0)."""
    return int(value) if float(value).is_integer() else value
