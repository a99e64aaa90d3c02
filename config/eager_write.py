"""Accepted TCP connections that send at once when nothing is waiting to be sent.

Twisted's ``write`` only buffers: the socket is registered for writability,
sent to on the next turn of the loop, and unregistered, which is two
``epoll_ctl`` calls and a loop turn per write. A server streaming events
writes once per event per connection, and those calls were an eighth of its
time under load (bench/RESULTS.md). Here a write to a connection with
nothing buffered goes to the socket at once; what the socket does not take
is buffered as before, and anything written after it queues behind it, so
the bytes leave in order. TLS connections, and connections that are
closing, keep Twisted's path.
"""

from typing import Any

from twisted.internet import tcp


class EagerServer(tcp.Server):
    """``tcp.Server`` whose writes go straight to the socket while its buffer is empty."""

    def write(self, data: bytes) -> None:
        if data and self._nothing_waiting():
            sent = self.writeSomeData(data)
            if isinstance(sent, int):
                if sent == len(data):
                    return
                data = data[sent:]
            # A lost connection: buffered as Twisted would, whose next write attempt finds it lost.
        super().write(data)  # type: ignore[no-untyped-call]  # (Twisted leaves it unannotated)

    def _nothing_waiting(self) -> bool:
        return bool(
            self.connected
            and not self.TLS
            and not self.disconnecting
            and not self._writeDisconnecting
            and not self._writeDisconnected
            and not self._tempDataBuffer
            and self.offset == len(self.dataBuffer)
        )


def eager_writes(port: Any) -> None:
    """Make the connections a listening TCP port accepts from now on ``EagerServer``s (other ports: unchanged)."""
    if isinstance(port, tcp.Port) and port.transport is tcp.Server:
        port.transport = EagerServer
