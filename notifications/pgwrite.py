"""The group writer's path on PostgreSQL: psycopg's async connections on the event loop, two round trips a batch.

Measured before it (bench/RESULTS.md): through the ORM, a batch made six
round trips from a thread of the pool, and each reply waited for the GIL,
which the event loop holds while it works. At 500 events/s a batch of one
event spent 4.4 ms (p50) in its thread for statements that take 0.4 ms on
an idle connection, and its published mark, another hop, 2 ms. Here, with
no thread:

- the loop's own connections (at most ``CONNECTIONS_PER_LOOP``, one per
  batch in flight), made on first use and reused;
- a batch is one pipelined round trip (lock the users' stream rows in user
  order, then one ``INSERT … SELECT`` that advances the streams and gives
  each row its seq in SQL) and a second for the ``COMMIT``;
- statements are prepared on their fifth use (``DB_PREPARED_STATEMENTS``).

Errors come out as Django's (``django.db.OperationalError`` and the rest),
as from the ORM. While the database is down, connecting fails at once
except for one probe per ``DB_OUTAGE_PROBE_SECONDS``, with the same
process-wide view of the outage as the ORM's connections
(config/postgresql/base.py).
"""

import asyncio
import json
import logging
import uuid
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from django.conf import settings
from django.db import connections, utils
from psycopg import pq

from config.postgresql.base import outage

from .groupcommit import BATCHES_IN_FLIGHT, EventFields
from .models import Event, Stream

logger = logging.getLogger(__name__)

CONNECTIONS_PER_LOOP = BATCHES_IN_FLIGHT
# Beyond the server's statement timeout, how long a batch may wait on a connection that stopped answering.
NETWORK_GRACE_SECONDS = 2.0

_EVENTS = Event._meta.db_table
_STREAMS = Stream._meta.db_table

# Locks the users' stream rows in user order, so that batches sharing users queue instead of deadlocking.
_LOCK = f'SELECT user_id FROM "{_STREAMS}" WHERE user_id = ANY(%s) ORDER BY user_id FOR UPDATE'  # noqa: S608
# Advances each user's stream by their count and writes the rows: seq = the stream's old end + the
# row's place among that user's rows in the batch (``k``, 1-based, in the order they were asked for).
_INSERT = f"""
WITH advanced AS (
    UPDATE "{_STREAMS}" AS s SET last_seq = s.last_seq + c.n
    FROM unnest(%(users)s::bigint[], %(counts)s::bigint[]) AS c(user_id, n)
    WHERE s.user_id = c.user_id
    RETURNING s.user_id, s.last_seq - c.n AS base
)
INSERT INTO "{_EVENTS}" (id, user_id, seq, event, run_id, agent, data, created_at, publish_attempts, last_error)
SELECT e.id, e.user_id, a.base + e.k, e.event, e.run_id, e.agent, e.data::jsonb, %(now)s, 0, ''
FROM unnest(
    %(ids)s::uuid[], %(user_ids)s::bigint[], %(ks)s::bigint[], %(events)s::text[], %(run_ids)s::uuid[],
    %(agents)s::text[], %(datas)s::text[]
) AS e(id, user_id, k, event, run_id, agent, data)
JOIN advanced AS a ON a.user_id = e.user_id
RETURNING id, seq
"""  # noqa: S608
_STREAMS_MAKE = (
    f'INSERT INTO "{_STREAMS}" (user_id, last_seq, acked_seq, pruned_seq) '
    "SELECT unnest(%s::bigint[]), 0, 0, 0 ON CONFLICT (user_id) DO NOTHING"
)
_MARK_PUBLISHED = f'UPDATE "{_EVENTS}" SET published_at = %s WHERE id = ANY(%s::uuid[]) AND published_at IS NULL'  # noqa: S608
_MARK_FAILED = (
    f'UPDATE "{_EVENTS}" SET publish_attempts = publish_attempts + 1, last_error = %s, '  # noqa: S608
    "next_attempt_at = %s WHERE id = ANY(%s::uuid[]) AND published_at IS NULL"
)


class _Stale(Exception):
    """A reused connection failed before the batch's commit was sent: the server had ended it."""


class StreamsMissing(Exception):
    """Some users of a batch have no stream row yet: it is made in a statement of its own, and the batch retried."""


