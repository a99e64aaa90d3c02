"""Admission of new WebSocket connections: a process takes on the handshakes it can finish soon.

A connection is in progress from its accept until its ``hello`` (or its
refusal): the token check, the group join and the read of its user. A new
one is closed at once with 4503 and a retry delay instead of queueing when
the process is behind: its oldest handshake in progress has waited
``WS_CONNECT_MAX_WAIT_SECONDS``, or ``WS_CONNECT_MAX_PENDING`` are in
progress (a cap on what a burst can pile up). Refusing costs a handshake
too, so the process refuses only when it is truly behind: a storm it can
get through in a few seconds is taken in whole (measured in
bench/RESULTS.md: refusing early made a 10,000-client restart slower).

The retry delays are appointments: each refused client is given the next
free slot of a schedule that admits ``WS_RECONNECT_RATE_PER_SECOND`` clients
a second, after a base delay of about ``WS_CONNECT_RETRY_SECONDS``. The
refused of a large storm come back spread over as many seconds as the
process needs to admit them, not all at once to be refused again.
"""

import json
import random
import time
from collections import deque
from itertools import count

from django.conf import settings


class Admission:
    """The handshakes in progress in this process, and the retry appointments handed out."""

    def __init__(self) -> None:
        self.pending = 0
        self.booked_until = 0.0  # (monotonic) the latest appointment given
        self._tickets = count(1)
        self._started: deque[tuple[float, int]] = deque()  # (monotonic start, ticket), oldest first
        self._left: set[int] = set()  # tickets that left but are not yet popped from _started

    def enter(self) -> int | None:
        """Start a handshake and return its ticket for ``leave``, or None (and start nothing) when behind."""
        now = time.monotonic()
        behind = now - self._oldest(now) >= settings.WS_CONNECT_MAX_WAIT_SECONDS
        if behind or self.pending >= settings.WS_CONNECT_MAX_PENDING:
            return None
        ticket = next(self._tickets)
        self._started.append((now, ticket))
        self.pending += 1
        return ticket

    def leave(self, ticket: int) -> None:
        self.pending -= 1
        self._left.add(ticket)
        self._drop_left()

    def waited_seconds(self) -> float:
        """How long the oldest handshake in progress has waited (0 with none)."""
        now = time.monotonic()
        return now - self._oldest(now)

    def _oldest(self, now: float) -> float:
        return self._started[0][0] if self._started else now

    def _drop_left(self) -> None:
        while self._started and self._started[0][1] in self._left:
            self._left.discard(self._started.popleft()[1])

    def appointment_seconds(self) -> float:
        """The delay after which a client refused now should come back: the next free slot.

        The first client refused after a quiet spell gets the base delay; each
        next one, a slot ``1 / WS_RECONNECT_RATE_PER_SECOND`` later, up to
        ``WS_RECONNECT_SPREAD_MAX_SECONDS`` (a storm beyond that is spread
        over that long, and some of it refused twice).
        """
        now = time.monotonic()
        earliest = now + retry_after_seconds()
        slot = max(earliest, self.booked_until + 1 / settings.WS_RECONNECT_RATE_PER_SECOND)
        slot = min(slot, now + settings.WS_RECONNECT_SPREAD_MAX_SECONDS)
        self.booked_until = max(self.booked_until, slot)
        return round(slot - now, 3)


admission = Admission()


def retry_after_seconds() -> float:
    """A delay for a refused client: spread between half and one and a half ``WS_CONNECT_RETRY_SECONDS``."""
    base: float = settings.WS_CONNECT_RETRY_SECONDS
    return round(base * random.uniform(0.5, 1.5), 3)  # noqa: S311 (spreading load, not a secret)


def retry_reason(seconds: float) -> str:
    """The close reason that tells a client when to come back (docs/protocol.md, close codes)."""
    return json.dumps({"retry_after": round(seconds, 3)}, separators=(",", ":"))
