"""The web console in a real browser, against a real daphne, Redis and database."""

import io
import json
import re
import signal
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection, connections
from playwright.sync_api import expect

from agents.models import AgentRun
from agents.services import run_create
from notifications.models import Event
from notifications.services import event_record
from tests.conftest import LIFECYCLE_OF_TWO_STEPS, test_database_url
from tests.console.conftest import ConsolePage, console_env
from tests.servers import DaphneServer, WorkerProcess

# What a browser reports while its server is down.
SERVER_DOWN_ERRORS = ["WebSocket connection to", "Failed to load resource", "ERR_CONNECTION_REFUSED"]


def outside_playwright(work: Callable[[], object]) -> None:
    """Run ``work`` in a thread of its own: it publishes with async_to_sync, which Playwright's loop forbids here."""

    def run() -> None:
        try:
            work()
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(run).result(timeout=10)


def logged(run_id: str) -> list[tuple[int, str]]:
    """A run's events as the log holds them: (seq, event) in seq order."""
    return list(Event.objects.filter(run_id=run_id).order_by("seq").values_list("seq", "event"))


def test_sign_in_start_demo_and_watch_every_event_arrive_live_in_order(
    open_console: Callable[..., ConsolePage], console_user: Callable[..., Any]
) -> None:
    alice = console_user("alice")
    console = open_console()
    console.login("alice")

    run_id = console.start("demo", {"steps": 2, "delay": 0.05})
    console.expect_event("agent_completed")
    expect(console.page.locator("#run-status")).to_have_text("completed")
    expect(console.page.locator(f'#runs li[data-run="{run_id}"] .status')).to_have_text("completed")

    assert [event for _, event in console.timeline()] == LIFECYCLE_OF_TWO_STEPS
    assert console.timeline() == logged(run_id)
    # Live: each came over the socket once (a run started here is never fetched over REST).
    live = [(frame["seq"], frame["event"]) for frame in console.sockets.received_of("event")]
    assert live == logged(run_id)
    # The token went as a subprotocol, never in the URL.
    assert [socket.url for socket in console.sockets.opened] == [console.server.ws_url]
    # The page acks what it has shown.
    last = logged(run_id)[-1][0]
    console.poll(lambda: console.sockets.sent_of("ack")[-1:] == [{"type": "ack", "seq": last}], what="the ack")
    console.poll(lambda: _acked_seq(alice) == last, what="the ack to be stored")
    # The thought text, tool arguments and result are on the page as the log has them.
    thoughts = Event.objects.filter(run_id=run_id, event="agent_thinking").order_by("seq")
    expect(console.page.locator("#timeline .thought")).to_have_text([e.data["thought"] for e in thoughts])
    expect(console.page.locator("#timeline li[data-event=tool_completed] .event-title").first).to_contain_text(
        "word_count returned in"
    )


def test_a_langgraph_agent_runs_from_the_console_with_its_thoughts_and_tool_call(
    open_console: Callable[..., ConsolePage], console_user: Callable[..., Any]
) -> None:
    console_user("alice")
    console = open_console()
    console.login("alice")
    run_id = console.start("langgraph_words", {"text": "one two three"})
    console.expect_event("agent_completed")
    assert console.timeline() == logged(run_id)
    assert [event for _, event in console.timeline()] == [
        "agent_started",
        *["agent_thinking", "agent_thinking", "tool_executing", "tool_completed", "agent_thinking"],
        "agent_completed",
    ]
    expect(console.page.locator("#timeline .thought").last).to_have_text("The text has 3 words.")
    expect(console.page.locator("#timeline li[data-event=tool_completed] .event-title")).to_contain_text(
        "count_words returned in"
    )


def _acked_seq(user: Any) -> int:
    user.event_stream.refresh_from_db()
    return int(user.event_stream.acked_seq)


def test_wrong_password_is_refused_clearly_and_nothing_is_stored(
    open_console: Callable[..., ConsolePage], console_user: Callable[..., Any]
) -> None:
    console_user("alice")
    console = open_console()
    console.tolerated += ["401 (Unauthorized)", "HTTP 401: "]
    console.open()
    console.page.get_by_label("Username").fill("alice")
    console.page.get_by_label("Password").fill("not the password")
    console.page.get_by_role("button", name="Sign in").click()
    expect(console.page.locator("#login-error")).to_have_text("Wrong username or password.")
    assert console.page.evaluate("() => sessionStorage.length") == 0
    assert console.sockets.opened == []
    expect(console.page.locator("#connection")).to_have_attribute("data-state", "signed-out")


