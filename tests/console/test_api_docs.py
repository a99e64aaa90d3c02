"""The API docs page (/api/docs/) in Chromium, against a production server: Swagger UI from our own static files."""

from collections.abc import Callable
from typing import Any

from playwright.sync_api import Request, expect

from tests.console.conftest import PASSWORD, ConsolePage
from tests.servers import http_request
from tests.test_openapi import OPERATIONS


def test_the_docs_page_shows_every_operation_and_tries_one_under_the_strict_policy(
    open_console: Callable[..., ConsolePage], console_user: Callable[..., Any]
) -> None:
    console = open_console()
    page = console.page
    requested: list[str] = []
    failed: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.on("requestfailed", lambda request: failed.append(_failure(request)))

    response = page.goto(console.server.http_url + "/api/docs/")
    assert response is not None and response.status == 200
    assert "script-src 'self'" in response.headers["content-security-policy"]
    # Every operation is listed, with its id.
    expect(page.locator(".opblock")).to_have_count(len(OPERATIONS))
    shown = sorted(page.locator(".opblock-summary-operation-id").all_inner_texts())
    assert shown == sorted(OPERATIONS)

    # Sign in outside the page, then authorize the page with the access token and try an operation.
    console_user("reader")
    answer = http_request(
        console.server.http_url + "/api/auth/token/", body={"username": "reader", "password": PASSWORD}
    )
    assert answer.status == 200, answer.body
    page.get_by_role("button", name="Authorize").first.click()
    page.locator(".auth-container input").fill(answer.json()["access"])
    page.locator(".auth-btn-wrapper button.authorize").click()
    page.locator(".btn-done").click()
    operation = page.locator("#operations-agents-agents_list")
    operation.locator(".opblock-summary").click()
    operation.get_by_role("button", name="Try it out").click()
    operation.get_by_role("button", name="Execute").click()
    expect(operation.locator(".live-responses-table tbody .response-col_status")).to_have_text("200")
    expect(operation.locator(".live-responses-table tbody .microlight").first).to_contain_text('"name": "calculator"')

    # Everything came from this server, nothing failed or was blocked (console errors fail the fixture).
    assert failed == []
    assert requested and all(url.startswith(console.server.http_url + "/") for url in requested), requested
    assert any("/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle." in url for url in requested)


def _failure(request: Request) -> str:
    return f"{request.method} {request.url}: {request.failure}"
