"""Browser fixtures: Debian's chromium driven by Playwright, against a real daphne.

The server runs the production configuration (debug off, static files
collected, hashed and served by WhiteNoise), so the page under test is the
page users get. Tests here are sync: Playwright's sync API runs its own loop.
"""

import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, Playwright, WebSocket, expect, sync_playwright

from tests.asyncapi import FrameMismatch, contract
from tests.conftest import unavailable
from tests.servers import DaphneServer

# Every wait on the page is bounded by this unless a test says otherwise.
EXPECT_TIMEOUT_MS = 10_000
POLL_MS = 25
PASSWORD = "correct horse battery staple"

# Chromium as root, with no network beyond localhost: no sandbox (Playwright
# adds --no-sandbox), and nothing that phones home.
CHROMIUM_ARGS = [
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
    "--disable-gpu",
]


def chromium_path() -> str | None:
    return os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(autouse=True)
def orm_beside_playwright(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let these sync tests use the ORM while Playwright's loop runs in this thread.

    Playwright's sync API keeps an asyncio loop marked as running in the
    calling thread, which Django takes for an async context. The tests'
    ORM calls are plain sync code between Playwright calls, so the check does
    not apply (Playwright's documentation for Django suggests the same).
    """
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    path = chromium_path()
    if path is None:
        message = "No chromium found (install Debian's chromium package): the browser tests are SKIPPED."
        unavailable(message)
    browser = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS, timeout=30_000)
    yield browser
    browser.close()


def console_env(static_root: Path, **extra: str) -> dict[str, str]:
    """Production settings, reached over plain HTTP as on a private network (no TLS proxy in tests).

    A LangGraph run's thoughts are cut by kind, size and the run's structure
    only, not by the 50 ms window, which a loaded machine crosses between two
    tokens: the tests count them (the window is tested in tests/agents/langchain).
    """
    return {
        "DJANGO_DEBUG": "false",
        "DJANGO_HTTPS": "false",
        "DJANGO_STATIC_ROOT": str(static_root),
        "AGENT_THINKING_COALESCE_MS": "600000",
        **extra,
    }


@pytest.fixture(scope="session")
def console_server(daphne_factory: Callable[..., DaphneServer], redis_url: str, collected_static: Path) -> DaphneServer:
    """The shared console server, for tests that do not stop or reconfigure it."""
    return daphne_factory(redis_url=redis_url, **console_env(collected_static))


@pytest.fixture
def console_user(make_user: Callable[..., Any]) -> Callable[..., Any]:
    """Make a user who can sign in with ``PASSWORD``."""

    def make(username: str | None = None, *, staff: bool = False) -> Any:
        user = make_user(username)
        user.set_password(PASSWORD)
        user.is_staff = user.is_superuser = staff
        user.save()
        return user

    return make


@dataclass
class Sockets:
    """The page's WebSockets and every frame they carried, as the browser saw them."""

    opened: list[WebSocket] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)
    # Frames either way that docs/asyncapi.yaml does not describe; any fails the test (open_console).
    mismatches: list[str] = field(default_factory=list)

    def attach(self, socket: WebSocket) -> None:
        self.opened.append(socket)
        socket.on("framereceived", lambda payload: self._record(self.received, payload, contract().server_frame_check))
        socket.on("framesent", lambda payload: self._record(self.sent, payload, contract().client_frame_check))

    def _record(self, frames: list[dict[str, Any]], payload: str | bytes, check: Callable[[Any], None]) -> None:
        """Keep the frame, and its mismatch with the document if any (raising here would be lost in Playwright)."""
        frame = json.loads(payload)
        frames.append(frame)
        try:
            check(frame)
        except FrameMismatch as exc:
            self.mismatches.append(str(exc))

    def received_of(self, kind: str) -> list[dict[str, Any]]:
        return [frame for frame in self.received if frame["type"] == kind]

    def sent_of(self, kind: str) -> list[dict[str, Any]]:
        return [frame for frame in self.sent if frame["type"] == kind]


@dataclass
class ConsolePage:
    page: Page
    server: DaphneServer
    sockets: Sockets
    errors: list[str]
    # Substrings of browser errors a test expects (say, while its server is down).
    tolerated: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        errors = [error for error in self.errors if not any(text in error for text in self.tolerated)]
        return errors + self.sockets.mismatches

    def open(self) -> None:
        self.page.goto(self.server.http_url + "/")

    def login(self, username: str, password: str = PASSWORD) -> None:
        self.open()
        self.page.get_by_label("Username").fill(username)
        self.page.get_by_label("Password").fill(password)
        self.page.get_by_role("button", name="Sign in").click()
        self.expect_state("live")
        expect(self.page.locator("#username")).to_have_text(username)

    def expect_state(self, state: str, timeout_ms: int = EXPECT_TIMEOUT_MS) -> None:
        expect(self.page.locator("#connection")).to_have_attribute("data-state", state, timeout=timeout_ms)

    def start(self, agent: str, input: dict[str, Any] | None = None) -> str:
        """Start a run from the form; return its id once the page shows it selected."""
        self.page.get_by_label("Agent").select_option(agent)
        if input is not None:
            self.page.get_by_label("Input (JSON)").fill(json.dumps(input))
        shown = self.page.locator("#run-id")
        before = shown.inner_text() if shown.is_visible() else ""
        self.page.get_by_role("button", name="Start", exact=True).click()
        expect(shown).not_to_have_text(before)  # the new run is selected
        expect(self.page.locator("#run-title")).to_have_text(f"{agent} run")
        run_id = shown.inner_text()
        assert len(run_id) == 36, run_id
        return run_id

    def timeline(self) -> list[tuple[int, str]]:
        """The selected run's timeline as (seq, event), in page order."""
        items = self.page.locator("#timeline > li")
        return [
            (int(item.get_attribute("data-seq") or 0), item.get_attribute("data-event") or "") for item in items.all()
        ]

    def poll(self, predicate: Callable[[], bool], *, what: str, timeout_ms: int = EXPECT_TIMEOUT_MS) -> None:
        """Wait until ``predicate()`` holds, letting the page run meanwhile (its socket frames are recorded)."""
        for _ in range(timeout_ms // POLL_MS):
            if predicate():
                return
            self.page.wait_for_timeout(POLL_MS)
        assert predicate(), f"Timed out after {timeout_ms} ms waiting for {what}"

    def expect_event(self, event: str, *, count: int = 1, timeout_ms: int = EXPECT_TIMEOUT_MS) -> None:
        expect(self.page.locator(f"#timeline > li[data-event={event}]")).to_have_count(count, timeout=timeout_ms)


@pytest.fixture
def open_console(
    transactional_db: None, browser: Browser, console_server: DaphneServer
) -> Iterator[Callable[..., ConsolePage]]:
    """Open console pages, each in its own browser context (its own storage, as a separate user's browser).

    It asks for the database first so that it is torn down first: its pages close before the database
    is flushed. A page left open across the flush could still fetch, and be refused (401) because its
    user is gone.
    """
    contexts = []
    pages: list[ConsolePage] = []

    def open_page(server: DaphneServer = console_server, **context_args: Any) -> ConsolePage:
        context = browser.new_context(**context_args)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(EXPECT_TIMEOUT_MS)
        sockets = Sockets()
        page.on("websocket", sockets.attach)
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(f"uncaught: {error}"))
        page.on("console", lambda msg: errors.append(f"console.error: {msg.text}") if msg.type == "error" else None)
        page.on("response", lambda r: errors.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
        console = ConsolePage(page=page, server=server, sockets=sockets, errors=errors)
        pages.append(console)
        return console

    yield open_page
    for context in contexts:
        context.close()
    # A script error or a failed load (console.error) on any page fails the test.
    problems = [error for console in pages for error in console.problems()]
    assert not problems, problems
