"""Run daphne with this service's WebSocket limits and a graceful close on shutdown.

Usage: ``python -m config.server [daphne options] [config.asgi:application]``.
Any daphne option given on the command line overrides the defaults below.
"""

import asyncio
import gc
import logging
import os
import pprint
import random
import sys
import time
from typing import Any

import autobahn.websocket.protocol
from daphne.access import AccessLogGenerator
from daphne.cli import CommandLineInterface
from daphne.server import Server
from daphne.ws_protocol import WebSocketProtocol
from django.conf import settings
from django.utils.module_loading import import_string
from twisted.internet import defer, reactor

from config.eager_write import eager_writes
from notifications.admission import retry_reason

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("access")

CLOSE_GOING_AWAY = 1001
CLOSE_POLL_SECONDS = 0.02
SHUTDOWN_HOOK_TIMEOUT_SECONDS = 15.0


class AccessLog(AccessLogGenerator):
    """Daphne's access log, written through logging (so LOG_FORMAT applies), without query strings.

    The server never reads a token from a URL, but a client may still put one
    there; the path alone is enough to read the log. Headers (Authorization,
    the WebSocket's subprotocols) are never logged.
    """

    def __init__(self) -> None:
        super().__init__(stream=None)

    def __call__(self, protocol: str, action: str, details: dict[str, Any]) -> None:
        if not access_logger.isEnabledFor(logging.INFO):
            return  # (LOG_LEVEL=WARNING: formatting each connect's entries would be work for nothing)
        if "path" in details:
            path, query, _ = str(details["path"]).partition("?")
            details = {**details, "path": path + ("?…" if query else "")}
        super().__call__(protocol, action, details)

    def write_entry(
        self,
        host: str,
        date: Any,
        request: str,
        status: int | None = None,
        length: int | None = None,
        ident: str | None = None,
        user: str | None = None,
    ) -> None:
        access_logger.info(
            '%s "%s" %s %s',
            host,
            request,
            status or "-",
            length or "-",
            extra={"client": host, "request": request, "status": status, "bytes": length},
        )


class _Pretty:
    """``pprint.pformat`` of a value, computed only if a log line that holds it is written."""

    def __init__(self, value: object, *args: Any, **kwargs: Any) -> None:
        self.value, self.args, self.kwargs = value, args, kwargs

    def __format__(self, spec: str) -> str:
        return format(pprint.pformat(self.value, *self.args, **self.kwargs), spec)

    def __str__(self) -> str:
        return pprint.pformat(self.value, *self.args, **self.kwargs)


# autobahn pretty-prints some forty settings of every new connection for a
# debug line, whether or not debug logging is on: a twentieth of a connect's CPU.
autobahn.websocket.protocol.pformat = _Pretty  # type: ignore[assignment,attr-defined]


class ReasonWebSocketProtocol(WebSocketProtocol):
    """Daphne's WebSocket protocol, sending the close reason an application gives (daphne drops it)."""

    def handle_reply(self, message: dict[str, Any]) -> None:
        if message.get("type") == "websocket.close" and message.get("reason") and self.state != self.STATE_CONNECTING:
            self.sendClose(code=message.get("code") or 1000, reason=str(message["reason"]))
            return
        super().handle_reply(message)


