"""Prometheus metrics of the event path: connections, events, publishes, deliveries, drains, errors.

Every process keeps its own metrics in prometheus-client's default registry
and is scraped on its own (``notifications/metrics_http.py`` says why, and
serves them). Call sites use the small recorders below, never the metric
objects, so that ``METRICS_ENABLED=false`` turns every one of them into a
return. Counts on the event path are made once per batch (incremented by
its size), not once per event.
"""

import bisect
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.db import close_old_connections
from django.dispatch import receiver
from django.utils import timezone
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from .selectors import events_pending_summary

logger = logging.getLogger(__name__)

PREFIX = "agentstream_"
PENDING_QUERY_TIMEOUT_SECONDS = 1.0
PUBLISH_BUCKETS_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Up to a heartbeat and past it: a lost live message is delivered at the next beat (25 s).
DELIVERY_BUCKETS_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# No ``_created`` series beside every counter: Prometheus does not need them, and they double the scrape.
disable_created_metrics()  # type: ignore[no-untyped-call]

WS_OPEN = Gauge(f"{PREFIX}ws_connections", "WebSocket connections open now (authenticated, hello sent).")
WS_CONNECTS = Counter(
    f"{PREFIX}ws_connects", "WebSocket connects, by result: opened, or the close code that refused it.", ["result"]
)
WS_DISCONNECTS = Counter(
    f"{PREFIX}ws_disconnects",
    "Ends of opened WebSocket connections, by close code (the server's if it closed, else the client's).",
    ["code"],
)
WS_RESUMES = Counter(f"{PREFIX}ws_resumes", "Resumes answered with resumed.")
WS_RESUMES_TRUNCATED = Counter(f"{PREFIX}ws_resumes_truncated", "Resumes from before the retention window.")
WS_RESUMES_REFUSED = Counter(f"{PREFIX}ws_resumes_refused", "Resumes refused (past the log's end, or too long).")
EVENTS_RECORDED = Counter(f"{PREFIX}events_recorded", "Events written to the log by this process.")
EVENTS_PUBLISHED = Counter(f"{PREFIX}events_published", "Events the channel layer accepted from this process.")
EVENTS_PUBLISH_FAILED = Counter(
    f"{PREFIX}events_publish_failed", "Events whose publish from this process failed (left pending)."
)
PUBLISH_SECONDS = Histogram(
    f"{PREFIX}publish_duration_seconds",
    "Time to publish one batch of events to the channel layer, failed or not.",
    buckets=PUBLISH_BUCKETS_SECONDS,
)
DRAIN_PUBLISHED = Counter(f"{PREFIX}drain_events_published", "Pending events drain_events published.")
DRAIN_FAILED = Counter(f"{PREFIX}drain_events_failed", "Failed publish attempts of drain_events.")
DRAIN_BATCHES = Counter(f"{PREFIX}drain_batches", "Batches drain_events claimed, sent and recorded.")
LAYER_ERRORS = Counter(f"{PREFIX}layer_errors", "Channel-layer operations that failed, by operation.", ["operation"])
DATABASE_ERRORS = Counter(
    f"{PREFIX}database_errors", "Database operations that failed (database unavailable), by operation.", ["operation"]
)


# METRICS_ENABLED, read once: every recorder checks it, on paths taken per
# event. A change of the setting (tests) is followed through ``setting_changed``.
_enabled = bool(settings.METRICS_ENABLED)


def enabled() -> bool:
    """Whether metrics are recorded and served (``METRICS_ENABLED``)."""
    return _enabled


@receiver(setting_changed)
def _setting_changed(*, setting: str, **kwargs: Any) -> None:
    global _enabled
    if setting == "METRICS_ENABLED":
        _enabled = bool(settings.METRICS_ENABLED)


class LoopHistogram(Collector):
    """A histogram updated without a lock, for a path taken once per event per socket.

    prometheus-client's ``Histogram.observe`` takes a lock for every call;
    this one only adds to a list, from the event loop's thread. A scrape reads
    it from another thread: it may miss an observation in progress (its sum
    and count can disagree by one), never more.
    """

    def __init__(self, name: str, documentation: str, *, buckets: Sequence[float]) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = list(buckets)
        self.counts = [0] * (len(self.bounds) + 1)  # The last one is +Inf.
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def describe(self) -> Iterable[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation)]

    def collect(self) -> Iterable[Metric]:
        counts, total = list(self.counts), self.sum
        cumulative, buckets = 0, []
        for bound, count in zip([*map(_bound_text, self.bounds), "+Inf"], counts, strict=True):
            cumulative += count
            buckets.append((bound, float(cumulative)))
        family = HistogramMetricFamily(self.name, self.documentation)
        family.add_metric([], buckets, total)
        return [family]


def _bound_text(bound: float) -> str:
    return repr(float(bound))


