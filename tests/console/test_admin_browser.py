"""An operator's path through the admin, in a real browser: from a username to a run's timeline."""

from collections.abc import Callable
from typing import Any

from playwright.sync_api import expect

from notifications.models import Event
from tests.console.conftest import PASSWORD, ConsolePage


def test_operator_finds_a_users_run_and_reads_its_timeline(
    open_console: Callable[..., ConsolePage], console_user: Callable[..., Any]
) -> None:
    console_user("alice")
    console_user("ops", staff=True)
    user = open_console()
    user.login("alice")
    run_id = user.start("demo", {"steps": 2, "delay": 0})
    user.expect_event("agent_completed")
    console_user("bob")
    other = open_console()
    other.login("bob")
    other.start("calculator", {"expression": "1+1"})
    other.expect_event("agent_completed")

    admin = open_console().page
    admin.goto(f"{user.server.http_url}/admin/")
    admin.get_by_label("Username").fill("ops")
    admin.get_by_label("Password").fill(PASSWORD)
    admin.get_by_role("button", name="Log in").click()

    # Events: narrow by agent, then by the user's name.
    admin.get_by_role("link", name="Events").click()
    rows = admin.locator("#result_list tbody tr")
    expect(rows).to_have_count(Event.objects.count())
    admin.locator("#changelist-filter").get_by_role("link", name="demo", exact=True).click()
    expect(rows).to_have_count(Event.objects.filter(agent="demo").count())
    admin.get_by_role("searchbox").fill("alice")
    admin.get_by_role("searchbox").press("Enter")
    expect(rows).to_have_count(Event.objects.filter(agent="demo", user__username="alice").count())
    # The run column leads to all of that run's events.
    admin.get_by_role("link", name=run_id).first.click()
    expect(rows).to_have_count(Event.objects.filter(run_id=run_id).count())

    # Runs: the run's page shows its events in order.
    admin.goto(f"{user.server.http_url}/admin/agents/agentrun/")
    admin.get_by_role("link", name=run_id).click()
    timeline = admin.locator("table.run-timeline tbody tr")
    logged = list(Event.objects.filter(run_id=run_id).order_by("seq").values_list("event", flat=True))
    expect(timeline.locator("td:nth-child(3)")).to_have_text(logged)
    expect(timeline.last).to_contain_text("agent_completed")