def test_cancel_a_running_run(open_console: Callable[..., ConsolePage], console_user: Callable[..., Any]) -> None:
    console_user("alice")
    console = open_console()
    console.login("alice")
    run_id = console.start("demo", {"steps": 50, "delay": 0.2})
    console.expect_event("agent_thinking")
    # (The start's response, which says queued, often lands after the first events: it must not win.)
    expect(console.page.locator("#run-status")).to_have_text("running")
    expect(console.page.locator("#run-duration")).to_contain_text("so far")
    console.page.get_by_role("button", name="Cancel run").click()

    console.expect_event("agent_error")
    expect(console.page.locator("#timeline li[data-event=agent_error]")).to_contain_text("Error: cancelled")
    expect(console.page.locator("#run-status")).to_have_text("cancelled")
    expect(console.page.get_by_role("button", name="Cancel run")).to_be_hidden()
    assert AgentRun.objects.get(pk=run_id).status == "cancelled"
    events = logged(run_id)
    assert console.timeline() == events
    assert [event for _, event in events].count("agent_error") == 1 and events[-1][1] == "agent_error"
    assert "agent_completed" not in [event for _, event in events]


def test_page_survives_a_server_restart_and_resumes_without_duplicate_or_gap(
    open_console: Callable[..., ConsolePage],
    console_user: Callable[..., Any],
    daphne_factory: Callable[..., DaphneServer],
    redis_url: str,
    collected_static: Path,
) -> None:
    server = daphne_factory(redis_url=redis_url, **console_env(collected_static))
    alice = console_user("alice")
    console = open_console(server)
    console.tolerated.extend(SERVER_DOWN_ERRORS)
    console.login("alice")
    run_id = console.start("demo", {"steps": 40, "delay": 0.1})
    console.poll(lambda: len(console.timeline()) >= 4, what="the run to be under way")

    # A deploy: SIGTERM closes every socket with 1001 and cancels the server's runs.
    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    console.expect_state("reconnecting")
    seen_before = max(frame["seq"] for frame in console.sockets.received_of("event"))
    # Something happens while the page is away: a run started elsewhere (the CLI, another tab).
    offline_run = run_create(user_id=alice.pk, agent="calculator", input={"expression": "1"}).id
    outside_playwright(
        lambda: event_record(
            user_id=alice.pk, event="agent_started", run_id=offline_run, agent="calculator", data={"input": {}}
        )
    )
    server.restart()

    console.expect_state("live", timeout_ms=20_000)
    console.expect_event("agent_error")
    expect(console.page.locator("#run-status")).to_have_text("cancelled")
    expect(console.page.locator(f'#runs li[data-run="{offline_run}"]')).to_contain_text("calculator")
    # Every event of the run once, in order: the ones before the restart and the end written during it.
    assert console.timeline() == logged(run_id)
    assert len(console.sockets.received_of("hello")) == 2  # (attempts while it was down got no hello)
    assert console.sockets.sent_of("resume") == [{"type": "resume", "after": seen_before}]
    server.assert_log_clean()


def test_a_second_user_never_sees_the_first_users_runs(
    open_console: Callable[..., ConsolePage], console_user: Callable[..., Any]
) -> None:
    console_user("alice")
    console_user("bob")
    alice = open_console()
    bob = open_console()
    alice.login("alice")
    bob.login("bob")
    run_id = alice.start("demo", {"steps": 1, "delay": 0})
    alice.expect_event("agent_completed")

    # Bob's page, live and after a reload (history from the API), even when asked for Alice's run.
    for attempt in ("live", "reload"):
        if attempt == "reload":
            bob.page.goto(f"{bob.server.http_url}/#run={run_id}")
            bob.expect_state("live")
        expect(bob.page.locator("#runs")).to_have_attribute("data-loaded", "true")
        expect(bob.page.locator("#runs li")).to_have_count(0)
        expect(bob.page.locator("#runs-empty")).to_be_visible()
        expect(bob.page.locator("#timeline li")).to_have_count(0)
    assert bob.sockets.received_of("event") == []
    assert run_id not in json.dumps(bob.sockets.received)


