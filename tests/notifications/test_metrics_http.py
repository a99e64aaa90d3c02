"""Who may scrape /metrics: the token, the allowed networks, localhost with debug on; on real servers too."""

import secrets
import shutil
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured

from notifications.metrics_http import allowed_networks, exposition, scrape_allowed
from tests.scrape import parse, value
from tests.servers import DaphneServer, http_request

TOKEN = secrets.token_urlsafe(32)


@pytest.fixture(scope="module")
def production_daphne(daphne_factory: Callable[..., DaphneServer], redis_url: str) -> DaphneServer:
    """A server with debug off and a metrics token, as in production."""
    return daphne_factory(redis_url=redis_url, DJANGO_DEBUG="false", DJANGO_HTTPS="false", METRICS_TOKEN=TOKEN)


def test_the_token_is_the_only_credential_and_must_match(settings: Any) -> None:
    settings.DEBUG, settings.METRICS_TOKEN, settings.METRICS_ALLOWED_NETWORKS = False, "s3cret", []
    assert scrape_allowed(authorization="Bearer s3cret", client_host="203.0.113.9")
    assert scrape_allowed(authorization="bearer s3cret", client_host=None)
    for authorization in (None, "", "Bearer", "Bearer s3cre", "Bearer s3cret2", "Basic s3cret", "s3cret"):
        assert not scrape_allowed(authorization=authorization, client_host="203.0.113.9"), authorization
    # With debug off, even localhost needs it.
    assert not scrape_allowed(authorization=None, client_host="127.0.0.1")


def test_no_token_configured_means_no_token_is_accepted(settings: Any) -> None:
    settings.DEBUG, settings.METRICS_TOKEN, settings.METRICS_ALLOWED_NETWORKS = False, "", []
    assert not scrape_allowed(authorization="Bearer ", client_host="127.0.0.1")
    assert not scrape_allowed(authorization="Bearer", client_host="127.0.0.1")


def test_allowed_networks_and_localhost_in_debug(settings: Any) -> None:
    settings.DEBUG, settings.METRICS_TOKEN = False, ""
    settings.METRICS_ALLOWED_NETWORKS = ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"]
    assert scrape_allowed(authorization=None, client_host="10.1.2.3")
    assert scrape_allowed(authorization=None, client_host="2001:db8::1")
    assert scrape_allowed(authorization=None, client_host="192.0.2.7")
    assert not scrape_allowed(authorization=None, client_host="192.0.2.8")
    assert not scrape_allowed(authorization=None, client_host="not-an-address")
    settings.METRICS_ALLOWED_NETWORKS = []
    settings.DEBUG = True
    assert scrape_allowed(authorization=None, client_host="127.0.0.1")
    assert scrape_allowed(authorization=None, client_host="::1")
    assert not scrape_allowed(authorization=None, client_host="10.1.2.3")


def test_a_bad_allowed_network_is_refused_at_start() -> None:
    with pytest.raises(ImproperlyConfigured, match="METRICS_ALLOWED_NETWORKS"):
        allowed_networks(("10.0.0.0/33",))


@pytest.mark.e2e
def test_production_refuses_a_scrape_without_the_right_token(production_daphne: DaphneServer) -> None:
    url = f"{production_daphne.http_url}/metrics"
    for token in (None, "wrong", TOKEN[:-1]):
        answer = http_request(url, token=token)
        assert answer.status == 401, (token, answer.status)
        assert answer.headers["WWW-Authenticate"] == 'Bearer realm="metrics"'
        assert b"agentstream_" not in answer.body


@pytest.mark.e2e
def test_production_answers_the_token_whatever_host_a_scraper_uses(
    production_daphne: DaphneServer, transactional_db: None
) -> None:
    # A scraper reaches each server by its address, which is not in ALLOWED_HOSTS.
    answer = http_request(f"{production_daphne.http_url}/metrics", token=TOKEN, headers={"Host": "10.9.8.7:8000"})
    assert answer.status == 200, answer.body[:200]
    assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = parse(answer.body.decode())
    assert ("agentstream_ws_connections", ()) in samples
    assert value(samples, "agentstream_pending_query_ok") == 1.0
    assert ("agentstream_pending_events", ()) in samples
    assert http_request(f"{production_daphne.http_url}/metrics", token=TOKEN, method="POST", data=b"").status == 405


@pytest.mark.e2e
def test_debug_answers_localhost_without_a_token(metrics_daphne: DaphneServer) -> None:
    answer = http_request(f"{metrics_daphne.http_url}/metrics")
    assert answer.status == 200
    assert ("agentstream_ws_connections", ()) in parse(answer.body.decode())


@pytest.mark.e2e
def test_with_metrics_off_there_is_no_endpoint(daphne_factory: Callable[..., DaphneServer], redis_url: str) -> None:
    server = daphne_factory(redis_url=redis_url, METRICS_ENABLED="false")
    try:
        assert http_request(f"{server.http_url}/metrics").status == 404
    finally:
        server.stop()


def test_promtool_finds_nothing_wrong_with_our_metric_names(transactional_db: None) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian: apt-get install prometheus) is not installed.")
    ours = "".join(line + "\n" for line in exposition().decode().splitlines() if "agentstream_" in line)
    result = subprocess.run([promtool, "check", "metrics"], input=ours, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr
