"""Every /api/ error is JSON with a code, whoever answers it, with debug on or off (hostile bodies included)."""

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.db import DataError, OperationalError
from django.test import Client

from tests.console.conftest import console_env
from tests.servers import DaphneServer, http_request
from tests.wsclient import access_token

DEEP_INPUT = '{"agent": "demo", "input": {"x": ' + "[" * 5_000 + "]" * 5_000 + "}}"


@pytest.fixture(params=[True, False], ids=["debug", "production"])
def debug(request: pytest.FixtureRequest, settings: Any) -> bool:
    settings.DEBUG = request.param
    return bool(request.param)


def api(user: Any) -> Client:
    return Client(headers={"Authorization": f"Bearer {access_token(user)}"}, raise_request_exception=False)


def assert_error(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert body["code"] == code and isinstance(body["detail"], str) and body["detail"]
    assert "Traceback" not in response.content.decode()


def test_a_deeply_nested_body_is_400_invalid_json(debug: bool, alice: Any) -> None:
    response = api(alice).post("/api/runs/", DEEP_INPUT, content_type="application/json")
    assert_error(response, 400, "invalid_json")
    assert "nested more than 32 levels" in response.json()["detail"]


def test_sign_in_with_a_hostile_body_is_400_invalid_json(debug: bool, alice: Any) -> None:
    for body in ["[" * 3_000, '{"username": NaN}', "\xff"]:
        assert_error(Client().post("/api/auth/token/", body, content_type="application/json"), 400, "invalid_json")


def test_an_unknown_api_url_is_a_json_404(debug: bool, alice: Any) -> None:
    assert_error(api(alice).get("/api/nothing-here/"), 404, "not_found")
    assert_error(api(alice).get("/api/runs/not-a-uuid/"), 404, "not_found")


def test_a_body_over_the_upload_limit_is_a_json_400(debug: bool, alice: Any, settings: Any) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    body = '{"agent": "demo", "input": {"pad": "' + "x" * 2048 + '"}}'
    assert_error(api(alice).post("/api/runs/", body, content_type="application/json"), 400, "bad_request")


def test_an_unhandled_exception_is_a_json_500_and_is_logged(
    debug: bool, alice: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(**kwargs: Any) -> Any:
        raise RuntimeError("internal detail that must not leak")

    monkeypatch.setattr("agents.views.runs_for_user", broken)
    response = api(alice).get("/api/runs/")
    assert_error(response, 500, "server_error")
    assert b"internal detail" not in response.content
    assert any(record.exc_info and "internal detail" in str(record.exc_info[1]) for record in caplog.records)


def test_a_database_error_is_a_json_503_unavailable(debug: bool, alice: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def down(**kwargs: Any) -> Any:
        raise OperationalError("connection refused")

    monkeypatch.setattr("agents.views.runs_for_user", down)
    assert_error(api(alice).get("/api/runs/"), 503, "unavailable")


def test_a_database_refusal_is_a_bug_not_an_outage(debug: bool, alice: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """DataError, IntegrityError and the like say the query was wrong: retrying would not help."""

    def refused(**kwargs: Any) -> Any:
        raise DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes")

    monkeypatch.setattr("agents.views.runs_for_user", refused)
    assert_error(api(alice).get("/api/runs/"), 500, "server_error")


def test_nul_in_run_input_is_a_400_not_a_failed_write(alice: Any) -> None:
    body = '{"agent": "calculator", "input": {"expression": "1\\u0000"}}'
    response = api(alice).post("/api/runs/", body, content_type="application/json")
    assert_error(response, 400, "invalid_json")
    assert "NUL characters" in response.json()["detail"]


def test_pages_outside_the_api_keep_django_errors(alice: Any, settings: Any) -> None:
    settings.DEBUG = False
    response = Client().get("/no-such-page/")
    assert response.status_code == 404 and not response["Content-Type"].startswith("application/json")


@pytest.mark.e2e
async def test_hostile_bodies_over_a_production_server(
    daphne_factory: Callable[..., DaphneServer], redis_url: str, collected_static: Path, alice: Any
) -> None:
    server = daphne_factory(redis_url=redis_url, **console_env(collected_static))
    token = access_token(alice)
    answers = await asyncio.gather(
        asyncio.to_thread(http_request, f"{server.http_url}/api/runs/", data=DEEP_INPUT.encode(), token=token),
        asyncio.to_thread(http_request, f"{server.http_url}/api/auth/token/", data=b"[" * 100_000),
        asyncio.to_thread(
            http_request,
            f"{server.http_url}/api/auth/token/",
            data=b"{}",
            headers={"Content-Type": "application/json; charset=no-such-charset"},
        ),
        asyncio.to_thread(http_request, f"{server.http_url}/api/missing/", token=token),
    )
    assert [answer.status for answer in answers] == [400, 400, 400, 404]
    assert [answer.json().get("code") for answer in answers] == ["invalid_json", "invalid_json", None, "not_found"]
    assert answers[2].json() == {"username": ["This field is required."], "password": ["This field is required."]}
    assert "RecursionError" not in server.log() and "Traceback" not in server.log()
