"""drain_events: publishing what the on-commit publisher could not, and stopping cleanly.

The drainer runs as a real subprocess against real Redis. What it sends is
observed by subscribing to the users' Redis channels directly, so "marked
published" can be checked against "actually sent".
"""

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels_redis.pubsub import RedisPubSubChannelLayer
from django.db import connection, transaction
from django.utils import timezone
from redis import asyncio as aioredis

from agents.models import AgentRun, RunStatus
from notifications.drain import adrain_batch, events_claim, pending_counts
from notifications.models import Event, PendingEvent, Stream
from notifications.services import aevent_record, user_group_name
from tests.conftest import SESSION_PREFIX, ChannelLayers, test_database_url
from tests.scrape import scrape, value
from tests.servers import ROOT, DaphneServer, LineReader, RedisServer, free_port, http_request
from tests.wsclient import access_token, ws_connect

pytestmark = pytest.mark.e2e

EXIT_BOUND_SECONDS = 5.0


def pending_events(user_ids: list[int], per_user: int) -> int:
    """Write events straight into the log as pending (as if every publish had failed)."""
    now = timezone.now() - timedelta(minutes=1)
    rows = []
    for user_id in user_ids:
        Stream.objects.update_or_create(user_id=user_id, defaults={"last_seq": per_user})
        run_id = uuid.uuid4()
        rows += [
            Event(
                user_id=user_id,
                seq=seq,
                event="agent_thinking",
                run_id=run_id,
                agent="demo",
                data={"step": seq},
                created_at=now,
            )
            for seq in range(1, per_user + 1)
        ]
    Event.objects.bulk_create(rows, batch_size=2000)
    outbox = [PendingEvent(event=row, user_id=row.user_id, seq=row.seq, created_at=row.created_at) for row in rows]
    PendingEvent.objects.bulk_create(outbox, batch_size=2000)
    return len(rows)


