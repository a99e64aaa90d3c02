"""Prometheus metrics of agent runs: started, ended by outcome, and how long they took.

Served with the rest of the process's metrics (``notifications/metrics_http.py``),
and off with them (``METRICS_ENABLED``).
"""

from prometheus_client import Counter, Histogram

from notifications.metrics import PREFIX, enabled

RUN_BUCKETS_SECONDS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

RUNS_STARTED = Counter(f"{PREFIX}runs_started", "Agent runs this process started.")
RUNS_ENDED = Counter(
    f"{PREFIX}runs_ended",
    "Agent runs whose end this process recorded, by outcome: completed, or the agent_error kind.",
    ["outcome"],
)
RUN_SECONDS = Histogram(
    f"{PREFIX}run_duration_seconds",
    "From a run's start to its end, by outcome.",
    ["outcome"],
    buckets=RUN_BUCKETS_SECONDS,
)


def run_started() -> None:
    if enabled():
        RUNS_STARTED.inc()


def run_ended(*, outcome: str, duration_seconds: float) -> None:
    """A run's end was written by this process (``outcome``: ``completed`` or its error kind)."""
    if enabled():
        RUNS_ENDED.labels(outcome).inc()
        RUN_SECONDS.labels(outcome).observe(max(0.0, duration_seconds))
