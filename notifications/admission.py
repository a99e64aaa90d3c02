"""Admission of new WebSocket connections: at most so many handshakes in progress per process.

A connection is in progress from its accept until its ``hello`` (or its
refusal): the token check, the group join and the read of its user. When
``WS_CONNECT_MAX_PENDING`` are in progress the server is admitting as fast as
it can, and the next one is closed at once with 4503 and a retry delay
instead of queueing behind them: a connect storm is admitted at the rate
the process serves, and the rest come back spread over the next seconds.
"""

import json
import random

from django.conf import settings


class Admission:
    """Count the handshakes in progress in this process."""

    def __init__(self) -> None:
        self.pending = 0

    def enter(self) -> bool:
        """Start a handshake, or return False (and start nothing) when too many are in progress."""
        if self.pending >= settings.WS_CONNECT_MAX_PENDING:
            return False
        self.pending += 1
        return True

    def leave(self) -> None:
        self.pending -= 1


admission = Admission()


def retry_after_seconds() -> float:
    """A delay for a refused client: spread between half and one and a half ``WS_CONNECT_RETRY_SECONDS``."""
    base: float = settings.WS_CONNECT_RETRY_SECONDS
    return round(base * random.uniform(0.5, 1.5), 3)  # noqa: S311 (spreading load, not a secret)


def retry_reason(seconds: float) -> str:
    """The close reason that tells a client when to come back (docs/protocol.md, close codes)."""
    return json.dumps({"retry_after": round(seconds, 3)}, separators=(",", ":"))
