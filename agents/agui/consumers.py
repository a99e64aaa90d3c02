"""The AG-UI endpoint: ``POST /api/ag-ui/<agent>/`` starts a run and streams it as SSE; ``GET …/runs/<id>/`` resumes.

The consumer authenticates (a ``Bearer`` access token, as the REST API),
checks the request, joins the user's group, starts the run (or finds it),
and hands the stream to ``RunStream``, waking it on each live event of the
run and on a keep-alive tick. It answers errors in JSON, as the REST API does.
"""

import asyncio
import json
import logging
import time
import uuid
from typing import Any
from urllib.parse import parse_qs, quote

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.generic.http import AsyncHttpConsumer
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import DatabaseError

from notifications.auth import Identity, access_claims, auser_id, auser_state, identity_from
from notifications.exceptions import AuthenticationFailed
from notifications.frames import encode
from notifications.layers import group_add_many, group_channel_receive, group_discard_many, new_group_channel
from notifications.services import user_group_name
from notifications.throttles import write_rate_wait_seconds

from ..exceptions import RunRefused, TooManyRuns, UnknownAgent
from ..models import ACTIVE_STATUSES, AgentRun
from ..selectors import run_get
from ..services import arun_start
from ..supervisor import SupervisorClosed
from .request import run_request_parse
from .sse import KEEPALIVE_FRAME, ResumePoint, resume_point
from .stream import RunStream

logger = logging.getLogger(__name__)

LAYER_TIMEOUT_SECONDS = 5.0
BODY_TIMEOUT_SECONDS = 10.0
STOP_TIMEOUT_SECONDS = 5.0
LAYER_RETRY_FIRST_SECONDS = 0.1
LAYER_RETRY_MAX_SECONDS = 5.0
BODY_MAX_BYTES_DEFAULT = 2_621_440  # Django's DATA_UPLOAD_MAX_MEMORY_SIZE default, for when it is None.

arun_get = database_sync_to_async(run_get, thread_sensitive=False)
awrite_rate_wait_seconds = sync_to_async(write_rate_wait_seconds, thread_sensitive=False)


