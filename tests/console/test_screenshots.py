"""Screenshots of what users and operators see, from real runs.

``make screenshots`` writes them to docs/screenshots/ (``SCREENSHOTS_DIR``);
the test suite takes the same ones into a temporary directory, so the
command keeps working.
"""

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from playwright.sync_api import expect

from tests.console.conftest import PASSWORD, ConsolePage

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SHOTS = ("console-live-run.png", "console-finished-run.png", "console-failed-run.png", "admin-run-timeline.png")


def test_screenshots_of_the_console_and_the_admin(
    open_console: Callable[..., ConsolePage], console_user: Callable[..., Any], tmp_path: Path
) -> None:
    out = Path(os.environ.get("SCREENSHOTS_DIR") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    console_user("demo", staff=True)
    console = open_console(viewport={"width": 1280, "height": 900})
    page = console.page
    console.login("demo")

    finished = console.start("calculator", {"expression": "(17 + 25) * 3 / 2"})
    console.expect_event("agent_completed")
    failed = console.start("demo", {"steps": 2, "delay": 0.05, "fail": True})
    console.expect_event("agent_error")

    console.start("demo", {"steps": 8, "delay": 0.4})
    console.poll(lambda: len(console.timeline()) >= 7, what="the run to be under way")
    expect(page.locator("#run-status")).to_have_text("running")
    page.screenshot(path=out / "console-live-run.png")
    console.expect_event("agent_completed", timeout_ms=15_000)

    page.locator(f'#runs li[data-run="{finished}"] button').click()
    console.expect_event("agent_completed")
    page.screenshot(path=out / "console-finished-run.png", full_page=True)
    page.locator(f'#runs li[data-run="{failed}"] button').click()
    console.expect_event("agent_error")
    expect(page.locator("#run-outcome")).to_have_text("exception: Failing on purpose: the input asked for fail=true.")
    page.screenshot(path=out / "console-failed-run.png", full_page=True)

    page.goto(f"{console.server.http_url}/admin/login/?next=/admin/agents/agentrun/{failed}/change/")
    page.get_by_label("Username").fill("demo")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("table.run-timeline tbody tr").last).to_contain_text("agent_error")
    page.screenshot(path=out / "admin-run-timeline.png", full_page=True)

    for name in SHOTS:
        data = (out / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000, name
