"""The metrics of this process's event path, read from its registry: they move when their event happens."""

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from asgiref.sync import sync_to_async
from django.db import connection

from notifications import metrics
from notifications.drain import adrain_batch
from notifications.models import Event, PendingEvent
from notifications.services import aevent_record, event_record
from tests.conftest import ChannelLayers, test_database_url
from tests.scrape import local
from tests.servers import RedisServer


def samples_of(collector: Any) -> dict[str, float]:
    return {sample.name: sample.value for family in collector.collect() for sample in family.samples}


def test_the_loop_histogram_counts_into_cumulative_buckets() -> None:
    histogram = metrics.LoopHistogram("test_loop_seconds", "A test histogram.", buckets=(0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 3.0):
        histogram.observe(value)
    [family] = histogram.collect()
    buckets = {sample.labels.get("le"): sample.value for sample in family.samples if sample.name.endswith("_bucket")}
    assert buckets == {"0.1": 2.0, "1.0": 3.0, "+Inf": 4.0}
    totals = {sample.name: sample.value for family in histogram.collect() for sample in family.samples}
    assert totals["test_loop_seconds_count"] == 4.0
    assert totals["test_loop_seconds_sum"] == pytest.approx(3.65)


def test_nothing_is_recorded_with_metrics_off(settings: Any) -> None:
    settings.METRICS_ENABLED = False
    before = (local("agentstream_events_recorded_total"), local("agentstream_ws_connections"))
    metrics.events_recorded(5)
    metrics.ws_opened()
    metrics.event_delivered(created_at=time.time())
    assert (local("agentstream_events_recorded_total"), local("agentstream_ws_connections")) == before
    settings.METRICS_ENABLED = True
    metrics.events_recorded(5)
    assert local("agentstream_events_recorded_total") == before[0] + 5


async def test_a_recorded_event_counts_as_recorded_and_published_with_its_publish_time(
    redis_layer: Any, alice: Any
) -> None:
    before = [
        local("agentstream_events_recorded_total"),
        local("agentstream_events_published_total"),
        local("agentstream_publish_duration_seconds_count"),
    ]
    await aevent_record(user_id=alice.pk, event="agent_started", run_id=uuid.uuid4(), agent="demo", data={})
    after = [
        local("agentstream_events_recorded_total"),
        local("agentstream_events_published_total"),
        local("agentstream_publish_duration_seconds_count"),
    ]
    assert [b - a for a, b in zip(before, after, strict=True)] == [1, 1, 1]


def test_an_event_recorded_in_a_transaction_counts_once_it_commits(transactional_db: None, alice: Any) -> None:
    from django.db import transaction

    before = local("agentstream_events_recorded_total")
    with transaction.atomic():
        event_record(user_id=alice.pk, event="agent_started", run_id=uuid.uuid4(), agent="demo", data={})
        assert local("agentstream_events_recorded_total") == before
    assert local("agentstream_events_recorded_total") == before + 1


async def test_a_publish_with_redis_stopped_counts_as_failed_and_a_drain_publishes_it(
    redis_server_factory: Callable[[], RedisServer], channel_layers: ChannelLayers, alice: Any
) -> None:
    redis = redis_server_factory()
    channel_layers("pubsub", redis_url=redis.url)
    failed, layer_errors = (
        local("agentstream_events_publish_failed_total"),
        local("agentstream_layer_errors_total", operation="publish"),
    )
    await sync_to_async(redis.stop)()
    try:
        await aevent_record(user_id=alice.pk, event="agent_started", run_id=uuid.uuid4(), agent="demo", data={})
        assert local("agentstream_events_publish_failed_total") == failed + 1
        assert local("agentstream_layer_errors_total", operation="publish") == layer_errors + 1
    finally:
        await sync_to_async(redis.start)()
    assert await Event.objects.filter(pending__isnull=False).acount() == 1

    pending = await sync_to_async(samples_of)(metrics.PendingCollector())
    assert pending["agentstream_pending_query_ok"] == 1.0
    assert pending["agentstream_pending_events"] == 1.0
    assert pending["agentstream_pending_oldest_age_seconds"] >= 0.0

    drained, batches = local("agentstream_drain_events_published_total"), local("agentstream_drain_batches_total")
    result = await adrain_batch(batch_size=10, min_age_seconds=0, backoff=False)
    assert result.published == 1
    assert local("agentstream_drain_events_published_total") == drained + 1
    assert local("agentstream_drain_batches_total") == batches + 1
    pending = await sync_to_async(samples_of)(metrics.PendingCollector())
    assert (pending["agentstream_pending_events"], pending["agentstream_pending_oldest_age_seconds"]) == (0.0, 0.0)


def test_a_pending_query_that_hangs_is_reported_as_failed_within_its_bound(transactional_db: None) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("Needs PostgreSQL: a table lock that blocks readers (SQLite readers are not blocked).")
    collector = metrics.PendingCollector(timeout_seconds=0.3)
    with psycopg.connect(test_database_url()) as locker:
        locker.execute(f"LOCK TABLE {PendingEvent._meta.db_table} IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        first = samples_of(collector)
        assert time.monotonic() - started < 1.0
        assert first == {"agentstream_pending_query_ok": 0.0}
        # The first query still waits on the lock: a second scrape starts none and answers at once.
        started = time.monotonic()
        assert samples_of(collector) == {"agentstream_pending_query_ok": 0.0}
        assert time.monotonic() - started < 0.1
        locker.rollback()
    straggler = collector._straggler
    assert straggler is not None
    done = threading.Event()
    straggler.add_done_callback(lambda _: done.set())
    assert done.wait(timeout=5)
    assert samples_of(collector)["agentstream_pending_query_ok"] == 1.0
