"""The group writer's path on PostgreSQL: psycopg's async connections on the event loop, one statement a batch.

Measured before it (bench/RESULTS.md): through the ORM, a batch made six
round trips from a thread of the pool, and each reply waited for the GIL,
which the event loop holds while it works. At 500 events/s a batch of one
event spent 4.4 ms (p50) in its thread for statements that take 0.4 ms on
an idle connection, and its published mark, another hop, 2 ms. Here, with
no thread:

- the loop's own connections (at most ``CONNECTIONS_PER_LOOP``, one per
  batch in flight), made on first use and reused;
- a batch is one statement in its own transaction (autocommit), so one
  round trip: it locks the users' stream rows in user order, advances
  them, inserts every row with its seq (and its outbox row), and deletes
  the outbox rows of the batches published before it. Each ``execute`` of
  psycopg's async connection costs about 65 µs of CPU, more than the
  statement's share of most batches, so a batch makes one;
- statements are prepared on their fifth use (``DB_PREPARED_STATEMENTS``).

A user with no stream row yet gets no seq, which the table refuses
(``seq`` is NOT NULL): nothing is written, the rows are made in a statement
of their own, and the batch is written again. Each row's id is chosen
here, so a batch sent again after its connection broke cannot be written
twice: if the first try did commit, the second finds its ids taken and
reads the rows back.

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
from psycopg import errors
from psycopg.pq import TransactionStatus

from config.postgresql.base import outage

from .groupcommit import BATCHES_IN_FLIGHT, EventFields
from .ids import uuid7
from .models import Event, PendingEvent, Stream

logger = logging.getLogger(__name__)

CONNECTIONS_PER_LOOP = BATCHES_IN_FLIGHT
# Beyond the server's statement timeout, how long a batch may wait on a connection that stopped answering.
NETWORK_GRACE_SECONDS = 2.0
# The bound on a statement when the server has no statement timeout.
NO_STATEMENT_TIMEOUT_BOUND_SECONDS = 60.0

_EVENTS = Event._meta.db_table
_EVENTS_PK = f"{_EVENTS}_pkey"
_STREAMS = Stream._meta.db_table
_PENDING = PendingEvent._meta.db_table

# ``locked`` takes the users' stream rows in user order (so batches sharing users queue instead of
# deadlocking) before ``advanced`` touches any: it updates only rows it finds there. Each row's seq is
# its user's old end + its place among that user's rows in the batch (``k``, 1-based, in the order
# they were asked for); a user with no stream row gets NULL, which the NOT NULL ``seq`` refuses.
# Every row goes into the outbox with it, in the same statement, and earlier batches' published rows
# (``published``) leave it: recording "published" costs the writer no round trip and no commit of its own.
_INSERT = f"""
WITH sent AS (
    DELETE FROM "{_PENDING}" WHERE event_id = ANY(%(published)s::uuid[])
), locked AS MATERIALIZED (
    SELECT user_id FROM "{_STREAMS}" WHERE user_id = ANY(%(users)s::bigint[]) ORDER BY user_id FOR UPDATE
), advanced AS (
    UPDATE "{_STREAMS}" AS s SET last_seq = s.last_seq + c.n
    FROM unnest(%(users)s::bigint[], %(counts)s::bigint[]) AS c(user_id, n)
    WHERE s.user_id = c.user_id AND s.user_id IN (SELECT user_id FROM locked)
    RETURNING s.user_id, s.last_seq - c.n AS base
), inserted AS (
    INSERT INTO "{_EVENTS}" (id, user_id, seq, event, run_id, agent, data, created_at)
    SELECT e.id, e.user_id, a.base + e.k, e.event, e.run_id, e.agent, e.data, %(now)s
    FROM json_to_recordset(%(rows)s::json)
        AS e(id uuid, user_id bigint, k bigint, event text, run_id uuid, agent text, data jsonb)
    LEFT JOIN advanced AS a ON a.user_id = e.user_id
    RETURNING id, user_id, seq, created_at
)
INSERT INTO "{_PENDING}" (event_id, user_id, seq, created_at, publish_attempts, last_error)
SELECT id, user_id, seq, created_at, 0, '' FROM inserted
RETURNING event_id, seq
"""  # noqa: S608
_WRITTEN = f'SELECT id, seq FROM "{_EVENTS}" WHERE id = ANY(%s::uuid[])'  # noqa: S608
_STREAMS_MAKE = (
    f'INSERT INTO "{_STREAMS}" (user_id, last_seq, acked_seq, pruned_seq) '
    "SELECT unnest(%s::bigint[]), 0, 0, 0 ON CONFLICT (user_id) DO NOTHING"
)
_MARK_PUBLISHED = f'DELETE FROM "{_PENDING}" WHERE event_id = ANY(%s::uuid[])'  # noqa: S608
_MARK_FAILED = (
    f'UPDATE "{_PENDING}" SET publish_attempts = publish_attempts + 1, last_error = %s, '  # noqa: S608
    "next_attempt_at = %s WHERE event_id = ANY(%s::uuid[])"
)


def _uuid_array(values: Sequence[uuid.UUID]) -> str:
    """A ``uuid[]`` literal: one text parameter instead of a list psycopg adapts element by element."""
    return "{" + ",".join(map(str, values)) + "}"


class _Stale(Exception):
    """A reused connection broke under a statement: the server had ended it, or went away meanwhile."""


async def aevents_insert(
    batch: Sequence[EventFields], *, now: datetime, published: Sequence[uuid.UUID] = ()
) -> list[Event]:
    """Write a batch in one transaction: each row with its user's next seq, in the batch's order per user.

    The same transaction marks the ``published`` events published (earlier
    batches'). All or nothing: raises Django's ``DatabaseError`` (or a
    subclass), having committed nothing, or returns every row.
    """
    ids = [uuid7() for _ in batch]
    params = _insert_params(batch, ids=ids, now=now)
    params["published"] = _uuid_array(published)
    stale_retried = streams_made = False
    while True:
        try:
            written = await _aexecute(_INSERT, params)
        except _Stale as stale:
            if stale_retried:
                raise utils.OperationalError(str(stale.__cause__)) from stale.__cause__
            # The server ended the loop's idle connections (a restart, a failover). Once more on a
            # connection of now, with the same ids: if the first try had committed, they are taken.
            stale_retried = True
            await _adiscard_idle()
            continue
        except utils.IntegrityError as exc:
            cause = exc.__cause__
            if stale_retried and isinstance(cause, errors.UniqueViolation) and cause.diag.constraint_name == _EVENTS_PK:
                written = await _aexecute(_WRITTEN, [ids])  # Committed by the try that lost its connection.
                if len(written) == len(batch):
                    break
            if streams_made or not (isinstance(cause, errors.NotNullViolation) and cause.diag.column_name == "seq"):
                raise
            # Users without a stream row yet. Making the rows inside the batch's statement would lock
            # them out of user order (and a row another batch is making is invisible until it commits).
            streams_made = True
            await _aexecute(_STREAMS_MAKE, [sorted({fields.user_id for fields in batch})])
            continue
        break
    seqs = dict(written)
    return [
        Event(
            id=event_id,
            user_id=fields.user_id,
            seq=seqs[event_id],
            event=fields.event,
            run_id=fields.run_id,
            agent=fields.agent,
            data=fields.data,
            created_at=now,
        )
        for event_id, fields in zip(ids, batch, strict=True)
    ]


async def aevents_mark_published(*, event_ids: Sequence[uuid.UUID]) -> None:
    """Mark sent events published, in one round trip: their rows leave the outbox."""
    await _aexecute_idempotent(_MARK_PUBLISHED, [list(event_ids)])


async def aevents_mark_failed(*, event_ids: Sequence[uuid.UUID], reason: str, next_attempt_at: datetime) -> None:
    """Count a failed publish of events still pending, and when the drainer may try again."""
    await _aexecute_idempotent(_MARK_FAILED, [reason, next_attempt_at, list(event_ids)])


async def aclose() -> None:
    """Close this event loop's connections (before the loop ends)."""
    pool = _pools.pop(asyncio.get_running_loop(), None)
    if pool is not None:
        pool.closed = True
        for conn in pool.idle:
            await conn.close()
        pool.idle.clear()


def _insert_params(batch: Sequence[EventFields], *, ids: list[uuid.UUID], now: datetime) -> dict[str, Any]:
    counts = Counter(fields.user_id for fields in batch)
    users = sorted(counts)
    place: Counter[int] = Counter()
    rows = []
    for event_id, fields in zip(ids, batch, strict=True):
        place[fields.user_id] += 1
        rows.append(
            {
                "id": str(event_id),
                "user_id": fields.user_id,
                "k": place[fields.user_id],
                "event": fields.event,
                "run_id": str(fields.run_id),
                "agent": fields.agent,
                "data": fields.data,
            }
        )
    return {
        "users": users,
        "counts": [counts[user] for user in users],
        "now": now,
        # One JSON text for every row: psycopg adapts a list element by element in Python, and a
        # batch's seven lists cost the writer more than the statement's share of PostgreSQL's time.
        "rows": _ROWS_ENCODER.encode(rows),
    }


_ROWS_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


async def _aexecute(statement: str, params: Any) -> list[Any]:
    """Run one statement in a transaction of its own; return its rows. ``_Stale`` if a reused connection broke."""
    async with _connection() as (conn, reused):
        try:
            cursor = await conn.execute(statement, params)
            return await cursor.fetchall() if cursor.description is not None else []
        except psycopg.OperationalError as exc:
            if reused and conn.broken:
                raise _Stale from exc
            raise


async def _aexecute_idempotent(statement: str, params: Any) -> None:
    """Run a statement that may run twice; again on a fresh connection if a reused one broke under it."""
    try:
        await _aexecute(statement, params)
    except _Stale:
        await _adiscard_idle()
        try:
            await _aexecute(statement, params)
        except _Stale as stale:
            raise utils.OperationalError(str(stale.__cause__)) from stale.__cause__


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
    """Put a connection back if it is sound and idle; close it otherwise."""
    if conn is None:
        return
    if sound and not pool.closed and not conn.broken and conn.info.transaction_status == TransactionStatus.IDLE:
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
        conn = await psycopg.AsyncConnection.connect(**_connection_params(), autocommit=True)
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
    """The server's statement timeout; with none (``DB_STATEMENT_TIMEOUT_MS=0``), a minute."""
    return float(settings.DB_STATEMENT_TIMEOUT_MS) / 1000 or NO_STATEMENT_TIMEOUT_BOUND_SECONDS


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
