"""python manage.py run_agent, as a real subprocess: output, exit codes, Ctrl-C."""

import os
import signal
import subprocess
import sys
from typing import Any

import pytest

from agents.models import AgentRun, RunStatus
from notifications.models import Event
from tests.conftest import test_database_url
from tests.servers import ROOT, LineReader

TIMEOUT_SECONDS = 30


def command(*args: str) -> list[str]:
    return [sys.executable, "manage.py", "run_agent", *args]


def environment() -> dict[str, str]:
    env = {**os.environ, "DATABASE_URL": test_database_url(), "PYTHONUNBUFFERED": "1"}
    env.pop("REDIS_URL", None)  # In-memory layer: the command's own process is enough here.
    return env


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(*args),
        cwd=ROOT,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
        check=False,
    )


def test_completed_run_prints_its_events_and_exits_0(alice: Any) -> None:
    result = run("calculator", "--user", "alice", "--input", '{"expression": "2*(3+4)"}')
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[1] for line in lines] == [
        "agent_started",
        "agent_thinking",
        "tool_executing",
        "tool_completed",
        "agent_thinking",
        "agent_completed",
    ]
    assert lines[-1].split(None, 2)[2].startswith('{"result": 14,')
    assert AgentRun.objects.get().status == RunStatus.COMPLETED
    assert Event.objects.filter(user=alice).count() == 6


@pytest.mark.parametrize(
    ("args", "code", "status"),
    [
        (("demo", "--input", '{"fail": true, "delay": 0}'), 1, RunStatus.FAILED),
        (("calculator", "--input", '{"expression": "1/0"}'), 1, RunStatus.FAILED),
        (("demo", "--input", '{"steps": 2, "delay": 5}', "--timeout", "0.2"), 124, RunStatus.TIMED_OUT),
    ],
)
def test_exit_status_follows_the_outcome(alice: Any, args: tuple[str, ...], code: int, status: str) -> None:
    result = run(args[0], "--user", "alice", *args[1:])
    assert result.returncode == code, result.stdout + result.stderr
    assert AgentRun.objects.get().status == status
    assert result.stdout.splitlines()[-1].split()[1] == "agent_error"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("nope", "--user", "alice"), "Unknown agent 'nope'"),
        (("demo", "--user", "nobody"), "No user named 'nobody'."),
        (("demo", "--user", "alice", "--input", "{not json"), "--input: Not valid JSON"),
        (("demo", "--user", "alice", "--input", "[" * 5_000 + "]" * 5_000), "--input: JSON nested more than 32"),
        (("demo", "--user", "alice", "--input", "[1]"), "input must be a JSON object, got list."),
        (("demo", "--user", "alice", "--timeout", "-1"), "timeout must be a number of seconds above 0"),
    ],
)
def test_bad_usage_exits_2_with_the_reason(alice: Any, args: tuple[str, ...], message: str) -> None:
    result = run(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert not AgentRun.objects.exists()


def test_ctrl_c_cancels_the_run_cleanly(alice: Any) -> None:
    process = subprocess.Popen(
        command("demo", "--user", "alice", "--input", '{"steps": 50, "delay": 0.2}'),
        cwd=ROOT,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        output = LineReader(process.stdout)
        output.until("agent_thinking", timeout=TIMEOUT_SECONDS)
        process.send_signal(signal.SIGINT)
        rest, errors = process.communicate(timeout=10)
        stdout = "\n".join(output.lines) + "\n" + output.buffer.decode() + rest.decode()
        stderr = errors.decode()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    assert process.returncode == 130, stderr
    assert stdout.splitlines()[-1].split()[1] == "agent_error"
    assert "The run was cancelled from the command line." in stdout
    assert AgentRun.objects.get().status == RunStatus.CANCELLED
    assert "Traceback" not in stderr
