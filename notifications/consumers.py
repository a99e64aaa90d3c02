"""The WebSocket consumer at /ws/notifications/: admission, auth, protocol and limits.

What is delivered, and in what order, is ``delivery.Delivery``'s job, and
when each connection beats is ``heartbeat.Heartbeats``'; this module admits
and authenticates connections, parses client messages, enforces limits,
acts on each beat, and closes a connection when its token expires.
"""

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar

from autobahn.exception import Disconnected
from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from channels.utils import await_many_dispatch
from django.conf import settings
from django.db import DatabaseError

from . import metrics
from .admission import admission, retry_after_seconds, retry_reason
from .auth import (
    JWT_SUBPROTOCOL,
    Identity,
    access_claims,
    aidentity_from_token,
    auser_id,
    auser_state,
    identity_from,
    token_from_subprotocols,
)
from .batching import BatchedReader, batched_reader
from .delivery import Delivery, ResumeRefused
from .exceptions import AuthenticationFailed, ProtocolError
from .frames import LayerEventMessage, encode, isoformat_utc
from .heartbeat import Heartbeats, heartbeats
from .layers import dispatch_merged, group_add_many, group_channel_receive, group_discard_many, new_group_channel
from .protocol import BASE_PARSERS, Ack, Auth, ClientMessage, Parser, Ping, Resume, client_message_parse
from .ratelimit import TokenBucket
from .selectors import UserState
from .services import stream_ack, user_group_name

logger = logging.getLogger(__name__)

# Close codes; docs/protocol.md lists them for clients.
CLOSE_UNAUTHORIZED = 4401
CLOSE_RATE_LIMITED = 4429
CLOSE_UNAVAILABLE = 4503

LAYER_TIMEOUT_SECONDS = 5.0
CONNECT_WAIT_SECONDS = 5.0
STOP_TIMEOUT_SECONDS = 5.0
LAYER_RETRY_FIRST_SECONDS = 0.1
LAYER_RETRY_MAX_SECONDS = 5.0

astream_ack = database_sync_to_async(stream_ack, thread_sensitive=False)


