"""Django's PostgreSQL backend, with a fast and honest answer while the database is down.

Without it every caller waits out the connection pool (``DB_POOL_TIMEOUT_SECONDS``)
during an outage, and the WebSocket consumers, whose ORM calls share one
thread, queue behind one another for that long each. Here the first failed
connection marks the database down for the whole process: from then on a
connection is refused at once, except for one probe every
``DB_OUTAGE_PROBE_SECONDS``, a direct connection outside the pool. When a
probe gets through, the pool drops the connections the outage broke and
callers go through again.
"""

import logging
import threading
import time
from typing import Any

import psycopg
from django.conf import settings
from django.db.backends.postgresql import base
from psycopg_pool import ConnectionPool

from .pool import check_unless_just_lent

logger = logging.getLogger(__name__)

PROBE_CONNECT_TIMEOUT_SECONDS = 2  # libpq's minimum.


class DatabaseUnavailable(psycopg.OperationalError):
    """Refused without trying: the database was unreachable moments ago (Django raises it as OperationalError)."""


class Outage:
    """This process's view of whether the database can be reached, shared by every thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.down_since: float | None = None
        self._next_probe_at = 0.0

    def admit(self, *, probe_seconds: float) -> bool:
        """Let a connection attempt go ahead; True if it is the probe of a database that is down.

        Raises ``DatabaseUnavailable`` at once while the database is down and
        the next probe is not due yet (or another caller is making it).
        """
        if self.down_since is None:
            return False
        with self._lock:
            if self.down_since is None:
                return False
            now = time.monotonic()
            if now < self._next_probe_at:
                raise DatabaseUnavailable(
                    f"The database has been unreachable for {now - self.down_since:.1f} s; "
                    f"the next attempt is in {self._next_probe_at - now:.1f} s."
                )
            self._next_probe_at = now + probe_seconds
            return True

    def failed(self, *, probe_seconds: float, error: BaseException) -> None:
        """Record that the database could not be reached; the next probe is ``probe_seconds`` away."""
        with self._lock:
            now = time.monotonic()
            if self.down_since is None:
                self.down_since = now
                logger.warning("The database is unreachable (%s); failing fast until a probe gets through", error)
            self._next_probe_at = now + probe_seconds

    def recovered(self) -> None:
        """Record that a connection got through."""
        if self.down_since is None:
            return
        with self._lock:
            if self.down_since is not None:
                logger.warning("The database is reachable again after %.1f s", time.monotonic() - self.down_since)
                self.down_since = None


outage = Outage()


class DatabaseWrapper(base.DatabaseWrapper):
    @property
    def pool(self) -> Any:
        """Django's pool, checking a connection before a loan only if it sat idle (``pool.py``)."""
        pool = super().pool
        # Django gives psycopg_pool its stock check for CONN_HEALTH_CHECKS; this is that check, made cheap.
        if pool is not None and pool._check is ConnectionPool.check_connection:
            pool._check = check_unless_just_lent
        return pool

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        probe_seconds: float = settings.DB_OUTAGE_PROBE_SECONDS
        probing = outage.admit(probe_seconds=probe_seconds)
        if probing and self.pool is not None:
            # The pool's own reconnection backs off, and its idle connections
            # died with the server: try the server directly, then clear them out.
            error = self._unreachable(conn_params)
            if error is not None:
                outage.failed(probe_seconds=probe_seconds, error=error)
                raise DatabaseUnavailable(f"The database is unreachable: {error}") from error
            outage.recovered()
            self.pool.check()
        try:
            connection = super().get_new_connection(conn_params)
        except psycopg.Error as exc:
            # Without a pool the attempt itself says whether the server is
            # there; a pool that timed out may only be busy, so ask the server.
            if self.pool is None or self._unreachable(conn_params) is not None:
                outage.failed(probe_seconds=probe_seconds, error=exc)
            raise
        outage.recovered()
        return connection

    def _unreachable(self, conn_params: dict[str, Any]) -> psycopg.Error | None:
        """Connect outside the pool; return why that failed, or None if the server answered."""
        params = {**conn_params, "connect_timeout": PROBE_CONNECT_TIMEOUT_SECONDS}
        try:
            self.Database.connect(**params).close()
        except psycopg.Error as exc:
            return exc
        return None