DELIVERY_SECONDS = LoopHistogram(
    f"{PREFIX}event_delivery_seconds",
    "From an event's recording to its frame being sent on a socket (live and catch-up; resume replays excluded).",
    buckets=DELIVERY_BUCKETS_SECONDS,
)
REGISTRY.register(DELIVERY_SECONDS)


# Recorders. Each is a no-op with METRICS_ENABLED off.


def ws_opened() -> None:
    if _enabled:
        WS_CONNECTS.labels("opened").inc()
        WS_OPEN.inc()


def ws_refused(*, code: int) -> None:
    if _enabled:
        WS_CONNECTS.labels(str(code)).inc()


def ws_closed(*, code: int | None) -> None:
    """An opened connection ended (``None``: no close code, as for a dropped TCP connection)."""
    if _enabled:
        WS_DISCONNECTS.labels("1006" if code is None else str(code)).inc()
        WS_OPEN.dec()


def ws_resumed(*, truncated: bool) -> None:
    if _enabled:
        WS_RESUMES.inc()
        if truncated:
            WS_RESUMES_TRUNCATED.inc()


def ws_resume_refused() -> None:
    if _enabled:
        WS_RESUMES_REFUSED.inc()


def events_recorded(count: int) -> None:
    if _enabled and count:
        EVENTS_RECORDED.inc(count)


def events_sent(*, count: int, failed: bool, started: float) -> None:
    """A publish of ``count`` events that began at ``started`` (``time.monotonic()``) ended."""
    if _enabled:
        PUBLISH_SECONDS.observe(time.monotonic() - started)
        (EVENTS_PUBLISH_FAILED if failed else EVENTS_PUBLISHED).inc(count)
        if failed:
            LAYER_ERRORS.labels("publish").inc()


def event_delivered(*, created_at: float) -> None:
    """A frame of an event recorded at ``created_at`` (Unix time) went out on a socket."""
    if _enabled:
        DELIVERY_SECONDS.observe(max(0.0, time.time() - created_at))


def drain_batch(*, published: int, failed: int) -> None:
    if _enabled:
        DRAIN_BATCHES.inc()
        DRAIN_PUBLISHED.inc(published)
        DRAIN_FAILED.inc(failed)


def layer_error(*, operation: str) -> None:
    if _enabled:
        LAYER_ERRORS.labels(operation).inc()


def database_error(*, operation: str) -> None:
    if _enabled:
        DATABASE_ERRORS.labels(operation).inc()


class PendingCollector(Collector):
    """Pending events and the oldest one's age, read from the database at scrape time.

    The query runs in a thread of its own and is waited for at most
    ``timeout_seconds``, so a database that is down or slow never holds a
    scrape longer than that. Then, or when it fails, the two gauges are
    left out and ``agentstream_pending_query_ok`` is 0; while a query that
    timed out is still running, later scrapes do not start another.
    """

    def __init__(self, *, timeout_seconds: float = PENDING_QUERY_TIMEOUT_SECONDS) -> None:
        self.timeout_seconds = timeout_seconds
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metrics-pending")
        self._straggler: Future[tuple[int, float | None]] | None = None

    def describe(self) -> Iterable[Metric]:
        return list(self._families(None))

    def collect(self) -> Iterable[Metric]:
        return list(self._families(self._query()))

    def _query(self) -> tuple[int, float | None] | None:
        if self._straggler is not None and not self._straggler.done():
            return None
        future = self._executor.submit(_pending_read)
        try:
            return future.result(timeout=self.timeout_seconds)
        except FutureTimeout:
            logger.warning("The pending-events query took over %ss; reported as failed", self.timeout_seconds)
            self._straggler = future
        except Exception as exc:  # The database is down: the scrape says so (pending_query_ok 0).
            logger.warning("The pending-events query failed: %s", exc)
        return None

    @staticmethod
    def _families(summary: tuple[int, float | None] | None) -> Iterator[Metric]:
        ok = GaugeMetricFamily(f"{PREFIX}pending_query_ok", "1 if the pending-events query of this scrape succeeded.")
        ok.add_metric([], 0.0 if summary is None else 1.0)
        yield ok
        count = GaugeMetricFamily(f"{PREFIX}pending_events", "Events in the log not yet published (all processes).")
        age = GaugeMetricFamily(f"{PREFIX}pending_oldest_age_seconds", "Age of the oldest pending event (0: none).")
        if summary is not None:
            count.add_metric([], float(summary[0]))
            age.add_metric([], summary[1] or 0.0)
        yield count
        yield age


def _pending_read() -> tuple[int, float | None]:
    """The pending summary, with the connection handling of ``database_sync_to_async``."""
    close_old_connections()
    try:
        count, oldest = events_pending_summary()
        return count, None if oldest is None else max(0.0, (timezone.now() - oldest).total_seconds())
    finally:
        close_old_connections()


# The pending collector has a registry of its own: reading an in-process
# metric (tests, REGISTRY.get_sample_value) must not query the database.
PENDING_REGISTRY = CollectorRegistry(auto_describe=True)
PENDING_REGISTRY.register(PendingCollector())
