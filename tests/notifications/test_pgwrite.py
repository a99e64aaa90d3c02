"""notifications.pgwrite: the event writer's own PostgreSQL connections, on the event loop.

What a user of ``aevent_record`` must never see from them: a batch failed
because the server had ended an idle connection (a restart, a failover), a
caller waiting without bound on a server that stopped answering, or a gap
left by either.
"""

import asyncio
import uuid
from typing import Any

import psycopg
import pytest
from asgiref.sync import sync_to_async
from django.db import OperationalError, connection
from django.utils import timezone
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from notifications import pgwrite, services
from notifications.exceptions import InvalidEventData
from notifications.groupcommit import EventFields
from notifications.models import Event
from notifications.services import aevent_record, aevents_outcomes_recorded
from tests.conftest import test_database_url
from tests.notifications.test_services import as_json, event_data

pytestmark = pytest.mark.skipif(connection.vendor != "postgresql", reason="the PostgreSQL writer's own connections")


async def record(user_id: int, index: int) -> Event:
    return await aevent_record(
        user_id=user_id, event="agent_thinking", run_id=uuid.uuid4(), agent="demo", data={"i": index}
    )


def seqs(user_id: int) -> list[int]:
    return list(Event.objects.filter(user_id=user_id).order_by("seq").values_list("seq", flat=True))


async def backends_ended(pids: list[int]) -> None:
    """End server processes the way a restart does; returns once they are gone (within 5 s)."""
    async with await psycopg.AsyncConnection.connect(test_database_url(), autocommit=True) as admin:
        cursor = await admin.execute("SELECT pg_terminate_backend(pid, 5000) FROM unnest(%s::int[]) AS pid", [pids])
        assert [ended for (ended,) in await cursor.fetchall()] == [True] * len(pids)


async def test_connections_the_server_ended_are_replaced_without_failing_the_batch(
    redis_layer: Any, alice: Any
) -> None:
    await asyncio.gather(*(record(alice.pk, index) for index in range(8)))  # Several connections open.
    await aevents_outcomes_recorded()
    idle = pgwrite._pools[asyncio.get_running_loop()].idle
    assert idle
    await backends_ended([conn.info.backend_pid for conn in idle])

    event = await record(alice.pk, 8)
    assert event.seq == 9
    await aevents_outcomes_recorded()
    assert await sync_to_async(seqs)(alice.pk) == list(range(1, 10))
    assert await Event.objects.filter(pending__isnull=False).acount() == 0


async def test_a_batch_the_server_does_not_answer_fails_in_bound_and_leaves_no_gap(
    redis_layer: Any, alice: Any, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    await record(alice.pk, 0)
    settings.DB_STATEMENT_TIMEOUT_MS = 50
    monkeypatch.setattr(pgwrite, "NETWORK_GRACE_SECONDS", 0.05)
    async with await psycopg.AsyncConnection.connect(test_database_url()) as holder:
        # Another writer holds alice's stream row: to the batch, the server has stopped answering.
        await holder.execute("SELECT 1 FROM notifications_stream WHERE user_id = %s FOR UPDATE", [alice.pk])
        async with asyncio.timeout(5):
            with pytest.raises(OperationalError, match="did not answer"):
                await record(alice.pk, 1)
        await holder.rollback()
    settings.DB_STATEMENT_TIMEOUT_MS = 15_000
    event = await record(alice.pk, 2)
    assert event.seq == 2  # The batch that timed out committed nothing.
    assert await sync_to_async(seqs)(alice.pk) == [1, 2]


async def test_a_batch_whose_reply_was_lost_after_its_commit_is_not_written_twice(
    redis_layer: Any, alice: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server committed, then the connection broke before the reply came: sent again, it is found, not doubled."""
    execute = pgwrite._aexecute
    lost: list[str] = []

    async def reply_lost_once(statement: str, params: Any) -> list[Any]:
        rows = await execute(statement, params)
        if statement == pgwrite._INSERT and not lost:
            lost.append(statement)
            raise pgwrite._Stale from psycopg.OperationalError("server closed the connection unexpectedly")
        return rows

    await record(alice.pk, 0)
    monkeypatch.setattr(pgwrite, "_aexecute", reply_lost_once)
    events = await asyncio.gather(*(record(alice.pk, index) for index in range(1, 6)))
    assert lost
    assert sorted(event.seq for event in events) == [2, 3, 4, 5, 6]
    assert await sync_to_async(seqs)(alice.pk) == list(range(1, 7))  # Each once.
    await aevents_outcomes_recorded()
    assert await Event.objects.filter(pending__isnull=False).acount() == 0


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(datas=st.lists(event_data, min_size=1, max_size=4))
def test_the_batch_statement_stores_any_valid_data_as_given(alice: Any, datas: list[Any]) -> None:
    """A batch crosses to PostgreSQL as one JSON text; each event's data reads back as it was given."""
    run_id = uuid.UUID(int=7)
    valid = []
    for data in datas:
        try:
            services._event_validate(event="agent_thinking", run_id=run_id, agent="demo", data=data)
        except InvalidEventData:
            continue
        valid.append(data)
    assume(valid)
    batch = [EventFields(user_id=alice.pk, event="agent_thinking", run_id=run_id, agent="demo", data=d) for d in valid]

    async def write() -> list[Event]:
        try:
            return await pgwrite.aevents_insert(batch, now=timezone.now())
        finally:
            await pgwrite.aclose()

    rows = asyncio.run(write())
    stored = dict(Event.objects.filter(pk__in=[row.id for row in rows]).values_list("id", "data"))
    assert [as_json(stored[row.id]) for row in rows] == [as_json(data) for data in valid]
    assert [as_json(row.data) for row in rows] == [as_json(data) for data in valid]  # What the callers got.