async def aevents_insert(batch: Sequence[EventFields], *, now: datetime) -> list[Event]:
    """Write a batch in one transaction: each row with its user's next seq, in the batch's order per user.

    All or nothing: raises Django's ``DatabaseError`` (or a subclass), having
    committed nothing, or returns every row.
    """
    stale_retried = streams_made = False
    while True:
        try:
            return await _ainsert_once(batch, now=now)
        except _Stale as stale:
            if stale_retried:
                raise utils.OperationalError(str(stale.__cause__)) from stale.__cause__
            # The server ended the loop's idle connections (a restart, a failover): nothing was
            # committed, as the commit had not been sent. Once more, on a connection of now.
            stale_retried = True
            await _adiscard_idle()
        except StreamsMissing as missing:
            if streams_made:  # Made, and gone again: their users were deleted meanwhile.
                raise utils.IntegrityError(f"No stream rows for users {missing.args[0]}") from None
            # Making the rows inside the batch's transaction would lock them out of user
            # order (and a row another batch is making is invisible until it commits).
            streams_made = True
            await _aexecute_once(_STREAMS_MAKE, [missing.args[0]])


async def aevents_mark_published(*, event_ids: Sequence[uuid.UUID], now: datetime) -> None:
    """Mark sent events published (those not already), in one round trip."""
    await _aexecute_once(_MARK_PUBLISHED, [now, list(event_ids)])


async def aevents_mark_failed(*, event_ids: Sequence[uuid.UUID], reason: str, next_attempt_at: datetime) -> None:
    """Count a failed publish of events still pending, and when the drainer may try again."""
    await _aexecute_once(_MARK_FAILED, [reason, next_attempt_at, list(event_ids)])


async def _aexecute_once(statement: str, params: list[Any]) -> None:
    """Execute and commit an idempotent statement; again on a fresh connection if a reused one had been ended."""
    for attempt in (1, 2):
        try:
            async with _connection() as (conn, reused):
                try:
                    async with conn.pipeline():
                        await conn.execute(statement, params)
                        await conn.commit()
                except psycopg.OperationalError as exc:
                    if reused and attempt == 1 and conn.broken:
                        raise _Stale from exc
                    raise
                return
        except _Stale:
            await _adiscard_idle()


async def aclose() -> None:
    """Close this event loop's connections (before the loop ends)."""
    pool = _pools.pop(asyncio.get_running_loop(), None)
    if pool is not None:
        pool.closed = True
        for conn in pool.idle:
            await conn.close()
        pool.idle.clear()


async def _ainsert_once(batch: Sequence[EventFields], *, now: datetime) -> list[Event]:
    counts = Counter(fields.user_id for fields in batch)
    users = sorted(counts)
    place: Counter[int] = Counter()
    ks = []
    for fields in batch:
        place[fields.user_id] += 1
        ks.append(place[fields.user_id])
    ids = [uuid.uuid4() for _ in batch]
    params = {
        "users": users,
        "counts": [counts[user] for user in users],
        "now": now,
        "ids": ids,
        "user_ids": [fields.user_id for fields in batch],
        "ks": ks,
        "events": [fields.event for fields in batch],
        "run_ids": [fields.run_id for fields in batch],
        "agents": [fields.agent for fields in batch],
        "datas": [json.dumps(fields.data, separators=(",", ":"), ensure_ascii=False) for fields in batch],
    }
    async with _connection() as (conn, reused):
        try:
            async with conn.pipeline() as pipeline:
                locking = await conn.execute(_LOCK, [users])
                inserting = await conn.execute(_INSERT, params)
                await pipeline.sync()
                locked = {user for (user,) in await locking.fetchall()}
                written = dict(await inserting.fetchall())
        except psycopg.OperationalError as exc:
            if reused and conn.broken:
                raise _Stale from exc
            raise
        if len(locked) < len(users):
            await conn.rollback()
        else:
            await conn.commit()
    if len(locked) < len(users):
        raise StreamsMissing(sorted(set(users) - locked))
    if len(written) != len(batch):
        raise utils.DatabaseError(f"Wrote {len(written)} of a batch of {len(batch)} events")
    return [
        Event(
            id=event_id,
            user_id=fields.user_id,
            seq=written[event_id],
            event=fields.event,
            run_id=fields.run_id,
            agent=fields.agent,
            data=fields.data,
            created_at=now,
        )
        for event_id, fields in zip(ids, batch, strict=True)
    ]