def test_earlier_runs_and_their_events_load_from_the_api(
    open_console: Callable[..., ConsolePage], console_user: Callable[..., Any]
) -> None:
    console_user("alice")
    first = open_console()
    first.login("alice")
    run_id = first.start("calculator", {"expression": "6*7"})
    first.expect_event("agent_completed")

    later = open_console()  # another browser: nothing in memory, only what the API says
    later.login("alice")
    expect(later.page.locator(f'#runs li[data-run="{run_id}"] .status')).to_have_text("completed")
    with later.page.expect_response(lambda response: f"/api/events/?run={run_id}" in response.url) as fetched:
        later.page.locator(f'#runs li[data-run="{run_id}"] button').click()
    assert fetched.value.status == 200
    later.expect_event("agent_completed")
    assert later.timeline() == logged(run_id)
    expect(later.page.locator("#timeline li[data-event=agent_completed] pre")).to_have_text("42")
    expect(later.page.locator("#run-outcome")).to_have_text("Result: 42")


def test_agent_text_is_shown_as_text_never_as_markup(
    open_console: Callable[..., ConsolePage], console_user: Callable[..., Any]
) -> None:
    console_user("alice")
    console = open_console()
    console.login("alice")
    expression = '<img src=x onerror="window.pwned=1">1+'
    run_id = console.start("calculator", {"expression": expression})
    console.expect_event("agent_error")
    expect(console.page.locator("#run-status")).to_have_text("failed")
    expect(console.page.locator("#timeline .thought").first).to_contain_text(expression)
    assert console.page.locator("#timeline img").count() == 0
    assert console.page.evaluate("() => window.pwned") is None
    assert console.timeline() == logged(run_id)


def test_bad_input_gets_a_clear_error_and_starts_nothing(
    open_console: Callable[..., ConsolePage], console_user: Callable[..., Any]
) -> None:
    console_user("alice")
    console = open_console()
    console.tolerated += ["400 (Bad Request)", "HTTP 400: "]
    console.login("alice")
    console.page.get_by_label("Agent").select_option("demo")
    console.page.get_by_label("Input (JSON)").fill("{steps: 2")
    console.page.get_by_role("button", name="Start", exact=True).click()
    expect(console.page.locator("#start-error")).to_contain_text("Input is not valid JSON")

    console.page.get_by_label("Input (JSON)").fill('{"steps": 0}')
    console.page.get_by_role("button", name="Start", exact=True).click()
    expect(console.page.locator("#start-error")).to_contain_text("steps must be an integer from 1 to 50")
    expect(console.page.locator("#start-error")).to_contain_text("invalid_message")
    assert not AgentRun.objects.exists()


def test_token_is_refreshed_before_it_expires_and_the_socket_stays_up(
    open_console: Callable[..., ConsolePage],
    console_user: Callable[..., Any],
    daphne_factory: Callable[..., DaphneServer],
    redis_url: str,
    collected_static: Path,
) -> None:
    # Two-second tokens (as little as one, since exp is in whole seconds): the
    # page refreshes each after 0.8 s and hands it to the socket.
    server = daphne_factory(redis_url=redis_url, **console_env(collected_static, JWT_ACCESS_LIFETIME_SECONDS="2"))
    console_user("alice")
    console = open_console(server)
    console.login("alice")
    # Three refreshes: by the third, the token the socket opened with has expired.
    console.poll(lambda: len(console.sockets.received_of("auth.ok")) >= 3, what="three auth.ok", timeout_ms=8_000)
    run_id = console.start("demo", {"steps": 1, "delay": 0})
    console.expect_event("agent_completed")
    assert console.timeline() == logged(run_id)
    assert len(console.sockets.opened) == 1, "the socket was reopened: the refresh did not reach it"
    assert all(frame["token"] for frame in console.sockets.sent_of("auth"))
    assert console.sockets.received_of("error") == []


