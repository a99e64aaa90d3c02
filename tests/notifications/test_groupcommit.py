"""notifications.groupcommit through aevent_record: concurrent events written and published together.

The guarantees are the ones a single write has: durable before the caller
returns, per-user seqs gapless and in the order the writes were asked for,
nothing sent that was rolled back, nothing lost or sent twice whoever is
cancelled, and a failed publish leaving exactly its events pending.
"""

import asyncio
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import DataError, OperationalError, connection, transaction

from notifications import groupcommit, services
from notifications.models import Event, PendingEvent, Stream
from notifications.services import aevent_record, event_record
from tests.conftest import ChannelLayers
from tests.notifications.conftest import member_of
from tests.servers import free_port


async def record(user_id: int, index: int) -> Event:
    return await aevent_record(
        user_id=user_id, event="agent_thinking", run_id=uuid.uuid4(), agent="demo", data={"i": index}
    )


def logged(user_id: int) -> list[tuple[int, int]]:
    """The user's (seq, i) in seq order."""
    return [(event.seq, event.data["i"]) for event in Event.objects.filter(user_id=user_id).order_by("seq")]


async def drain(layer: Any, channel: str, *, count: int) -> list[dict[str, Any]]:
    return [await asyncio.wait_for(layer.receive(channel), timeout=5) for _ in range(count)]


