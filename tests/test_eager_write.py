"""Eager writes: sent at once while nothing is buffered, buffered in order behind anything that is."""

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet import tcp
from twisted.internet.protocol import Protocol

from config.eager_write import EagerServer, eager_writes


class Reactor:
    """The four calls a connection makes on its reactor, recorded."""

    def __init__(self) -> None:
        self.writers: set[Any] = set()
        self.writes_registered = 0

    def addReader(self, reader: Any) -> None:  # Twisted's names.
        pass

    def removeReader(self, reader: Any) -> None:
        pass

    def addWriter(self, writer: Any) -> None:
        self.writers.add(writer)
        self.writes_registered += 1

    def removeWriter(self, writer: Any) -> None:
        self.writers.discard(writer)


@pytest.fixture
def pair() -> Iterator[tuple[EagerServer, socket.socket, Reactor]]:
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    reactor = Reactor()
    server = EagerServer(ours, Protocol(), ("127.0.0.1", 1), None, 1, reactor)  # type: ignore[arg-type]
    yield server, peer, reactor
    ours.close()
    peer.close()


def received(peer: socket.socket, size: int) -> bytes:
    peer.settimeout(5)
    chunks = b""
    while len(chunks) < size:
        chunks += peer.recv(size - len(chunks))
    return chunks


def test_a_write_with_nothing_buffered_goes_to_the_socket_at_once(
    pair: tuple[EagerServer, socket.socket, Reactor],
) -> None:
    server, peer, reactor = pair
    server.write(b"frame one")
    server.write(b"frame two")
    assert reactor.writes_registered == 0  # No loop turn, no registration for writability.
    assert received(peer, 18) == b"frame oneframe two"


def test_what_the_socket_does_not_take_is_buffered_and_later_writes_queue_behind_it(
    pair: tuple[EagerServer, socket.socket, Reactor],
) -> None:
    server, peer, reactor = pair
    big = bytes(range(256)) * 4096  # 1 MiB: far beyond the socket's buffers.
    server.write(big)
    assert server in reactor.writers  # The rest waits for writability, as Twisted does it.
    server.write(b"tail")  # Must not overtake what is buffered.
    assert server in reactor.writers
    got = b""
    while server in reactor.writers:
        got += peer.recv(65536)
        server.doWrite()
    got += received(peer, len(big) + 4 - len(got))
    assert got == big + b"tail"
    registered = reactor.writes_registered
    server.write(b"again")  # Buffer empty again: straight out.
    assert reactor.writes_registered == registered and server not in reactor.writers
    assert received(peer, 5) == b"again"


def test_a_closing_connection_keeps_twisteds_path(pair: tuple[EagerServer, socket.socket, Reactor]) -> None:
    server, _, reactor = pair
    server.disconnecting = True
    server.write(b"last words")
    assert server in reactor.writers


def test_only_plain_tcp_ports_are_changed() -> None:
    port = tcp.Port(0, None)  # type: ignore[arg-type]
    eager_writes(port)
    assert port.transport is EagerServer
    other = object()
    eager_writes(other)  # A unix socket's port, say: left as it is.
    assert not hasattr(other, "transport")