class Drainer:
    """``manage.py drain_events`` as a subprocess on the test database."""

    def __init__(self, redis_url: str, *args: str, **env: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "drain_events", *args],
            cwd=ROOT,
            env={
                **os.environ,
                "DATABASE_URL": test_database_url(),
                "REDIS_URL": redis_url,
                "CHANNEL_LAYER_PREFIX": SESSION_PREFIX,
                "PYTHONUNBUFFERED": "1",
                **env,
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.stdout = LineReader(self.process.stdout)
        self.stderr = LineReader(self.process.stderr)

    def wait_for_line(self, text: str, *, timeout: float = 20) -> None:
        self.stdout.until(text, timeout=timeout)

    def wait_for_error_line(self, text: str, *, timeout: float = 20) -> None:
        self.stderr.until(text, timeout=timeout)

    def finish(self, *, timeout: float = 30) -> tuple[int, str, str]:
        """Wait for the exit; return the code and all of stdout and stderr."""
        rest_out, rest_err = self.process.communicate(timeout=timeout)
        return (
            self.process.returncode,
            _all_text(self.stdout, rest_out),
            _all_text(self.stderr, rest_err),
        )

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate(timeout=10)


def _all_text(reader: LineReader, rest: bytes) -> str:
    return "".join(line + "\n" for line in reader.lines) + (reader.buffer + rest).decode(errors="replace")


@pytest.fixture
def drainers() -> Iterator[Callable[..., Drainer]]:
    started: list[Drainer] = []

    def start(redis_url: str, *args: str, **env: str) -> Drainer:
        drainer = Drainer(redis_url, *args, **env)
        started.append(drainer)
        return drainer

    yield start
    for drainer in started:
        drainer.kill()


class Subscriber:
    """Every event message Redis carries to user groups, as (user_id, seq)."""

    def __init__(self) -> None:
        self.seen: Counter[tuple[int, int]] = Counter()
        self.order: dict[int, list[int]] = {}  # user id -> seqs in the order they went out
        self.decoder = RedisPubSubChannelLayer()

    async def run(self, redis_url: str, ready: asyncio.Event) -> None:
        client = aioredis.from_url(redis_url)
        pubsub = client.pubsub()
        try:
            await pubsub.psubscribe(f"{SESSION_PREFIX}__group__user.*")
            ready.set()
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is not None:
                    body = self.decoder.deserialize(message["data"])
                    self.seen[(body["user_id"], body["seq"])] += 1
                    self.order.setdefault(body["user_id"], []).append(body["seq"])
        finally:
            await pubsub.aclose()
            await client.aclose()

    async def wait_for(self, count: int, *, timeout: float = 20) -> None:
        async with asyncio.timeout(timeout):
            while sum(self.seen.values()) < count:  # noqa: ASYNC110 (messages arrive on another task)
                await asyncio.sleep(0.02)


@pytest.fixture
async def subscriber(redis_url: str) -> AsyncIterator[Subscriber]:
    listener = Subscriber()
    ready = asyncio.Event()
    task = asyncio.create_task(listener.run(redis_url, ready))
    await asyncio.wait_for(ready.wait(), timeout=5)
    yield listener
    task.cancel()
    await asyncio.wait([task])


def published_pairs() -> set[tuple[int, int]]:
    return set(Event.objects.filter(pending__isnull=True).values_list("user_id", "seq"))


async def test_events_pending_while_redis_was_down_reach_the_client_after_a_drain(
    redis_server_factory: Callable[[], RedisServer],
    daphne_factory: Callable[..., DaphneServer],
    drainers: Callable[..., Drainer],
    channel_layers: ChannelLayers,
    alice: Any,
) -> None:
    redis = redis_server_factory()
    # A heartbeat that never comes in the test: only the drainer's publish can deliver.
    server = daphne_factory(redis_url=redis.url, WS_HEARTBEAT_SECONDS="3600")
    channel_layers("pubsub", redis_url=redis.url)
    async with ws_connect(server.ws_url, access_token(alice)) as client:
        await sync_to_async(redis.stop)()
        run_id = uuid.uuid4()
        for step in range(20):
            await aevent_record(
                user_id=alice.pk, event="agent_thinking", run_id=run_id, agent="demo", data={"step": step}
            )
        assert await Event.objects.filter(pending__isnull=False).acount() == 20
        await sync_to_async(redis.start)()
        await _wait_until_subscribed(redis.url, f"{SESSION_PREFIX}__group__{user_group_name(alice.pk)}")

        drainer = drainers(redis.url, "--once", "--min-age", "0")
        code, stdout, stderr = await asyncio.to_thread(drainer.finish)
        assert code == 0, stderr
        assert "Done: published 20, failed attempts 0; still pending 0" in stdout
        events = await client.events(20)
        assert [event["seq"] for event in events] == list(range(1, 21))
        assert await client.settle() == []


async def _wait_until_subscribed(redis_url: str, channel: str) -> None:
    """The server re-subscribes after Redis comes back; wait (bounded) until it has."""
    client = aioredis.from_url(redis_url)
    try:
        async with asyncio.timeout(15):
            while not (await client.pubsub_numsub(channel))[0][1]:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    finally:
        await client.aclose()


async def test_sigterm_mid_drain_exits_0_in_bound_and_marks_only_what_was_sent(
    redis_url: str, drainers: Callable[..., Drainer], subscriber: Subscriber, make_user: Any
) -> None:
    users = [await sync_to_async(make_user)() for _ in range(10)]
    total = await sync_to_async(pending_events)([user.pk for user in users], 2000)
    drainer = drainers(redis_url, "--batch-size", "100", "--min-age", "0", "-v", "2")
    await asyncio.to_thread(drainer.wait_for_line, "Batch: published")
    started = time.monotonic()
    drainer.process.send_signal(signal.SIGTERM)
    code, stdout, stderr = await asyncio.to_thread(drainer.finish)
    assert time.monotonic() - started < EXIT_BOUND_SECONDS
    assert code == 0, stderr
    assert "SIGTERM: finishing the batch in hand" in stderr
    published = await sync_to_async(published_pairs)()
    assert 0 < len(published) < total, "the signal should land mid-drain"
    assert f"Done: published {len(published)}," in stdout
    await subscriber.wait_for(len(published))
    assert published <= set(subscriber.seen)  # Nothing marked published without being sent.
    for seqs in subscriber.order.values():
        assert seqs == sorted(seqs)
    assert await Event.objects.acount() == total  # Nothing lost: the rest is still pending.
    assert await Event.objects.filter(pending__isnull=False).acount() == total - len(published)


@asynccontextmanager
async def stuck_drainer(
    redis_server_factory: Callable[[], RedisServer], drainers: Callable[..., Drainer], *args: str
) -> AsyncIterator[Drainer]:
    """A drainer holding a claimed batch it cannot finish: its Redis refuses writes for now."""
    redis = redis_server_factory()
    paused = aioredis.from_url(redis.url)
    await paused.execute_command("CLIENT", "PAUSE", "20000", "WRITE")
    try:
        drainer = drainers(redis.url, "--min-age", "0", "-v", "3", *args)
        await asyncio.to_thread(drainer.wait_for_line, "Claimed 50 events.")
        yield drainer
    finally:
        await paused.execute_command("CLIENT", "UNPAUSE")
        await paused.aclose()


async def test_second_signal_exits_at_once_and_leaves_the_batch_pending(
    redis_server_factory: Callable[[], RedisServer], drainers: Callable[..., Drainer], alice: Any
) -> None:
    await sync_to_async(pending_events)([alice.pk], 50)
    async with stuck_drainer(redis_server_factory, drainers, "--shutdown-timeout", "30") as drainer:
        drainer.process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(drainer.wait_for_error_line, "finishing the batch in hand")
        started = time.monotonic()
        drainer.process.send_signal(signal.SIGTERM)
        code, _, stderr = await asyncio.to_thread(drainer.finish)
    assert time.monotonic() - started < EXIT_BOUND_SECONDS
    assert code == 130
    assert "Second SIGTERM: exiting now" in stderr
    assert await Event.objects.filter(pending__isnull=False).acount() == 50


async def test_shutdown_over_its_bound_exits_nonzero_and_loses_nothing(
    redis_server_factory: Callable[[], RedisServer], drainers: Callable[..., Drainer], alice: Any
) -> None:
    await sync_to_async(pending_events)([alice.pk], 50)
    # A send stuck on the paused Redis takes up to 2 s, longer than the 0.5 s bound.
    async with stuck_drainer(redis_server_factory, drainers, "--shutdown-timeout", "0.5") as drainer:
        started = time.monotonic()
        drainer.process.send_signal(signal.SIGINT)
        code, _, stderr = await asyncio.to_thread(drainer.finish)
    assert time.monotonic() - started < 1.5
    assert code == 130
    assert "Shutdown took too long" in stderr
    assert await Event.objects.filter(pending__isnull=False).acount() == 50


async def test_two_drainers_publish_each_event_exactly_once(
    redis_url: str, drainers: Callable[..., Drainer], subscriber: Subscriber, make_user: Any
) -> None:
    users = [await sync_to_async(make_user)() for _ in range(20)]
    total = await sync_to_async(pending_events)([user.pk for user in users], 150)
    pair = [drainers(redis_url, "--once", "--batch-size", "50", "--min-age", "0") for _ in range(2)]
    results = await asyncio.gather(*(asyncio.to_thread(drainer.finish) for drainer in pair))
    assert [code for code, _, _ in results] == [0, 0], [stderr for _, _, stderr in results]
    await subscriber.wait_for(total)
    assert len(subscriber.seen) == total
    assert set(subscriber.seen.values()) == {1}  # Each event sent exactly once between them.
    for seqs in subscriber.order.values():  # Each user's in seq order on the wire, even split between drainers.
        assert seqs == sorted(seqs)
    assert await Event.objects.filter(pending__isnull=False).acount() == 0


async def test_once_exits_1_when_redis_is_unreachable(drainers: Callable[..., Drainer], alice: Any) -> None:
    await sync_to_async(pending_events)([alice.pk], 3)
    drainer = drainers(f"redis://127.0.0.1:{free_port()}/0", "--once", "--min-age", "0", "--max-attempts", "1")
    code, stdout, stderr = await asyncio.to_thread(drainer.finish)
    assert code == 1
    assert "Some events could not be published; they stay pending." in stderr
    # The batch goes in one pipeline and fails whole: none is recorded as sent, so none
    # overtakes another, and each counts its attempt (with --max-attempts 1, stuck).
    assert "Done: published 0, failed attempts 3; still pending 3 (3 stuck at 1+ attempts)." in stdout


def test_in_memory_layer_is_refused_with_the_reason(transactional_db: None) -> None:
    env = {**os.environ, "DATABASE_URL": test_database_url()}
    env.pop("REDIS_URL", None)
    result = subprocess.run(
        [sys.executable, "manage.py", "drain_events", "--once"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert "the channel layer is in-memory: it reaches only this process" in result.stderr


async def test_failed_publishes_back_off_and_stuck_ones_are_still_retried(
    settings: Any, channel_layers: ChannelLayers, alice: Any
) -> None:
    settings.DRAIN_BACKOFF_BASE_SECONDS = 10
    settings.DRAIN_BACKOFF_MAX_SECONDS = 25
    channel_layers("pubsub", redis_url=f"redis://127.0.0.1:{free_port()}/0", prefix="down")
    await sync_to_async(pending_events)([alice.pk], 1)
    waits = []
    for attempt in range(1, 5):
        result = await adrain_batch(batch_size=10, min_age_seconds=0)
        assert (result.published, result.failed) == (0, 1)
        event = await PendingEvent.objects.aget()
        assert event.publish_attempts == attempt and "ConnectionError" in event.last_error
        assert event.next_attempt_at is not None
        assert await Stream.objects.filter(drain_leased_until__isnull=False).acount() == 0
        waits.append(round((event.next_attempt_at - timezone.now()).total_seconds()))
        assert (await adrain_batch(batch_size=10, min_age_seconds=0)).claimed == 0  # Backing off.
        await PendingEvent.objects.aupdate(next_attempt_at=timezone.now())
    assert waits == [10, 20, 25, 25]  # Doubling, capped.
    # Past the attempt limit it is reported as stuck, kept, and still tried.
    assert await sync_to_async(pending_counts)(max_attempts=3) == (1, 1)
    assert (await adrain_batch(batch_size=10, min_age_seconds=0)).failed == 1


async def test_min_age_leaves_fresh_events_to_the_on_commit_publisher(redis_layer: Any, alice: Any) -> None:
    await sync_to_async(pending_events)([alice.pk], 2)
    await Event.objects.filter(seq=2).aupdate(created_at=timezone.now())
    await PendingEvent.objects.filter(seq=2).aupdate(created_at=timezone.now())
    result = await adrain_batch(batch_size=10, min_age_seconds=30)
    assert result.published == 1
    assert [e.seq async for e in Event.objects.filter(pending__isnull=False)] == [2]


async def test_sigterm_while_redis_hangs_stops_sending_and_exits_0(
    redis_server_factory: Callable[[], RedisServer], drainers: Callable[..., Drainer], alice: Any, bob: Any
) -> None:
    await sync_to_async(pending_events)([alice.pk, bob.pk], 25)
    async with stuck_drainer(redis_server_factory, drainers) as drainer:
        started = time.monotonic()
        drainer.process.send_signal(signal.SIGTERM)
        code, stdout, stderr = await asyncio.to_thread(drainer.finish)
    assert time.monotonic() - started < EXIT_BOUND_SECONDS
    assert code == 0, stderr
    assert "still pending 50" in stdout
    # What was claimed and not sent is free again for the next drainer.
    assert not await Stream.objects.filter(drain_leased_until__isnull=False).aexists()


async def test_writers_are_not_blocked_while_a_drainer_waits_on_redis(
    redis_server_factory: Callable[[], RedisServer],
    drainers: Callable[..., Drainer],
    redis_layer: Any,
    alice: Any,
    bob: Any,
) -> None:
    await sync_to_async(pending_events)([bob.pk], 50)
    async with stuck_drainer(redis_server_factory, drainers):
        started = time.monotonic()
        await aevent_record(user_id=alice.pk, event="agent_started", run_id=uuid.uuid4(), agent="demo", data={})
        assert time.monotonic() - started < 1.0  # No transaction is held across the stuck send.


@pytest.mark.skipif(connection.vendor != "postgresql", reason="SKIP LOCKED is PostgreSQL's; SQLite drainers take turns")
async def test_users_locked_by_another_drainer_are_skipped(
    redis_url: str, drainers: Callable[..., Drainer], alice: Any, bob: Any
) -> None:
    await sync_to_async(pending_events)([alice.pk, bob.pk], 5)
    locked = threading.Event()
    release = threading.Event()

    def hold_alices_rows() -> None:
        # What another drainer mid-claim holds: the user's stream row.
        with transaction.atomic():
            list(Stream.objects.select_for_update().filter(user=alice))
            locked.set()
            release.wait(timeout=20)
        connection.close()

    holder = threading.Thread(target=hold_alices_rows)
    holder.start()
    try:
        assert await asyncio.to_thread(locked.wait, 10)
        code, stdout, stderr = await asyncio.wait_for(
            asyncio.to_thread(drainers(redis_url, "--once", "--min-age", "0").finish), timeout=15
        )
        assert code == 0, stderr
        assert "Done: published 5, failed attempts 0; still pending 5" in stdout
    finally:
        release.set()
        await asyncio.to_thread(holder.join, 20)
    assert not await Event.objects.filter(user=bob, pending__isnull=False).aexists()


@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="another connection writing mid-claim: SQLite's claim holds the lock"
)
def test_events_another_drainer_sent_while_the_claim_locked_its_users_are_not_claimed(
    transactional_db: None, alice: Any, bob: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg

    from notifications import drain

    pending_events([alice.pk, bob.pk], 3)
    still_pending = drain._still_pending

    def bobs_sent_meanwhile(ids: list[uuid.UUID]) -> set[uuid.UUID]:
        # Between this claim's read of the outbox and its check: another drainer sent and recorded bob's events.
        with psycopg.connect(test_database_url(), autocommit=True) as other:
            other.execute("DELETE FROM notifications_pendingevent WHERE user_id = %s", [bob.pk])
        return still_pending(ids)

    monkeypatch.setattr(drain, "_still_pending", bobs_sent_meanwhile)
    claimed = events_claim(batch_size=10, min_age_seconds=0)
    assert [(event.user_id, event.seq) for event in claimed] == [(alice.pk, seq) for seq in (1, 2, 3)]
    leased = dict(Stream.objects.values_list("user_id", "drain_leased_until"))
    assert leased[alice.pk] is not None and leased[bob.pk] is None


async def test_a_lease_of_a_drainer_that_died_holds_its_users_until_it_ends(
    redis_layer: Any, alice: Any, bob: Any
) -> None:
    await sync_to_async(pending_events)([alice.pk, bob.pk], 3)
    # A drainer claims alice and bob, then dies before sending or recording anything.
    claimed = await sync_to_async(events_claim)(batch_size=3, min_age_seconds=0)
    assert [(event.user_id, event.seq) for event in claimed] == [(alice.pk, seq) for seq in (1, 2, 3)]
    leased = await sync_to_async(lambda: dict(Stream.objects.values_list("user_id", "drain_leased_until")))()
    assert leased[alice.pk] is not None and leased[bob.pk] is None  # Claimed whole, per user.
    result = await adrain_batch(batch_size=10, min_age_seconds=0)
    assert result.published == 3  # Bob's; alice's are held by the lease.
    assert await Event.objects.filter(user=alice, pending__isnull=False).acount() == 3
    # The lease ends (as LEASE_SECONDS after the claim): the next drainer takes them.
    await Stream.objects.filter(user=alice).aupdate(drain_leased_until=timezone.now() - timedelta(seconds=1))
    assert (await adrain_batch(batch_size=10, min_age_seconds=0)).published == 3
    assert await Event.objects.filter(pending__isnull=False).acount() == 0
    assert await Stream.objects.filter(drain_leased_until__isnull=False).acount() == 0


async def test_drain_reaps_lost_runs(redis_url: str, drainers: Callable[..., Drainer], alice: Any) -> None:
    long_ago = timezone.now() - timedelta(hours=1)
    run = await AgentRun.objects.acreate(
        user=alice,
        agent="demo",
        input={},
        timeout_seconds=10,
        status=RunStatus.RUNNING,
        created_at=long_ago,
        started_at=long_ago,
    )
    code, stdout, stderr = await asyncio.to_thread(drainers(redis_url, "--once").finish)
    assert code == 0, stderr
    assert "runs_reap_lost_default: 1" in stdout
    await run.arefresh_from_db()
    assert run.status == RunStatus.FAILED
    assert run.error == {"kind": "lost", "message": "The process running this agent stopped before the run ended."}
    assert await Event.objects.filter(run_id=run.id, event="agent_error", pending__isnull=True).aexists()


async def test_its_metrics_show_the_drain_to_a_scrape_with_the_token(
    redis_url: str, drainers: Callable[..., Drainer], alice: Any
) -> None:
    total = await sync_to_async(pending_events)([alice.pk], 7)
    port = free_port()
    drainer = drainers(
        redis_url,
        "--min-age",
        "0",
        "--metrics-port",
        str(port),
        DJANGO_DEBUG="false",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        METRICS_TOKEN="drain-token",
    )
    drainer.wait_for_line(f"Metrics at http://127.0.0.1:{port}/metrics.")
    url = f"http://127.0.0.1:{port}"
    assert (await asyncio.to_thread(http_request, f"{url}/metrics")).status == 401
    assert (await asyncio.to_thread(http_request, f"{url}/other", token="drain-token")).status == 404
    async with asyncio.timeout(10):
        while value(await ascrape(url), "agentstream_drain_events_published_total") < total:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    samples = await ascrape(url)
    assert value(samples, "agentstream_drain_events_published_total") == total
    assert value(samples, "agentstream_drain_events_failed_total") == 0
    assert value(samples, "agentstream_pending_events") == 0
    drainer.process.send_signal(signal.SIGTERM)
    code, _, stderr = await asyncio.to_thread(drainer.finish)
    assert code == 0, stderr


async def ascrape(url: str) -> Any:
    return await asyncio.to_thread(scrape, url, token="drain-token")
