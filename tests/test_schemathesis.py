"""Schemathesis over every operation of /api/schema/, against a real server, signed in as a real user.

Each operation gets examples, coverage and fuzzed cases, then stateful
sequences along the schema's links (start a run, read it, cancel it). Any
500, or an answer the schema does not describe (status, content type,
headers, body), fails the test.
"""

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from tests.conftest import IN_CI
from tests.servers import DaphneServer
from tests.test_openapi import OPERATIONS

# The checks on what the server answers. Left out: positive_data_acceptance and
# negative_data_rejection, which judge the schema's constraints on requests:
# the server refuses bodies the schema cannot describe (strings with NUL or a
# lone surrogate, JSON nested deeper than JSON_MAX_DEPTH, an agent's own input
# rules), and schemathesis counts a body with an extra property as invalid
# where the API, like DRF, ignores it.
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "missing_required_header",
    "ignored_auth",
    "unsupported_method",
    "use_after_free",
    "ensure_resource_availability",
)
# About 30 s on this machine's 2 cores, for all four phases.
MAX_EXAMPLES = 25
RUN_TIMEOUT_SECONDS = 240
# Under CI the cases are the same every run, as with the suite's hypothesis profile.
CI_SEED = 20261201


def test_schemathesis_finds_no_server_error_and_no_answer_off_the_schema(
    api_fuzz_server: tuple[DaphneServer, str], tmp_path: Path
) -> None:
    server, token = api_fuzz_server
    seed = CI_SEED if IN_CI else uuid.uuid4().int % 2**32
    report = tmp_path / "report.json"
    command = [
        str(Path(sys.executable).with_name("st")),
        "run",
        f"{server.http_url}/api/schema/?format=json",
        "--header",
        f"Authorization: Bearer {token}",
        "--checks",
        ",".join(CHECKS),
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(seed),
        "--workers",
        "1",
        "--request-timeout",
        "10",
        "--report",
        "json",
        "--report-json-path",
        str(report),
    ]
    result = subprocess.run(
        command,
        cwd=tmp_path,  # (where it keeps its own files)
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_SECONDS,
        env={**os.environ, "NO_COLOR": "1"},
    )
    output = f"seed {seed}\n{result.stdout}\n{result.stderr}"
    assert result.returncode == 0, output
    summary: dict[str, Any] = json.loads(report.read_text())
    assert summary["failures"] == [] and summary["errors"] == [], output
    assert summary["operations"]["tested"] == summary["operations"]["total"] == len(OPERATIONS), output
    assert {phase: state["status"] for phase, state in summary["phases"].items()} == dict.fromkeys(
        ("examples", "coverage", "fuzzing", "stateful"), "success"
    ), output
    # The stateful phase followed the links: a run started, then read or cancelled by its id.
    links = re.search(r"API Links:\s+(\d+) covered / (\d+) selected", result.stdout)
    assert links is not None and int(links[1]) >= 2, output
    server.assert_log_clean()
