"""Read Prometheus metrics: from a real process's /metrics, or from this process's registry."""

from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from tests.servers import http_request

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, keyed by (name, sorted labels)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(base_url: str, *, token: str | None = None) -> Samples:
    """Scrape ``base_url``/metrics (it must answer 200)."""
    answer = http_request(f"{base_url}/metrics", token=token)
    assert answer.status == 200, (answer.status, answer.body[:200])
    return parse(answer.body.decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 when the series does not exist yet (a labelled counter never incremented)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def local(name: str, **labels: Any) -> float:
    """One sample of this process's registry (0 if absent)."""
    return REGISTRY.get_sample_value(name, {key: str(item) for key, item in labels.items()}) or 0.0
