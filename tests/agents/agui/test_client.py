"""The AG-UI endpoint driven by the official TypeScript client (@ag-ui/client's HttpAgent) over a real daphne."""

import asyncio
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.agents.agui.conftest import agui_validate
from tests.conftest import unavailable
from tests.servers import DaphneServer
from tests.wsclient import access_token

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("server_log_clean", "runs_stopped")]

CLIENT_DIR = Path(__file__).resolve().parents[3] / "tools" / "ag-ui"
CLIENT_TIMEOUT_SECONDS = 30.0


def official_client(url: str, token: str, props: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Run ``tools/ag-ui/run.mjs`` (HttpAgent.runAgent) against ``url``; its exit code and report."""
    node = shutil.which("node")
    if node is None or not (CLIENT_DIR / "node_modules" / "@ag-ui" / "client").is_dir():
        unavailable("Node.js or tools/ag-ui/node_modules is missing (run make setup): AG-UI client tests SKIPPED.")
    done = subprocess.run(
        [node, "run.mjs", url, token, json.dumps(props)],
        cwd=CLIENT_DIR,
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT_SECONDS,
        check=False,
    )
    assert done.stdout, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return done.returncode, report


async def test_the_official_client_runs_the_calculator(daphne: DaphneServer, alice: Any) -> None:
    url = f"{daphne.http_url}/api/ag-ui/calculator/"
    code, report = await asyncio.to_thread(official_client, url, access_token(alice), {"input": {"expression": "6*7"}})
    assert (code, report["error"], report["warnings"]) == (0, None, []), report
    types = [event["type"] for event in report["events"]]
    assert types == [
        "RUN_STARTED",
        "STEP_STARTED",
        *["REASONING_START", "REASONING_MESSAGE_START", "REASONING_MESSAGE_CONTENT"],
        *["REASONING_MESSAGE_END", "REASONING_END"],
        "TOOL_CALL_START",
        "TOOL_CALL_ARGS",
        "TOOL_CALL_END",
        "TOOL_CALL_RESULT",
        *["REASONING_START", "REASONING_MESSAGE_START", "REASONING_MESSAGE_CONTENT"],
        *["REASONING_MESSAGE_END", "REASONING_END"],
        "STEP_FINISHED",
        "RUN_FINISHED",
    ], types
    assert report["result"] == 42
    for event in report["events"]:
        agui_validate(event)


async def test_the_official_client_reports_a_failed_run(daphne: DaphneServer, alice: Any) -> None:
    url = f"{daphne.http_url}/api/ag-ui/demo/"
    code, report = await asyncio.to_thread(
        official_client, url, access_token(alice), {"input": {"steps": 1, "delay": 0, "fail": True}}
    )
    assert report["events"][-1]["type"] == "RUN_ERROR", report
    assert report["events"][-1]["code"] == "exception"
    assert "Failing on purpose" in report["events"][-1]["message"]
    # A valid stream that ends in RUN_ERROR: the client accepts it, and warns of nothing.
    assert (code, report["error"], report["warnings"]) == (0, None, []), report
    for event in report["events"]:
        agui_validate(event)