class GracefulServer(Server):
    """Daphne, closing every WebSocket with 1001 and a reconnect delay before its application is cancelled.

    Stock daphne cancels applications at shutdown and drops the sockets, so
    clients see an abnormal 1006 and cannot tell a restart from a crash.
    ``sendCloseFrame`` is used because autobahn's ``sendClose`` only accepts
    1000 and 3000-4999 from a server.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if isinstance(kwargs.get("action_logger"), AccessLogGenerator):
            kwargs["action_logger"] = AccessLog()
        # Twisted listens with a backlog of 50: a reconnect storm of thousands
        # would have its SYNs dropped and wait out TCP's retransmits (1 s, 3 s, ...).
        kwargs["endpoints"] = [_with_backlog(str(endpoint)) for endpoint in kwargs.get("endpoints") or []]
        super().__init__(*args, **kwargs)
        self.ports: list[Any] = []
        # The connections the application checker has to look at (see there).
        self.settling: set[Any] = set()

    def listen_success(self, port: Any) -> None:
        self.ports.append(port)  # Kept, so that shutdown can stop accepting first.
        eager_writes(port)
        super().listen_success(port)

    def run(self) -> None:
        reactor.callWhenRunning(self._close_frames_on_failure)
        tune_gc()
        super().run()

    def _close_frames_on_failure(self) -> None:
        """Send a close frame when autobahn fails a connection (1009 for an oversized frame).

        autobahn's default, ``failByDrop``, drops the TCP connection instead,
        and the client sees an abnormal 1006. Runs before any connection is
        accepted, so every protocol gets it.

        ``setProtocolOptions`` resets ``allowNullOrigin`` to False unless it
        is passed, and autobahn then refuses ``Origin: null`` itself with
        HTTP 400; daphne's True is kept so that the origin check answers it
        with 403, as it does any other Origin it does not allow.

        After a close frame is sent, the client has ``WS_CLOSE_HANDSHAKE_SECONDS``
        (autobahn: 1) to answer before the connection is dropped: a client still
        reading the frames queued before the close (a flood closed with 4429,
        a long replay) would otherwise lose the close code and see 1006.
        """
        self.ws_factory.setProtocolOptions(
            failByDrop=False,
            allowNullOrigin=self.ws_factory.allowNullOrigin,
            closeHandshakeTimeout=settings.WS_CLOSE_HANDSHAKE_SECONDS,
        )
        self.ws_factory.protocol = ReasonWebSocketProtocol

    # Daphne's periodic loops, per event instead of per socket. Stock daphne
    # walks every connection once a second (the application checker) and
    # every two seconds (the timeout checker): at 10,000 idle sockets that is
    # most of an idle server's CPU.

    def create_application(self, protocol: Any, scope: dict[str, Any]) -> Any:
        queue = super().create_application(protocol, scope)
        instance = self.connections.get(protocol, {}).get("application_instance")
        if instance is not None:
            instance.add_done_callback(lambda _: self.settling.add(protocol))
        return queue

    def protocol_disconnected(self, protocol: Any) -> None:
        super().protocol_disconnected(protocol)
        self.settling.add(protocol)

    def application_checker(self) -> None:
        """Daphne's application checker (as of 4.2.3), for the connections that need it.

        Only a connection that disconnected or whose application ended has
        anything to check: an application to cancel after its close timeout,
        one to reap (logging its exception), a connection to forget.
        """
        for protocol in list(self.settling):
            details = self.connections.get(protocol)
            if details is None:
                self.settling.discard(protocol)
                continue
            disconnected = details.get("disconnected")
            instance = details.get("application_instance")
            if disconnected and time.time() - disconnected > self.application_close_timeout:
                if instance is not None and not instance.done():
                    logger.warning(
                        "Application instance %r for connection %r took too long to shut down and was killed.",
                        instance,
                        protocol,
                    )
                    instance.cancel()
            if instance is not None and instance.done():
                if not instance.cancelled() and (exception := instance.exception()) is not None:
                    if isinstance(exception, KeyboardInterrupt):
                        self.stop()
                    else:
                        logger.error("Exception inside application: %s", exception, exc_info=exception)
                        if not disconnected:
                            protocol.handle_exception(exception)
                del details["application_instance"]
                instance = None
            if instance is None and disconnected:
                del self.connections[protocol]
                self.settling.discard(protocol)
        reactor.callLater(1, self.application_checker)  # type: ignore[arg-type]

    def timeout_checker(self) -> None:
        """Daphne's timeout checker (handshake and HTTP timeouts, WebSocket pings), every few seconds, not two."""
        for protocol in list(self.connections):
            protocol.check_timeouts()
        reactor.callLater(settings.SERVER_TIMEOUT_CHECK_SECONDS, self.timeout_checker)  # type: ignore[arg-type]

    def kill_all_applications(self) -> defer.Deferred[Any]:
        """Run the shutdown hooks and close WebSockets with 1001, then cancel what is left.

        Both are waited for (each bounded): once this returns, Twisted drops
        every connection without flushing, so a close frame still in a buffer
        would be lost, and the hooks (cancelling agent runs, which record
        their end) must finish before the process exits.
        """
        # Accept no new connections first (the ports are closed before any
        # 1001 goes out): a client reconnecting after its 1001 must reach
        # another server, not this one on its way out.
        stopped = defer.gatherResults(
            [defer.maybeDeferred(port.stopListening) for port in self.ports], consumeErrors=True
        )
        stopped.addBoth(lambda _: self._close_and_cancel())
        return stopped

    def _close_and_cancel(self) -> defer.Deferred[Any]:
        hooks = defer.Deferred.fromFuture(asyncio.ensure_future(_run_shutdown_hooks()))
        both = defer.gatherResults([hooks, self._close_websockets()], consumeErrors=True)
        both.addBoth(lambda _: self._cancel_applications())
        return both

    def _close_websockets(self) -> defer.Deferred[None]:
        """Send 1001 to every open WebSocket and wait, bounded, for the closing handshakes.

        Each close tells its client when to come back (docs/protocol.md): a
        random delay spread over as many seconds as the servers need to admit
        them all again, so a restart is not followed by a storm.
        """
        closing = [
            protocol
            for protocol in self.connections
            if isinstance(protocol, WebSocketProtocol) and protocol.state == WebSocketProtocol.STATE_OPEN
        ]
        spread_seconds = reconnect_spread_seconds(len(closing))
        for protocol in closing:
            delay = random.uniform(0, spread_seconds)  # noqa: S311 (spreading load, not a secret)
            protocol.sendCloseFrame(code=CLOSE_GOING_AWAY, reasonUtf8=retry_reason(delay).encode())
        deadline = time.monotonic() + settings.SHUTDOWN_CLOSE_GRACE_SECONDS
        done: defer.Deferred[None] = defer.Deferred()

        def check() -> None:
            if time.monotonic() > deadline or all(p.state == WebSocketProtocol.STATE_CLOSED for p in closing):
                done.callback(None)
            else:
                reactor.callLater(CLOSE_POLL_SECONDS, check)  # type: ignore[arg-type]

        check()
        return done

    def _cancel_applications(self) -> defer.Deferred[Any]:
        """Cancel every application still running and wait for them (daphne's own logic).

        Unlike daphne's version, a connection whose application already
        finished (and was cleared by the checker) is skipped, not a KeyError.
        """
        running = [
            instance
            for details in self.connections.values()
            if (instance := details.get("application_instance")) is not None and not instance.done()
        ]
        for instance in running:
            instance.cancel()
        logger.info("Cancelled %i application instance(s) at shutdown", len(running))
        waiting = defer.Deferred.fromFuture(asyncio.gather(*running, return_exceptions=True))
        waiting.addErrback(lambda failure: logger.warning("Application cancellation failed: %s", failure))
        return waiting


