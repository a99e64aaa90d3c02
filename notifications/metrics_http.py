"""Serve the metrics at ``/metrics``: who may scrape, the server's ASGI route, the drainer's exporter.

Each process is scraped on its own, rather than through prometheus-client's
multiprocess mode: every process here is a single OS process that lives as
long as its container (daphne, ``drain_events``), Prometheus labels each
target with its ``instance``, and multiprocess mode would turn every
increment into a write to a memory-mapped file, need a shared directory
cleaned at each start, and drop gauges and custom collectors.

A scrape is answered when it carries ``Authorization: Bearer <METRICS_TOKEN>``
(compared in constant time), comes from one of ``METRICS_ALLOWED_NETWORKS``,
or, with debug on, comes from the loopback address.
"""

import asyncio
import hmac
import ipaddress
import logging
import threading
from collections.abc import Awaitable, Callable, Iterable
from functools import cache
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, REGISTRY, generate_latest

from .metrics import PENDING_REGISTRY, enabled

logger = logging.getLogger(__name__)

METRICS_PATH = "/metrics"
EXPOSITION_TIMEOUT_SECONDS = 5.0
EXPORTER_STOP_TIMEOUT_SECONDS = 2.0

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
AsgiApp = Callable[[Scope, Any, Any], Awaitable[None]]


@cache
def allowed_networks(raw: tuple[str, ...]) -> tuple[Network, ...]:
    """Parse ``METRICS_ALLOWED_NETWORKS`` (CIDRs or addresses); raise ``ImproperlyConfigured`` on a bad one."""
    try:
        return tuple(ipaddress.ip_network(item, strict=False) for item in raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"METRICS_ALLOWED_NETWORKS: {exc}") from None


def scrape_allowed(*, authorization: str | None, client_host: str | None) -> bool:
    """Whether a scrape with this ``Authorization`` header, from this address, may read the metrics."""
    token: str = settings.METRICS_TOKEN
    if token and authorization is not None:
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
            return True
    try:
        address = ipaddress.ip_address(client_host or "")
    except ValueError:
        return False
    if settings.DEBUG and address.is_loopback:
        return True
    return any(address in network for network in allowed_networks(tuple(settings.METRICS_ALLOWED_NETWORKS)))


def exposition() -> bytes:
    """Every metric of this process in the Prometheus text format, with the pending events read now."""
    return generate_latest(REGISTRY) + generate_latest(PENDING_REGISTRY)


def with_metrics(app: AsgiApp) -> AsgiApp:
    """Answer ``GET /metrics`` before ``app`` (Django) sees it.

    Outside Django, so a scraper reaching a server by its address needs no
    ``ALLOWED_HOSTS`` entry and is not redirected to HTTPS, and a scrape
    costs no middleware. A bad ``METRICS_ALLOWED_NETWORKS`` fails here, at start.
    """
    allowed_networks(tuple(settings.METRICS_ALLOWED_NETWORKS))

    async def route(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == METRICS_PATH:
            await metrics_asgi(scope, receive, send)
        else:
            await app(scope, receive, send)

    return route


async def metrics_asgi(scope: Scope, receive: Receive, send: Send) -> None:
    headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope.get("headers", [])}
    client = scope.get("client")
    status, extra, body = _answer(
        method=scope["method"],
        authorization=headers.get("authorization"),
        client_host=client[0] if client else None,
        render=None,
    )
    if status == 200:
        # The pending query waits in a thread (bounded), never on the event loop.
        body = await asyncio.wait_for(asyncio.to_thread(exposition), timeout=EXPOSITION_TIMEOUT_SECONDS)
    await send({"type": "http.response.start", "status": status, "headers": _headers(extra, len(body))})
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


def _answer(
    *, method: str, authorization: str | None, client_host: str | None, render: Callable[[], bytes] | None
) -> tuple[int, list[tuple[str, str]], bytes]:
    """The status, headers and body of a scrape (the body left empty for 200 when ``render`` is None)."""
    if not enabled():
        return 404, [("content-type", "text/plain")], b"Metrics are off (METRICS_ENABLED).\n"
    if method not in {"GET", "HEAD"}:
        return 405, [("content-type", "text/plain"), ("allow", "GET, HEAD")], b"GET only.\n"
    if not scrape_allowed(authorization=authorization, client_host=client_host):
        logger.info("Metrics scrape refused from %s", client_host)
        challenge = [("www-authenticate", 'Bearer realm="metrics"'), ("content-type", "text/plain")]
        return 401, challenge, b"A bearer token (METRICS_TOKEN) or an allowed network is needed.\n"
    return 200, [("content-type", CONTENT_TYPE_PLAIN_0_0_4)], b"" if render is None else render()


def _headers(extra: list[tuple[str, str]], length: int) -> list[tuple[bytes, bytes]]:
    pairs = [*extra, ("content-length", str(length)), ("cache-control", "no-store")]
    return [(key.encode(), value.encode()) for key, value in pairs]


def _wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    status, headers, body = _answer(
        method=environ.get("REQUEST_METHOD", "GET"),
        authorization=environ.get("HTTP_AUTHORIZATION"),
        client_host=environ.get("REMOTE_ADDR"),
        render=exposition,
    )
    if environ.get("PATH_INFO") != METRICS_PATH:
        status, headers, body = 404, [("content-type", "text/plain")], b"Not found; the metrics are at /metrics.\n"
    start_response(f"{status} {_REASONS[status]}", [*headers, ("Content-Length", str(len(body)))])
    return [b"" if environ.get("REQUEST_METHOD") == "HEAD" else body]


_REASONS = {200: "OK", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed"}


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("metrics exporter: " + format, *args)


class Exporter:
    """``/metrics`` on a port of its own, for a process that serves no HTTP (``drain_events``)."""

    def __init__(self, *, address: str, port: int) -> None:
        self.server = make_server(address, port, _wsgi, server_class=_Server, handler_class=_QuietHandler)
        self.port: int = self.server.server_port
        self.thread = threading.Thread(target=self.server.serve_forever, name="metrics-exporter", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=EXPORTER_STOP_TIMEOUT_SECONDS)
        if self.thread.is_alive():
            logger.error("The metrics exporter did not stop within %ss", EXPORTER_STOP_TIMEOUT_SECONDS)