def test_log_out_ends_the_session_here_and_on_the_server(
    open_console: Callable[..., ConsolePage], console_user: Callable[..., Any]
) -> None:
    console_user("alice")
    console = open_console()
    console.login("alice")
    refresh = console.page.evaluate("() => sessionStorage.getItem('console.refresh')")
    assert refresh
    # The page signs out at once and blacklists the token in the background: wait for the server's answer.
    with console.page.expect_response(lambda r: r.url.endswith("/api/auth/token/blacklist/")) as blacklisted:
        console.page.get_by_role("button", name="Log out").click()
    assert blacklisted.value.status == 200
    console.expect_state("signed-out")
    expect(console.page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert console.page.evaluate("() => sessionStorage.length") == 0
    console.poll(lambda: console.sockets.opened[0].is_closed(), what="the socket to close")
    # The refresh token was blacklisted: it no longer buys an access token.
    request = urllib.request.Request(
        f"{console.server.http_url}/api/auth/token/refresh/",
        data=json.dumps({"refresh": refresh}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    refused.value.close()
    assert refused.value.code == 401


def test_keyboard_only_on_a_phone_sized_screen(
    open_console: Callable[..., ConsolePage], console_user: Callable[..., Any]
) -> None:
    console_user("alice")
    console = open_console(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    console.open()
    keyboard = console.page.keyboard
    console.page.get_by_label("Username").focus()
    keyboard.type("alice")
    keyboard.press("Tab")
    keyboard.type("correct horse battery staple")
    keyboard.press("Enter")
    console.expect_state("live")
    expect(console.page.locator("#agent option")).not_to_have_count(0)

    console.page.get_by_label("Agent").focus()
    for _ in range(3):  # input, timeout, Start
        keyboard.press("Tab")
    assert console.page.evaluate("() => document.activeElement.textContent") == "Start"
    keyboard.press("Enter")
    console.expect_event("agent_completed")
    # Nothing wider than the phone's screen.
    assert console.page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")


def test_the_printed_demo_login_works_in_the_console(
    open_console: Callable[..., ConsolePage], console_server: DaphneServer, transactional_db: None
) -> None:
    printed = io.StringIO()
    call_command("demo_setup", url=f"{console_server.http_url}/", stdout=printed)
    output = printed.getvalue()
    url = re.search(r"Console: (\S+)", output)
    login = re.search(r"Login: +(\S+) / (\S+)", output)
    assert url and login, output
    console = open_console()
    console.page.goto(url.group(1))
    console.page.get_by_label("Username").fill(login.group(1))
    console.page.get_by_label("Password").fill(login.group(2))
    console.page.get_by_role("button", name="Sign in").click()
    console.expect_state("live")
    run_id = console.start("demo")
    console.expect_event("agent_completed")
    assert console.timeline() == logged(run_id)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="workers need PostgreSQL; on SQLite runs stay in process")
def test_runs_started_and_cancelled_from_the_console_execute_on_a_worker(
    open_console: Callable[..., ConsolePage],
    console_user: Callable[..., Any],
    daphne_factory: Callable[..., DaphneServer],
    worker_factory: Callable[..., WorkerProcess],
    redis_url: str,
    collected_static: Path,
) -> None:
    server = daphne_factory(redis_url=redis_url, **console_env(collected_static, AGENT_EXECUTION="worker"))
    worker = worker_factory(database_url=test_database_url(), redis_url=redis_url)
    console_user("alice")
    console = open_console(server)
    console.login("alice")

    finished = console.start("demo", {"steps": 2, "delay": 0.05})
    console.expect_event("agent_completed")
    assert console.timeline() == logged(finished)
    assert [event for _, event in console.timeline()] == LIFECYCLE_OF_TWO_STEPS

    cancelled = console.start("demo", {"steps": 50, "delay": 0.2})
    console.expect_event("agent_thinking")
    console.page.get_by_role("button", name="Cancel run").click()
    console.expect_event("agent_error")
    expect(console.page.locator("#run-status")).to_have_text("cancelled")
    assert console.timeline() == logged(cancelled)
    assert worker.executed() == {finished, cancelled}
    console.tolerated.extend(SERVER_DOWN_ERRORS)  # (the page may see the server go)
    server.stop()  # Its connections are not the session's to hold.