class Refusal(Exception):
    """The request is answered with an error instead of a stream."""

    def __init__(self, status: int, code: str, detail: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers or []


class AguiConsumer(AsyncHttpConsumer):
    """One AG-UI request: a new run's stream (``resume=False``, POST) or a resumed one (GET).

    It runs the request itself rather than in ``handle()``: the base class
    awaits ``handle()`` inside its dispatch loop, so while a stream was open
    neither the client's disconnect nor the layer's live events could arrive.
    """

    def __init__(self, *, resume: bool) -> None:
        super().__init__()
        self.resume = resume
        self.channel_name = ""
        self.group = ""
        self.wake = asyncio.Event()
        self.disconnected = False
        self.run_id: uuid.UUID | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.scope = scope
        self.base_send = send
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        try:
            await self._serve(receive)
        except Refusal as refusal:
            await self._refuse(refusal)
        finally:
            await self._group_leave()

    async def _serve(self, receive: Any) -> None:
        method = self.scope["method"]
        if method != ("GET" if self.resume else "POST"):
            allow = b"GET" if self.resume else b"POST"
            raise Refusal(405, "method_not_allowed", f"Use {allow.decode()}.", [(b"allow", allow)])
        body = await self._body_read(receive)
        if body is None:
            return  # The client left before it finished sending.
        identity = await self._authenticate()
        kwargs = self.scope["url_route"]["kwargs"]
        if self.resume:
            start = self._resume_point()
            run = await self._run_find(identity.user_id, kwargs["agent"], kwargs["run_id"])
            thread_id = (parse_qs(self.scope.get("query_string", b"").decode("latin-1")).get("threadId") or [""])[0]
            thread_id = thread_id or str(run.id)
            # Read before the log: a run over now has its terminal event in the log already.
            over = run.status not in ACTIVE_STATUSES
            await self._group_join(identity.user_id)
        else:
            try:
                request = run_request_parse(body)
            except RunRefused as exc:
                raise Refusal(400, exc.code, exc.detail) from None
            await self._throttle(identity.user_id)
            # Join before the run starts: every event of it then comes after the join.
            await self._group_join(identity.user_id)
            run = await self._run_start(identity.user_id, kwargs["agent"], request.input, request.timeout)
            thread_id, start, over = request.thread_id, ResumePoint(after_seq=0), False
        self.run_id = run.id
        location = f"/api/ag-ui/{quote(run.agent)}/runs/{run.id}/?threadId={quote(thread_id, safe='')}"
        await self.send_headers(
            status=200,
            headers=[
                (b"content-type", b"text/event-stream; charset=utf-8"),
                (b"cache-control", b"no-cache, no-store"),
                (b"x-accel-buffering", b"no"),
                (b"content-location", location.encode()),
            ],
        )
        await self.send_body(f": ag-ui run {run.id}\n\n".encode(), more_body=True)
        stream = RunStream(
            user_id=identity.user_id, run_id=run.id, thread_id=thread_id, start=start, send=self._send_more
        )
        await self._stream(stream, receive, identity, over=over)

    async def _stream(self, stream: RunStream, receive: Any, identity: Identity, *, over: bool) -> None:
        """Send the run's events until its terminal event, the client leaves, or the token expires."""
        keepalive: float = settings.AGUI_KEEPALIVE_SECONDS
        leaving = asyncio.create_task(self._until_disconnect(receive), name="agui-disconnect")
        listening = asyncio.create_task(self._layer_listen(stream), name="agui-layer")
        try:
            while True:
                if self.disconnected:
                    return  # No one to end the response for.
                self.wake.clear()
                try:
                    await stream.catch_up()
                except DatabaseError as exc:  # Sent later, from the log, once it answers.
                    logger.warning("AG-UI stream of run %s could not read the log: %s", stream.run_id, exc)
                if self.disconnected:
                    return
                if stream.finished or over:
                    break
                remaining = identity.expires_at - time.time()
                if remaining <= 0:
                    logger.info("AG-UI stream of run %s ends: the access token expired", stream.run_id)
                    break
                try:
                    await asyncio.wait_for(self.wake.wait(), timeout=min(keepalive, remaining))
                except TimeoutError:
                    await self._send_more(KEEPALIVE_FRAME)
            await self.send_body(b"", more_body=False)
        finally:
            for task in (leaving, listening):
                task.cancel()
            await asyncio.wait([leaving, listening], timeout=STOP_TIMEOUT_SECONDS)

    async def _send_more(self, chunk: bytes) -> None:
        await self.send_body(chunk, more_body=True)

    async def _until_disconnect(self, receive: Any) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.disconnected = True
        self.wake.set()

    async def _layer_listen(self, stream: RunStream) -> None:
        """Wake the stream for each live event of its run; the log has the event itself."""
        delay = LAYER_RETRY_FIRST_SECONDS
        while True:
            try:
                message = await group_channel_receive(self.channel_layer, self.channel_name)
            except Exception as exc:  # Redis down or restarting: the keep-alive tick still reads the log.
                logger.warning("AG-UI stream's layer read failed, retrying in %.1fs: %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, LAYER_RETRY_MAX_SECONDS)
                continue
            delay = LAYER_RETRY_FIRST_SECONDS
            if message.get("type") == "notification.event" and int(message.get("seq", 0)) > stream.sent_seq:
                frame = json.loads(message["frame"])
                if frame.get("run_id") == str(stream.run_id):
                    self.wake.set()

    async def _body_read(self, receive: Any) -> bytes | None:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE or BODY_MAX_BYTES_DEFAULT
        chunks: list[bytes] = []
        size = 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), timeout=BODY_TIMEOUT_SECONDS)
            except TimeoutError:
                raise Refusal(408, "request_timeout", "The request body did not arrive in time.") from None
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:  # As Django answers an API body over the limit.
                raise Refusal(400, "bad_request", f"The body is over {limit} bytes.")
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    async def _authenticate(self) -> Identity:
        header = dict(self.scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = header.partition(" ")
        challenge = [(b"www-authenticate", b'Bearer realm="api"')]
        if scheme.lower() != "bearer" or not token.strip():
            raise Refusal(401, "not_authenticated", "Authentication credentials were not provided.", challenge)
        try:
            claims = access_claims(token.strip())
            user_id = await auser_id(claims)
            return identity_from(claims, None if user_id is None else await auser_state(user_id))
        except AuthenticationFailed as exc:
            raise Refusal(401, "token_not_valid", str(exc), challenge) from None
        except DatabaseError:
            raise Refusal(503, "unavailable", "The database is unavailable; retry.") from None

    def _resume_point(self) -> ResumePoint:
        header = dict(self.scope.get("headers") or []).get(b"last-event-id")
        try:
            return resume_point(None if header is None else header.decode("latin-1"))
        except RunRefused as exc:
            raise Refusal(400, exc.code, exc.detail) from None

    async def _run_find(self, user_id: int, agent: str, run_id: uuid.UUID) -> AgentRun:
        try:
            run: AgentRun | None = await arun_get(user_id=user_id, run_id=run_id)
        except DatabaseError:
            raise Refusal(503, "unavailable", "The database is unavailable; retry.") from None
        if run is None or run.agent != agent:
            raise Refusal(404, "not_found", "No such run.")
        return run

    async def _throttle(self, user_id: int) -> None:
        wait = await asyncio.wait_for(
            awrite_rate_wait_seconds(scope="runs", user_id=user_id), timeout=LAYER_TIMEOUT_SECONDS
        )
        if wait is not None:
            seconds = max(1, int(wait + 0.999))
            raise Refusal(
                429,
                "rate_limited",
                f"Request was throttled. Expected available in {seconds} seconds.",
                [(b"retry-after", str(seconds).encode())],
            )

    async def _run_start(self, user_id: int, agent: str, input: Any, run_timeout: Any) -> AgentRun:
        try:
            run: AgentRun = await arun_start(user_id=user_id, agent=agent, input=input, run_timeout=run_timeout)
        except UnknownAgent as exc:
            raise Refusal(404, exc.code, exc.detail) from None
        except TooManyRuns as exc:
            raise Refusal(429, exc.code, exc.detail) from None
        except RunRefused as exc:
            raise Refusal(400, exc.code, exc.detail) from None
        except SupervisorClosed as exc:
            raise Refusal(503, "unavailable", str(exc)) from None
        except DatabaseError:
            raise Refusal(503, "unavailable", "The database is unavailable; retry.") from None
        return run

    async def _group_join(self, user_id: int) -> None:
        try:
            self.channel_name = await asyncio.wait_for(
                new_group_channel(self.channel_layer), timeout=LAYER_TIMEOUT_SECONDS
            )
            group = user_group_name(user_id)
            await asyncio.wait_for(
                group_add_many(self.channel_layer, [(group, self.channel_name)]), timeout=LAYER_TIMEOUT_SECONDS
            )
            self.group = group
        except Exception as exc:  # Any layer backend error: nothing has started yet.
            logger.warning("Channel layer unavailable, refusing an AG-UI stream: %s", exc)
            raise Refusal(503, "unavailable", "Live events are unavailable; retry.", [(b"retry-after", b"5")]) from None

    async def _group_leave(self) -> None:
        if not self.group:
            return
        group, self.group = self.group, ""
        try:
            await asyncio.wait_for(
                group_discard_many(self.channel_layer, [(group, self.channel_name)]), timeout=LAYER_TIMEOUT_SECONDS
            )
        except Exception as exc:  # The layer forgets a departed channel's groups by itself (expiry, unsubscribe).
            logger.warning("Could not leave group %s after an AG-UI stream: %s", group, exc)

    async def _refuse(self, refusal: Refusal) -> None:
        body = encode({"code": refusal.code, "detail": refusal.detail}).encode()
        headers = [(b"content-type", b"application/json"), *refusal.headers]
        await self.send_response(refusal.status, body, headers=headers)
