"""Lending pooled connections without a round trip to the server for each loan.

psycopg_pool's ``check_connection`` (what Django's ``CONN_HEALTH_CHECKS``
installs) asks the server before every loan: a round trip per transaction,
per heartbeat read, per batch of events. A connection lent moments ago was
working then, and one that broke while in use does not come back to the
pool (psycopg marks it bad and the pool discards it), so only connections
idle for longer than ``DB_POOL_CHECK_IDLE_SECONDS`` are checked.
"""

import time
from typing import Any

from django.conf import settings
from psycopg_pool import ConnectionPool


def check_unless_just_lent(connection: Any) -> None:
    """The pool's ``check``: psycopg_pool's own, unless this connection was lent within the idle limit."""
    now = time.monotonic()
    lent_at: float | None = getattr(connection, "_events_lent_at", None)
    connection._events_lent_at = now
    if lent_at is not None and now - lent_at < settings.DB_POOL_CHECK_IDLE_SECONDS:
        return
    ConnectionPool.check_connection(connection)
