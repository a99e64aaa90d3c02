"""REST rate limits on sign-in and on starting runs."""

from typing import Any

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient
from rest_framework.throttling import SimpleRateThrottle

from tests.conftest import ChannelLayers
from tests.wsclient import access_token


@pytest.fixture
def rates(monkeypatch: pytest.MonkeyPatch) -> None:
    # DRF reads the rates once, at import; the tests set small ones.
    for scope, rate in {"auth": "3/min", "auth_refresh": "3/min", "runs": "2/min"}.items():
        monkeypatch.setitem(SimpleRateThrottle.THROTTLE_RATES, scope, rate)


def sign_in(client: APIClient, **extra: str) -> int:
    body = {"username": "nobody", "password": "wrong"}
    return int(client.post("/api/auth/token/", body, format="json", **extra).status_code)  # type: ignore[arg-type]


@pytest.mark.usefixtures("rates", "transactional_db")
def test_sign_in_is_limited_per_client_address_and_a_forged_forwarded_for_does_not_help() -> None:
    client = APIClient()
    assert [sign_in(client) for _ in range(3)] == [401, 401, 401]
    refused = client.post("/api/auth/token/", {"username": "nobody", "password": "wrong"}, format="json")
    assert refused.status_code == 429
    assert refused.json()["code"] == "rate_limited" and "throttled" in refused.json()["detail"]
    assert int(refused["Retry-After"]) > 0
    assert sign_in(client, HTTP_X_FORWARDED_FOR="203.0.113.9") == 429
    assert sign_in(client, REMOTE_ADDR="198.51.100.7") == 401  # another client


@pytest.mark.usefixtures("rates")
def test_starting_runs_is_limited_per_user_and_reading_is_not(
    alice: Any, bob: Any, channel_layers: ChannelLayers
) -> None:
    channel_layers("memory")
    alices, bobs = APIClient(), APIClient()
    alices.credentials(HTTP_AUTHORIZATION=f"Bearer {access_token(alice)}")
    bobs.credentials(HTTP_AUTHORIZATION=f"Bearer {access_token(bob)}")
    # Bodies without an agent: refused before any run exists, but the requests still count.
    statuses = [alices.post("/api/runs/", {"input": {}}, format="json").status_code for _ in range(3)]
    assert statuses == [400, 400, 429]
    assert alices.get("/api/runs/").status_code == 200
    assert bobs.post("/api/runs/", {"input": {}}, format="json").status_code == 400


@pytest.mark.usefixtures("rates", "transactional_db")
def test_a_cache_outage_lets_requests_through(monkeypatch: pytest.MonkeyPatch) -> None:
    def down(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("cache is down")

    monkeypatch.setattr(cache, "get", down)
    client = APIClient()
    assert [sign_in(client) for _ in range(5)] == [401] * 5
