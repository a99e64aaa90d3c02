"""Run daphne with this service's WebSocket limits and a graceful close on shutdown.

Usage: ``python -m config.server [daphne options] [config.asgi:application]``.
Any daphne option given on the command line overrides the defaults below.
"""

import os
import sys
from typing import Any

from daphne.cli import CommandLineInterface
from daphne.server import Server
from daphne.ws_protocol import WebSocketProtocol
from twisted.internet import reactor

CLOSE_GOING_AWAY = 1001


class GracefulServer(Server):
    """Daphne, closing every WebSocket with 1001 before its application is cancelled.

    Stock daphne cancels applications at shutdown and drops the sockets, so
    clients see an abnormal 1006 and cannot tell a restart from a crash.
    ``sendCloseFrame`` is used because autobahn's ``sendClose`` only accepts
    1000 and 3000-4999 from a server.
    """

    def run(self) -> None:
        reactor.callWhenRunning(self._close_frames_on_failure)  # type: ignore[attr-defined]
        super().run()

    def _close_frames_on_failure(self) -> None:
        """Send a close frame when autobahn fails a connection (1009 for an oversized frame).

        autobahn's default, ``failByDrop``, drops the TCP connection instead,
        and the client sees an abnormal 1006. Runs before any connection is
        accepted, so every protocol gets it.
        """
        self.ws_factory.setProtocolOptions(failByDrop=False)

    def kill_all_applications(self) -> Any:
        for protocol in list(self.connections):
            if isinstance(protocol, WebSocketProtocol) and protocol.state == WebSocketProtocol.STATE_OPEN:
                protocol.sendCloseFrame(code=CLOSE_GOING_AWAY)
        return super().kill_all_applications()


class ServiceCommandLineInterface(CommandLineInterface):
    server_class = GracefulServer


def default_arguments() -> list[str]:
    """Daphne options that the protocol depends on, from settings."""
    from django.conf import settings

    return [
        # An incoming frame over the limit is refused with close 1009. The
        # message limit also caps what the server sends, so it is kept above
        # the largest event frame; the consumer refuses longer client messages.
        f"--websocket-max-frame-size={settings.WS_MAX_MESSAGE_BYTES}",
        f"--websocket-max-message-size={settings.WS_MAX_SERVER_FRAME_BYTES}",
        # Daphne closes every WebSocket after a day by default; ours live until
        # the client, the token or the server ends them.
        "--websocket_timeout=-1",
    ]


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    args = list(sys.argv[1:] if argv is None else argv)
    if not any(not arg.startswith("-") and ":" in arg for arg in args):
        args.append("config.asgi:application")
    ServiceCommandLineInterface().run(default_arguments() + args)


if __name__ == "__main__":
    main()