@dataclass
class _LoopPool:
    """One event loop's connections: at most ``CONNECTIONS_PER_LOOP``, reused while they are sound."""

    slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(CONNECTIONS_PER_LOOP))
    idle: list[psycopg.AsyncConnection[Any]] = field(default_factory=list)
    closed: bool = False  # by ``aclose``: connections in use are closed when they come back


_pools: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopPool]" = weakref.WeakKeyDictionary()


@asynccontextmanager
async def _connection() -> AsyncIterator[tuple[psycopg.AsyncConnection[Any], bool]]:
    """Lend one of the loop's connections, and whether it was used before; Django's errors come out.

    A connection whose state is in doubt afterwards is closed, not lent again.
    """
    pool = _pools.setdefault(asyncio.get_running_loop(), _LoopPool())
    timeout_seconds = _statement_timeout_seconds() + NETWORK_GRACE_SECONDS
    async with pool.slots:
        conn = pool.idle.pop() if pool.idle else None
        reused = conn is not None
        try:
            async with asyncio.timeout(timeout_seconds):
                if conn is None:
                    conn = await _aconnect()
                yield conn, reused
        except psycopg.Error as exc:
            await _arelease(pool, conn, sound=True)
            raise _django_error(exc) from exc
        except TimeoutError as exc:
            await _arelease(pool, conn, sound=False)
            raise utils.OperationalError(f"The database did not answer within {timeout_seconds:g} s") from exc
        except BaseException:
            # Cancelled (or our own error) mid-conversation: its state is unknown.
            await _arelease(pool, conn, sound=False)
            raise
        else:
            await _arelease(pool, conn, sound=True)


async def _adiscard_idle() -> None:
    pool = _pools.get(asyncio.get_running_loop())
    if pool is not None:
        idle, pool.idle = pool.idle, []
        for conn in idle:
            await conn.close()


async def _arelease(pool: _LoopPool, conn: psycopg.AsyncConnection[Any] | None, *, sound: bool) -> None:
    """Put a connection back if it is idle and sound; roll back an open transaction; close it otherwise."""
    if conn is None:
        return
    status = conn.info.transaction_status
    if sound and not conn.closed and status in (pq.TransactionStatus.INTRANS, pq.TransactionStatus.INERROR):
        try:
            await conn.rollback()
        except psycopg.Error:
            sound = False
        status = conn.info.transaction_status
    if sound and not pool.closed and not conn.closed and status == pq.TransactionStatus.IDLE:
        pool.idle.append(conn)
        return
    await conn.close()


async def _aconnect() -> psycopg.AsyncConnection[Any]:
    probe_seconds: float = settings.DB_OUTAGE_PROBE_SECONDS
    try:
        probing = outage.admit(probe_seconds=probe_seconds)
    except psycopg.OperationalError as exc:
        raise utils.OperationalError(str(exc)) from exc
    try:
        conn = await psycopg.AsyncConnection.connect(**_connection_params())
    except psycopg.Error as exc:
        outage.failed(probe_seconds=probe_seconds, error=exc)
        raise
    if probing:
        outage.recovered()
    return conn


def _connection_params() -> dict[str, Any]:
    """The connection's parameters, as Django's own connections get them (the test database's, in tests)."""
    params = connections["default"].get_connection_params()
    # Django's sync cursor class and adapters are not for this connection; ids, text and times adapt as they are.
    for key in ("cursor_factory", "context", "pool"):
        params.pop(key, None)
    params["prepare_threshold"] = 5 if settings.DB_PREPARED_STATEMENTS else None
    return params


def _statement_timeout_seconds() -> float:
    return float(settings.DB_STATEMENT_TIMEOUT_MS) / 1000


_DJANGO_ERRORS = (
    "DataError",
    "OperationalError",
    "IntegrityError",
    "InternalError",
    "ProgrammingError",
    "NotSupportedError",
    "DatabaseError",
    "InterfaceError",
    "Error",
)


def _django_error(exc: psycopg.Error) -> utils.Error:
    """The Django exception for a psycopg one, as Django's own wrapper chooses it."""
    for name in _DJANGO_ERRORS:
        if isinstance(exc, getattr(psycopg, name)):
            error: utils.Error = getattr(utils, name)(*exc.args)
            return error
    return utils.Error(*exc.args)