async def test_concurrent_writes_are_batched_gapless_and_each_writer_in_order(
    layer: Any, make_user: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five sequential writers (one per user, as a run emits) among 400 writes fired at once."""
    users = [await sync_to_async(make_user)() for _ in range(5)]
    channels = {user.pk: await member_of(layer, user.pk) for user in users}
    batches: list[int] = []
    insert = services._aevents_insert

    async def counted(batch: list[Any], published: list[Any]) -> list[Event]:
        batches.append(len(batch))
        return await insert(batch, published)

    async def sequential(user_id: int) -> list[Event]:
        return [await record(user_id, 1000 + index) for index in range(20)]

    monkeypatch.setattr(services, "_aevents_insert", counted)
    fired = [record(users[index % 5].pk, index) for index in range(400)]
    results = await asyncio.gather(*fired, *(sequential(user.pk) for user in users))
    assert len(batches) < 200 and sum(batches) == 500  # Together, not one transaction each.
    for user in users:
        log = await sync_to_async(logged)(user.pk)
        assert [seq for seq, _ in log] == list(range(1, 101))  # Gapless from 1.
        mine = [index for _, index in log if index >= 1000]
        assert mine == sorted(mine) and len(mine) == 20  # A sequential writer's events stay in its order.
        received = await drain(layer, channels[user.pk], count=100)
        # Each once; batches in flight together may publish out of order, which connections repair.
        assert sorted(message["seq"] for message in received) == list(range(1, 101))
    fired_rows: list[Any] = list(results[:400])
    rows = fired_rows + [row for batch in results[400:] for row in batch]  # type: ignore[attr-defined]
    stored_ids = await sync_to_async(lambda: set(Event.objects.values_list("id", flat=True)))()
    assert {row.id for row in rows} == stored_ids
    await services.aevents_outcomes_recorded()
    assert await Event.objects.filter(pending__isnull=False).acount() == 0


def test_batches_of_many_loops_and_single_writes_share_users_without_a_gap_or_deadlock(make_user: Any) -> None:
    """Four threads, each its own loop and connection (as separate processes would be), with the sync writer."""
    users = [make_user() for _ in range(3)]
    errors: list[BaseException] = []
    start = threading.Barrier(5)

    async def batched(offset: int) -> None:
        await asyncio.gather(*(record(users[(offset + index) % 3].pk, index) for index in range(90)))
        await services.aconnections_close()

    def loop_writer(offset: int) -> None:
        try:
            start.wait(timeout=10)
            asyncio.run(batched(offset))
        except BaseException as exc:  # Reported below.
            errors.append(exc)
        finally:
            connection.close()

    def single_writer() -> None:
        try:
            start.wait(timeout=10)
            for index in range(30):
                event_record(
                    user_id=users[index % 3].pk,
                    event="agent_thinking",
                    run_id=uuid.uuid4(),
                    agent="demo",
                    data={"i": index},
                )
        except BaseException as exc:  # Reported below.
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=loop_writer, args=(offset,)) for offset in range(4)]
    threads.append(threading.Thread(target=single_writer))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    for user in users:
        seqs = [seq for seq, _ in logged(user.pk)]
        assert seqs == list(range(1, 4 * 30 + 10 + 1))
        assert Stream.objects.get(user_id=user.pk).last_seq == seqs[-1]


@pytest.fixture
def commits_fail(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[bool], None]]:
    """``commits_fail(True)``: every batch is written (rows inserted, streams advanced), then its commit fails.

    On PostgreSQL for real: a deferred constraint trigger refuses the commit, as
    the server reports a connection failure (SQLSTATE 08006). Elsewhere the ORM's
    batch raises after its writes, inside its transaction.
    """
    insert = services._events_insert

    def failing_commit(batch: list[Any], published: list[Any]) -> list[Event]:
        with transaction.atomic():
            insert(batch, published)
            raise OperationalError("server closed the connection unexpectedly")

    def fail(on: bool) -> None:
        if connection.vendor != "postgresql":
            monkeypatch.setattr(services, "_events_insert", failing_commit if on else insert)
            return
        with connection.cursor() as cursor:
            if on:
                cursor.execute(
                    "CREATE FUNCTION refuse_commit() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN RAISE EXCEPTION 'commit refused' USING ERRCODE = '08006'; END $$"
                )
                cursor.execute(
                    "CREATE CONSTRAINT TRIGGER refuse_commit AFTER INSERT ON notifications_event "
                    "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_commit()"
                )
            else:
                cursor.execute("DROP TRIGGER IF EXISTS refuse_commit ON notifications_event")
                cursor.execute("DROP FUNCTION IF EXISTS refuse_commit()")

    yield fail
    if connection.vendor == "postgresql":
        fail(False)


async def test_a_batch_whose_commit_fails_publishes_nothing_and_fails_every_caller(
    layer: Any, alice: Any, bob: Any, commits_fail: Callable[[bool], None]
) -> None:
    watcher = await member_of(layer, alice.pk)
    await sync_to_async(commits_fail)(True)
    results = await asyncio.gather(
        *(record((alice if index % 2 else bob).pk, index) for index in range(20)), return_exceptions=True
    )
    assert [type(result) for result in results] == [OperationalError] * 20
    assert await Event.objects.acount() == 0
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(layer.receive(watcher), timeout=0.2)

    await sync_to_async(commits_fail)(False)
    event = await record(alice.pk, 99)
    assert event.seq == 1  # The failed batch's seqs were rolled back with it.


async def test_an_event_the_database_refuses_fails_only_its_own_caller(
    layer: Any, alice: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    insert = services._aevents_insert

    async def refuses_13(batch: list[Any], published: list[Any]) -> list[Event]:
        if any(fields.data["i"] == 13 for fields in batch):
            raise DataError("value out of range")
        return await insert(batch, published)

    monkeypatch.setattr(services, "_aevents_insert", refuses_13)
    results = await asyncio.gather(*(record(alice.pk, index) for index in range(30)), return_exceptions=True)
    failed = [index for index, result in enumerate(results) if isinstance(result, Exception)]
    assert failed == [13] and isinstance(results[13], DataError)
    assert [index for _, index in await sync_to_async(logged)(alice.pk)] == [i for i in range(30) if i != 13]
    assert [seq for seq, _ in await sync_to_async(logged)(alice.pk)] == list(range(1, 30))


async def test_cancelled_callers_lose_and_duplicate_nothing(
    layer: Any, alice: Any, bob: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    channels = {user.pk: await member_of(layer, user.pk) for user in (alice, bob)}
    insert = services._aevents_insert
    entered, release = asyncio.Event(), asyncio.Event()

    async def held(batch: list[Any], published: list[Any]) -> list[Event]:
        entered.set()
        await asyncio.wait_for(release.wait(), timeout=10)  # Released below, once callers are cancelled.
        return await insert(batch, published)

    monkeypatch.setattr(services, "_aevents_insert", held)
    first = asyncio.ensure_future(record(alice.pk, 0))  # Its batch is held before the database.
    await asyncio.wait_for(entered.wait(), timeout=5)
    waiting = [asyncio.ensure_future(record((alice if index % 2 else bob).pk, index)) for index in range(1, 41)]
    await asyncio.sleep(0)  # Every caller is queued behind the held batch.
    for task in waiting[::3]:
        task.cancel()
    first.cancel()
    release.set()
    results = await asyncio.gather(first, *waiting, return_exceptions=True)
    cancelled = [result for result in results if isinstance(result, asyncio.CancelledError)]
    assert len(cancelled) == 1 + len(waiting[::3])
    assert all(isinstance(result, Event) or isinstance(result, asyncio.CancelledError) for result in results)
    # Every event was written once (the cancelled callers' too: they were already queued) and sent once.
    for user, count in ((alice, 21), (bob, 20)):
        log = await sync_to_async(logged)(user.pk)
        assert [seq for seq, _ in log] == list(range(1, count + 1))
        received = await drain(layer, channels[user.pk], count=count)
        assert sorted(message["seq"] for message in received) == list(range(1, count + 1))
    indexes = await sync_to_async(lambda: Counter(Event.objects.values_list("data__i", flat=True)))()
    assert indexes == Counter(range(41))
    await _no_writer_left()
    assert await Event.objects.filter(pending__isnull=False).acount() == 0


async def test_a_cancelled_caller_returns_only_once_its_event_is_written(
    layer: Any, alice: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """So that what it writes next (a run's end, in a transaction of its own) cannot overtake it."""
    insert = services._aevents_insert
    entered, release = asyncio.Event(), asyncio.Event()

    async def held(batch: list[Any], published: list[Any]) -> list[Event]:
        entered.set()
        await asyncio.wait_for(release.wait(), timeout=10)
        return await insert(batch, published)

    monkeypatch.setattr(services, "_aevents_insert", held)
    caller = asyncio.ensure_future(record(alice.pk, 0))
    await asyncio.wait_for(entered.wait(), timeout=5)
    caller.cancel()
    for _ in range(20):
        await asyncio.sleep(0)
    assert not caller.done()  # Still waiting for the batch it is in.
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(caller, timeout=5)
    assert [index for _, index in await sync_to_async(logged)(alice.pk)] == [0]
    await _no_writer_left()


async def test_a_failed_publish_leaves_exactly_that_batch_pending(
    alice: Any, bob: Any, channel_layers: ChannelLayers, redis_url: str
) -> None:
    channel_layers("pubsub", redis_url=f"redis://127.0.0.1:{free_port()}/0", prefix="down")
    down = await asyncio.gather(*(record((alice if index % 2 else bob).pk, index) for index in range(20)))
    await services.aconnections_close()
    channel_layers("pubsub", redis_url=redis_url, prefix="up")
    up = await asyncio.gather(*(record(alice.pk, index) for index in range(20, 30)))
    await services.aconnections_close()
    pending = await sync_to_async(
        lambda: set(Event.objects.filter(pending__isnull=False).values_list("id", flat=True))
    )()
    assert pending == {row.id for row in down}
    stored = await sync_to_async(lambda: list(PendingEvent.objects.filter(pk__in=pending)))()
    assert {(row.publish_attempts, bool(row.last_error), row.next_attempt_at is not None) for row in stored} == {
        (1, True, True)
    }
    assert await Event.objects.filter(pk__in=[row.id for row in up], pending__isnull=True).acount() == 10


async def test_a_published_batch_leaves_the_outbox_in_the_next_batchs_statement(
    layer: Any, alice: Any, bob: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under load "published" costs no statement of its own; the last batch, with nothing behind it, records its own."""
    insert, record_outcome = services._aevents_insert, services._aevents_record_outcome
    carried: list[list[uuid.UUID]] = []
    alone: list[list[uuid.UUID]] = []
    entered, release = asyncio.Event(), asyncio.Event()

    async def watched(batch: list[Any], published: list[uuid.UUID]) -> list[Event]:
        carried.append(list(published))
        if not entered.is_set():
            entered.set()
            await asyncio.wait_for(release.wait(), timeout=10)  # The second batch queues meanwhile.
        return await insert(batch, published)

    async def recorded_alone(rows: list[Event], reason: str | None) -> None:
        alone.append([row.id for row in rows])
        await record_outcome(rows, reason)

    monkeypatch.setattr(services, "_aevents_insert", watched)
    monkeypatch.setattr(services, "_aevents_record_outcome", recorded_alone)
    monkeypatch.setattr(_writer(), "batches_in_flight", 1)  # So the second batch waits for the first.
    first = asyncio.ensure_future(record(alice.pk, 0))
    await asyncio.wait_for(entered.wait(), timeout=5)
    second = [asyncio.ensure_future(record((alice if index % 2 else bob).pk, index)) for index in range(1, 11)]
    await asyncio.sleep(0)
    release.set()
    rows = await asyncio.gather(first, *second)
    await _no_writer_left()
    await services.aevents_outcomes_recorded()

    assert carried == [[], [rows[0].id]]  # The second batch's statement took the first batch out of the outbox.
    assert alone == [[row.id for row in rows[1:]]]  # Nothing queued behind the second: recorded on its own.
    assert await PendingEvent.objects.acount() == 0


async def test_marks_waiting_for_a_batch_ride_the_next_one_and_never_hold_a_caller_or_a_shutdown(
    layer: Any, alice: Any, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Marks wait (here: for ever) for a batch to carry them; an event queued meanwhile is written at once."""
    settings.EVENT_OUTBOX_MARK_WAIT_MS = 60_000  # Far longer than any bound below: nothing here waits it out.
    insert = services._aevents_insert
    carried: list[list[uuid.UUID]] = []

    async def watched(batch: list[Any], published: list[uuid.UUID]) -> list[Event]:
        carried.append(list(published))
        return await insert(batch, published)

    monkeypatch.setattr(services, "_aevents_insert", watched)
    first = await asyncio.wait_for(record(alice.pk, 0), timeout=5)  # The caller does not wait for its marks.
    assert await PendingEvent.objects.filter(pk=first.id).aexists()  # Its outbox row waits for the next batch.
    second = await asyncio.wait_for(record(alice.pk, 1), timeout=5)  # It wakes the waiting task.
    assert carried == [[], [first.id]]
    assert not await PendingEvent.objects.filter(pk=first.id).aexists()

    await asyncio.wait_for(services.aevents_outcomes_recorded(), timeout=5)  # Shutdown does not wait it out.
    assert not await PendingEvent.objects.filter(pk=second.id).aexists()
    await _no_writer_left()


async def test_marks_a_failed_write_carried_are_recorded_all_the_same(
    layer: Any, alice: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The failed statement rolled the marks back with it: the outbox must not keep published events."""
    insert = services._aevents_insert
    entered, release = asyncio.Event(), asyncio.Event()

    async def second_fails(batch: list[Any], published: list[uuid.UUID]) -> list[Event]:
        if not entered.is_set():
            entered.set()
            await asyncio.wait_for(release.wait(), timeout=10)
            return await insert(batch, published)
        assert published  # It carries the first batch's marks, and then fails.
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(services, "_aevents_insert", second_fails)
    monkeypatch.setattr(_writer(), "batches_in_flight", 1)
    first = asyncio.ensure_future(record(alice.pk, 0))
    await asyncio.wait_for(entered.wait(), timeout=5)
    second = [asyncio.ensure_future(record(alice.pk, index)) for index in range(1, 6)]
    await asyncio.sleep(0)
    release.set()
    written = await first
    failed = await asyncio.gather(*second, return_exceptions=True)
    await _no_writer_left()
    await services.aevents_outcomes_recorded()

    assert [type(result) for result in failed] == [OperationalError] * 5
    assert [index for _, index in await sync_to_async(logged)(alice.pk)] == [0]
    assert not await PendingEvent.objects.filter(pk=written.id).aexists()


def _writer() -> groupcommit.GroupWriter:
    """The running loop's writer, as ``aevent_record`` gets it."""
    return groupcommit.group_writer(
        write=services._aevents_write,
        publish=services._aevents_publish,
        record_outcome=services._aevents_record_outcome,
    )


async def _no_writer_left() -> None:
    """Wait (bounded) for the writer's tasks: a cancelled caller's event is still being written after it returns."""
    writer = _writer()
    if writer.tasks:
        await asyncio.wait_for(asyncio.gather(*writer.tasks), timeout=5)
    assert not writer.tasks and not writer.queue
