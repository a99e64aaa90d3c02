"""A token bucket for per-connection message rate limits."""

import time
from collections.abc import Callable


class TokenBucket:
    """Allow ``burst`` messages at once, refilled at ``rate_per_second``."""

    def __init__(self, *, rate_per_second: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate_per_second = rate_per_second
        self.burst = burst
        self.clock = clock
        self.tokens = float(burst)
        self.updated = clock()

    def take(self) -> bool:
        """Spend one token; return False when none is left."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate_per_second)
        self.updated = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True