def tune_gc() -> None:
    """Freeze what is loaded so far out of garbage collection, and collect young objects less often.

    Run once the application is loaded, before serving. Full collections walk
    every object a process holds; at thousands of connections, with Python's
    default thresholds, a connect storm set off one every second or two and
    spent about half its CPU in them. Frozen objects (Django, the URLconf,
    the modules) are never walked again; a larger first threshold lets a
    handshake's short-lived objects die young instead of being promoted.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*settings.SERVER_GC_THRESHOLDS)


def reconnect_spread_seconds(clients: int) -> float:
    """Over how many seconds the clients of a stopping server are told to come back."""
    rate: float = settings.WS_RECONNECT_RATE_PER_SECOND
    longest: float = settings.WS_RECONNECT_SPREAD_MAX_SECONDS
    return min(longest, max(1.0, clients / rate))


def _with_backlog(endpoint: str) -> str:
    if endpoint.startswith(("tcp:", "tcp6:", "ssl:", "unix:")) and "backlog=" not in endpoint:
        return f"{endpoint}:backlog={settings.SERVER_LISTEN_BACKLOG}"
    return endpoint


async def _run_shutdown_hooks() -> None:
    """Await each of settings.SHUTDOWN_HOOKS; one failing does not stop the others."""
    for path in settings.SHUTDOWN_HOOKS:
        try:
            await asyncio.wait_for(import_string(path)(), timeout=SHUTDOWN_HOOK_TIMEOUT_SECONDS)
        except Exception:  # Shutdown goes on; the failure is logged.
            logger.exception("Shutdown hook %s failed", path)


class ServiceCommandLineInterface(CommandLineInterface):
    server_class = GracefulServer


def default_arguments() -> list[str]:
    """Daphne options that the protocol depends on, from settings."""
    return [
        # An incoming frame over the limit is refused with close 1009. The
        # message limit also caps what the server sends, so it is kept above
        # the largest event frame; the consumer refuses longer client messages.
        f"--websocket-max-frame-size={settings.WS_MAX_MESSAGE_BYTES}",
        f"--websocket-max-message-size={settings.WS_MAX_SERVER_FRAME_BYTES}",
        # Daphne closes every WebSocket after a day by default; ours live until
        # the client, the token or the server ends them.
        "--websocket_timeout=-1",
        # WebSocket pings find dead peers; the heartbeat keeps proxies and clients
        # satisfied, so they need not come every 20 s (daphne's default).
        f"--ping-interval={settings.WS_PING_SECONDS}",
    ]


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    args = list(sys.argv[1:] if argv is None else argv)
    if not any(not arg.startswith("-") and ":" in arg for arg in args):
        args.append("config.asgi:application")
    ServiceCommandLineInterface().run(default_arguments() + args)


if __name__ == "__main__":
    main()
