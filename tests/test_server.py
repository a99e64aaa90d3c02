"""config/server.py: daphne's application checker, per event instead of per socket, keeps daphne's rules."""

import asyncio
import gc
import logging
import time
from typing import Any

import pytest

from config import server as server_module
from config.server import GracefulServer, reconnect_spread_seconds
from tests.servers import DaphneServer
from tests.wsclient import access_token, ws_connect


class Protocol:
    def __init__(self) -> None:
        self.exceptions: list[BaseException] = []

    def handle_exception(self, exception: BaseException) -> None:
        self.exceptions.append(exception)


class Reactor:
    def __init__(self) -> None:
        self.later: list[tuple[float, Any]] = []

    def callLater(self, delay: float, call: Any) -> None:
        self.later.append((delay, call))


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> GracefulServer:
    monkeypatch.setattr(server_module, "reactor", Reactor())
    server = GracefulServer(application=None, endpoints=["tcp:port=0:interface=127.0.0.1"])
    server.connections = {}  # (what daphne's run() starts with)
    return server


def connect(server: GracefulServer, outcome: "asyncio.Future[None]") -> Protocol:
    """A connection whose application (made by the server, as daphne does) ends as ``outcome`` does."""
    protocol = Protocol()
    server.protocol_connected(protocol)

    async def application(scope: Any, receive: Any, send: Any) -> None:
        await outcome

    server.application = application
    server.create_application(protocol, {"type": "websocket"})
    return protocol


async def test_a_live_connection_is_not_looked_at_and_a_finished_one_is_forgotten(server: GracefulServer) -> None:
    loop = asyncio.get_running_loop()
    live = connect(server, loop.create_future())
    done_future: asyncio.Future[None] = loop.create_future()
    gone = connect(server, done_future)
    done_future.set_result(None)
    await asyncio.sleep(0.01)
    server.protocol_disconnected(gone)
    assert server.settling == {gone}
    server.application_checker()
    assert list(server.connections) == [live]
    assert server.settling == set()
    running = server.connections[live]["application_instance"]
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)


async def test_an_application_that_failed_is_logged_and_its_connection_told(
    server: GracefulServer, caplog: pytest.LogCaptureFixture
) -> None:
    failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    protocol = connect(server, failed)
    failed.set_exception(ValueError("boom"))
    await asyncio.sleep(0.01)
    with caplog.at_level(logging.ERROR):
        server.application_checker()
    assert [type(exc) for exc in protocol.exceptions] == [ValueError]
    assert "Exception inside application: boom" in caplog.text
    # Still connected: it stays known until it disconnects, then goes.
    assert protocol in server.connections
    server.protocol_disconnected(protocol)
    server.application_checker()
    assert protocol not in server.connections


async def test_an_application_that_outlives_its_close_timeout_is_cancelled(server: GracefulServer) -> None:
    running: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    protocol = connect(server, running)
    server.protocol_disconnected(protocol)
    server.connections[protocol]["disconnected"] = time.time() - server.application_close_timeout - 1
    server.application_checker()
    await asyncio.sleep(0.01)
    assert server.connections[protocol]["application_instance"].cancelled()


def test_a_stopping_server_spreads_its_clients_over_what_the_servers_admit(settings: Any) -> None:
    settings.WS_RECONNECT_RATE_PER_SECOND = 1000
    settings.WS_RECONNECT_SPREAD_MAX_SECONDS = 30
    assert reconnect_spread_seconds(10) == 1.0  # at least a second
    assert reconnect_spread_seconds(10_000) == 10.0
    assert reconnect_spread_seconds(1_000_000) == 30.0


@pytest.fixture
def gc_restored() -> Any:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("gc_restored")
def test_tune_gc_freezes_what_is_loaded_and_sets_the_thresholds(settings: Any) -> None:
    settings.SERVER_GC_THRESHOLDS = (12_345, 6, 7)
    loaded = [object()]
    assert any(o is loaded for o in gc.get_objects())
    server_module.tune_gc()
    assert gc.get_threshold() == (12_345, 6, 7)
    assert gc.get_freeze_count() > 1000  # the modules and Django, not walked by any collection again
    assert not any(o is loaded for o in gc.get_objects())  # frozen: in no generation a collection walks


async def test_permessage_deflate_is_never_negotiated(daphne: DaphneServer, alice: Any) -> None:
    """The test client offers permessage-deflate (the websockets default); the server declines it."""
    async with ws_connect(daphne.ws_url, access_token(alice)) as client:
        assert client.ws.request is not None and client.ws.response is not None
        assert "permessage-deflate" in client.ws.request.headers["Sec-WebSocket-Extensions"]
        assert "Sec-WebSocket-Extensions" not in client.ws.response.headers
        assert client.ws.protocol.extensions == []
        await client.send({"type": "ping"})
        assert await client.recv() == {"type": "pong"}


def test_websocket_options_keep_null_origins_to_the_origin_check_and_give_closes_time(settings: Any) -> None:
    from autobahn.twisted.websocket import WebSocketServerFactory

    settings.WS_CLOSE_HANDSHAKE_SECONDS = 7.5
    server = GracefulServer(application=None, endpoints=["tcp:port=0:interface=127.0.0.1"])
    server.ws_factory = WebSocketServerFactory()
    server.ws_factory.setProtocolOptions(allowNullOrigin=True)  # as daphne's run() sets it
    server._close_frames_on_failure()
    factory = server.ws_factory
    assert (factory.failByDrop, factory.allowNullOrigin, factory.closeHandshakeTimeout) == (False, True, 7.5)
    assert factory.protocol is server_module.ReasonWebSocketProtocol