class NotificationConsumer(AsyncWebsocketConsumer):
    """One user's live event stream.

    Subclasses add client message types by extending ``message_parsers``
    and overriding ``handle_message`` for the new message classes.
    """

    message_parsers: ClassVar[Mapping[str, Parser]] = BASE_PARSERS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.identity: Identity | None = None
        self.delivery: Delivery | None = None
        self.group: str | None = None
        self.acked_seq = 0
        self.closing = False
        # Set once hello is sent (the connection counts as open), and the close code once known.
        self.opened = False
        self.close_code: int | None = None
        self.strikes = 0
        self.beating: Heartbeats | None = None
        self.expiry: asyncio.TimerHandle | None = None
        self.expiry_task: asyncio.Task[None] | None = None
        self.bucket = TokenBucket(
            rate_per_second=settings.WS_RATE_LIMIT_MESSAGES / settings.WS_RATE_LIMIT_PER_SECONDS,
            burst=settings.WS_RATE_LIMIT_BURST,
        )

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Run the consumer; unlike the base class, survive a layer that is down.

        The base class lets a failing ``new_channel()`` escape as an HTTP 500
        and a failing layer read end the connection with 1011. Here the
        client is told to come back later (4503), a failed read is retried
        with backoff while the heartbeat keeps delivering from the log, and
        the connection always leaves the heartbeat on the way out.
        """
        self.scope = scope
        self.base_send = send
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        try:
            try:
                self.channel_name = await asyncio.wait_for(
                    new_group_channel(self.channel_layer), timeout=LAYER_TIMEOUT_SECONDS
                )
            except Exception as exc:  # Any layer backend error.
                metrics.layer_error(operation="new_channel")
                logger.warning("Channel layer unavailable, refusing a WebSocket: %s", exc)
                await self._refuse_unavailable(receive)
                return
            try:
                merged = await dispatch_merged(
                    self.channel_layer,
                    self.channel_name,
                    receive=receive,
                    dispatch=self.dispatch,
                    undecodable=self._layer_undecodable,
                )
                if not merged:  # Layers other than the pub/sub one: channels' own way.
                    await await_many_dispatch([receive, self._layer_receive], self.dispatch)
            except StopConsumer:
                pass
        finally:
            if self.opened:
                metrics.ws_closed(code=self.close_code)
            await self._beating_stop()

    async def _layer_receive(self) -> dict[str, Any]:
        delay = LAYER_RETRY_FIRST_SECONDS
        while True:
            try:
                message: dict[str, Any] = await group_channel_receive(self.channel_layer, self.channel_name)
                return message
            except Exception as exc:  # Redis down or restarting; the log still delivers.
                metrics.layer_error(operation="receive")
                logger.warning("Channel layer read failed, retrying in %.1fs: %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, LAYER_RETRY_MAX_SECONDS)

    def _layer_undecodable(self, exc: Exception) -> None:
        metrics.layer_error(operation="receive")
        logger.warning("Dropped a layer message that does not decode: %s", exc)

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
        ticket = admission.enter()
        if ticket is None:
            logger.info(
                "WebSocket refused: %d handshakes in progress, the oldest for %.1fs",
                admission.pending,
                admission.waited_seconds(),
            )
            await self._close(CLOSE_UNAVAILABLE, retry_after=admission.appointment_seconds())
            return
        try:
            await self._open(subprotocols)
        finally:
            admission.leave(ticket)

    async def _open(self, subprotocols: list[str]) -> None:
        """Check the token, join the user's group, read the user and its stream, say hello, start beating."""
        token = token_from_subprotocols(subprotocols)
        if token is None:
            logger.info("WebSocket refused: no token offered with the jwt subprotocol")
            await self._close(CLOSE_UNAUTHORIZED)
            return
        try:
            claims = access_claims(token)
            user_id = await auser_id(claims)
            if user_id is None:
                raise AuthenticationFailed("The token's user does not exist or is inactive.")
        except AuthenticationFailed as exc:
            logger.info("WebSocket refused: %s", exc)
            await self._close(CLOSE_UNAUTHORIZED)
            return
        except DatabaseError as exc:
            await self._refuse_database_down(exc)
            return
        self.group = user_group_name(user_id)
        # Join before reading last_seq: an event committed after the read then
        # arrives through the group, and one committed before it is <= last_seq.
        if not await self._group_join():
            await self._close(CLOSE_UNAVAILABLE, retry_after=retry_after_seconds())
            return
        try:
            state = await auser_state(user_id)
            identity = identity_from(claims, state)
        except AuthenticationFailed as exc:
            logger.info("WebSocket refused: %s", exc)
            await self._close(CLOSE_UNAUTHORIZED)
            return
        except DatabaseError as exc:
            await self._refuse_database_down(exc)
            return
        assert state is not None
        self.identity = identity
        self.delivery = Delivery(user_id=identity.user_id, send_text=self._send_text, sent_seq=state.last_seq)
        await self._send(
            {
                "type": "hello",
                "user": {"id": identity.user_id, "username": identity.username},
                "last_seq": state.last_seq,
                "heartbeat_seconds": _number(settings.WS_HEARTBEAT_SECONDS),
            }
        )
        if self.closing:
            return
        self.opened = True
        metrics.ws_opened()
        self._expiry_schedule()
        self.beating = heartbeats(self.channel_layer)
        self.beating.add(self)

    async def _refuse_database_down(self, exc: DatabaseError) -> None:
        metrics.database_error(operation="connect")
        logger.warning("WebSocket refused, database unavailable: %s", exc)
        await self._close(CLOSE_UNAVAILABLE, retry_after=retry_after_seconds())

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        self.closing = True
        if self.close_code is None:
            self.close_code = message.get("code")
        if self.group is not None:
            try:
                await asyncio.wait_for(
                    group_leaves(self.channel_layer).get((self.group, self.channel_name)),
                    timeout=LAYER_TIMEOUT_SECONDS,
                )
            except Exception as exc:  # Membership expires by itself; nothing to lose.
                metrics.layer_error(operation="discard")
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
            parsed = client_message_parse(text, self.message_parsers)
            await self.handle_message(parsed)
        except ProtocolError as exc:
            await self._send_error(exc.code, exc.detail)
        except DatabaseError as exc:
            metrics.database_error(operation="client_message")
            logger.warning("Client message failed, database unavailable: %s", exc)
            await self._send_error("unavailable", "The server could not do that just now; try again shortly.")

    # Client messages.

    async def handle_message(self, message: ClientMessage | Any) -> None:
        """Act on one parsed client message; raise ``ProtocolError`` to answer with an error."""
        match message:
            case Ping(ref=ref):
                await self._send({"type": "pong"} if ref is None else {"type": "pong", "ref": ref})
            case Resume(after=after):
                await self._resume(after)
            case Ack(seq=seq):
                await self._ack(seq)
            case Auth(token=token):
                await self._reauthenticate(token)
            case _:
                raise ValueError(f"No handler for {message!r}")

    async def _resume(self, after: int) -> None:
        assert self.delivery is not None
        try:
            resumed = await self.delivery.resume(after)
        except ResumeRefused as exc:
            metrics.ws_resume_refused()
            raise ProtocolError("invalid_message", str(exc)) from None
        metrics.ws_resumed(truncated=resumed.truncated)
        await self._send({"type": "resumed", **dataclasses.asdict(resumed)})

    async def _ack(self, seq: int) -> None:
        assert self.identity is not None and self.delivery is not None
        if seq > self.delivery.sent_seq:
            raise ProtocolError(
                "invalid_message",
                f"Cannot ack {seq}: the last event sent on this connection is {self.delivery.sent_seq}.",
            )
        if seq <= self.acked_seq:
            return
        await astream_ack(user_id=self.identity.user_id, seq=seq)
        self.acked_seq = seq

    async def _reauthenticate(self, token: str) -> None:
        assert self.identity is not None
        try:
            identity = await aidentity_from_token(token)
        except AuthenticationFailed as exc:
            raise ProtocolError("invalid_token", str(exc)) from None
        if identity.user_id != self.identity.user_id:
            raise ProtocolError("invalid_token", "The token belongs to a different user.")
        self.identity = dataclasses.replace(
            self.identity, expires_at=max(identity.expires_at, self.identity.expires_at)
        )
        self._expiry_schedule()
        await self._send({"type": "auth.ok", "expires_at": _unix_to_iso(self.identity.expires_at)})

    # Live events.

    async def notification_event(self, message: LayerEventMessage) -> None:
        """Deliver a live event from the layer (the gap before it, if any, from the log)."""
        if self.closing or self.delivery is None:
            return
        if message["user_id"] != self.delivery.user_id:
            # Only possible if another deployment shares this Redis and prefix.
            logger.warning(
                "Dropped a layer event for user %s on user %s's connection", message["user_id"], self.delivery.user_id
            )
            return
        try:
            await self.delivery.live(seq=message["seq"], frame=message["frame"], created=message.get("created"))
        except DatabaseError as exc:
            metrics.database_error(operation="gap_fill")
            logger.warning("Gap before seq %s not filled yet, the next heartbeat will: %s", message["seq"], exc)

    # Heartbeat and token expiry.

    @property
    def user_id(self) -> int:
        assert self.identity is not None
        return self.identity.user_id

    async def beat(self, state: UserState | None, *, rejoin: bool) -> None:
        """One heartbeat, with the user's state read just now for every connection of this tick.

        A deleted or deactivated user's connection closes (4401). One that
        is behind the stream reads the log (only those do); then the
        ``heartbeat`` frame, then the group join if the layer needs it. The
        log comes first so that a hung Redis cannot delay it.
        """
        if self.closing or self.delivery is None:
            return
        if state is None or not state.active:
            logger.info("Closing connection of user %s: the user is deleted or inactive", self.delivery.user_id)
            await self._close(CLOSE_UNAUTHORIZED)
            return
        try:
            if state.last_seq > self.delivery.sent_seq:
                await self.delivery.catch_up()
        except DatabaseError as exc:
            metrics.database_error(operation="heartbeat")
            logger.warning("Heartbeat could not read the log, retrying next beat: %s", exc)
        else:
            await self._send({"type": "heartbeat", "last_seq": self.delivery.sent_seq})
        if rejoin and await self._group_join() and self.beating is not None:
            self.beating.joined(self)

    def _expiry_schedule(self) -> None:
        """Close with 4401 when the token expires (again after an ``auth`` extended it)."""
        assert self.identity is not None
        if self.expiry is not None:
            self.expiry.cancel()
        loop = asyncio.get_running_loop()
        self.expiry = loop.call_at(loop.time() + (self.identity.expires_at - time.time()), self._expiry_due)

    def _expiry_due(self) -> None:
        self.expiry = None
        if not self.closing and self.expiry_task is None:
            self.expiry_task = asyncio.get_running_loop().create_task(self._expire(), name="ws-token-expiry")

    async def _expire(self) -> None:
        assert self.identity is not None
        logger.info("Closing connection of user %s: access token expired", self.identity.user_id)
        await self._close(CLOSE_UNAUTHORIZED)

    async def _beating_stop(self) -> None:
        """Leave the heartbeat and drop the expiry timer; wait (bounded) for an expiry close under way."""
        if self.expiry is not None:
            self.expiry.cancel()
            self.expiry = None
        if self.beating is not None:
            beating, self.beating = self.beating, None
            await beating.discard(self)
        task, self.expiry_task = self.expiry_task, None
        if task is None or task is asyncio.current_task():
            return
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=STOP_TIMEOUT_SECONDS)
        if not done:
            logger.error("Connection expiry task did not stop within %ss", STOP_TIMEOUT_SECONDS)
        elif not task.cancelled() and task.exception() is not None:
            logger.error("Connection expiry task failed", exc_info=task.exception())

    # Helpers.

    async def _group_join(self) -> bool:
        """(Re-)join the user's group, with every other connection of this process joining at the same time."""
        assert self.group is not None
        try:
            await asyncio.wait_for(
                group_joins(self.channel_layer).get((self.group, self.channel_name)), timeout=LAYER_TIMEOUT_SECONDS
            )
        except Exception as exc:  # Any layer backend error; the log still delivers.
            metrics.layer_error(operation="join")
            logger.warning("Could not join group %s: %s", self.group, exc)
            return False
        return True

    async def _refuse_unavailable(self, receive: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        try:
            message = await asyncio.wait_for(receive(), timeout=CONNECT_WAIT_SECONDS)
        except TimeoutError:
            logger.info("Client sent no handshake within %ss; dropping it", CONNECT_WAIT_SECONDS)
            return
        if message["type"] != "websocket.connect":
            return
        subprotocols = self.scope.get("subprotocols") or []
        await self.accept(JWT_SUBPROTOCOL if JWT_SUBPROTOCOL in subprotocols else None)
        await self._close(CLOSE_UNAVAILABLE, retry_after=retry_after_seconds())

    async def _close(self, code: int, *, retry_after: float | None = None) -> None:
        """Close once; ``retry_after`` tells the client when to come back (the close reason)."""
        if self.closing:
            return
        self.closing = True
        self.close_code = code
        if not self.opened:
            metrics.ws_refused(code=code)
        await self.close(code, reason=None if retry_after is None else retry_reason(retry_after))

    async def _send(self, frame: dict[str, Any]) -> None:
        await self._send_text(encode(frame))

    async def _send_text(self, text: str) -> bool:
        """Send a frame; return False once the connection is closing.

        The token is checked on every send, so a long replay cannot outlive
        it. The peer can also close between our check and the send: daphne
        then raises autobahn's ``Disconnected`` (other ASGI servers an
        ``OSError``) before its disconnect message reaches us. The connection
        is over either way, and anything unsent is still in the log.
        """
        if self.closing:
            return False
        if self.identity is not None and time.time() >= self.identity.expires_at:
            await self._expire()
            return False
        try:
            await self.send(text_data=text)
        except (Disconnected, OSError) as exc:
            logger.debug("Send after the peer closed, dropped: %s", exc)
            self.closing = True
            return False
        return True

    async def _send_error(self, code: str, detail: str) -> None:
        await self._send({"type": "error", "code": code, "detail": detail})

    _HANDLERS: ClassVar[dict[str, Callable[["NotificationConsumer", Any], Awaitable[None]]]] = {
        "websocket.connect": websocket_connect,
        "websocket.receive": websocket_receive,
        "websocket.disconnect": websocket_disconnect,
        "notification.event": notification_event,
    }


def group_joins(layer: Any) -> BatchedReader[tuple[str, str], bool]:
    """The running loop's batched group joins on ``layer`` (one ``SUBSCRIBE`` per shard for a burst)."""

    async def join(pairs: list[tuple[str, str]]) -> dict[tuple[str, str], bool]:
        await group_add_many(layer, pairs)
        return dict.fromkeys(pairs, True)

    # Keyed by the layer itself, not its id: a later layer at a freed one's address must not get its reader.
    return batched_reader(("group-joins", layer), join)


def group_leaves(layer: Any) -> BatchedReader[tuple[str, str], bool]:
    """The running loop's batched group leaves on ``layer`` (one ``UNSUBSCRIBE`` per shard for a burst)."""

    async def leave(pairs: list[tuple[str, str]]) -> dict[tuple[str, str], bool]:
        await group_discard_many(layer, pairs)
        return dict.fromkeys(pairs, True)

    return batched_reader(("group-leaves", layer), leave)


def _unix_to_iso(timestamp: float) -> str:
    return isoformat_utc(datetime.fromtimestamp(timestamp, tz=UTC))


def _number(value: float) -> float | int:
    """Render a whole number of seconds as an integer (25, not 25.0)."""
    return int(value) if float(value).is_integer() else value
