"""agents.services: starting rules, limits, and reaping lost runs."""

import math
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.db import transaction
from django.utils import timezone
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from agents.exceptions import InvalidRunInput, RunFinished, RunNotFound, RunRefused, TooManyRuns, UnknownAgent
from agents.models import AgentRun, RunStatus
from agents.services import _cancel_request, run_create, runs_reap_lost
from notifications.models import Event
from tests.agents.conftest import BUILTIN_AGENTS, deeply_nested, documented_input, run_inputs, run_timeouts
from tests.hostile import hostile_text, json_depth, mostly, sendable, strings_in


@pytest.mark.parametrize(
    ("agent", "run_input", "run_timeout", "error", "message"),
    [
        ("nope", {}, None, UnknownAgent, "Unknown agent 'nope'"),
        ("demo", [1, 2], None, InvalidRunInput, "input must be a JSON object, got list."),
        ("demo", {"steps": 0}, None, InvalidRunInput, "steps must be an integer from 1 to 50."),
        ("demo", {"steps": True}, None, InvalidRunInput, "steps must be an integer"),
        ("demo", {"delay": -1}, None, InvalidRunInput, "delay must be a number of seconds"),
        ("demo", {"fail": "yes"}, None, InvalidRunInput, "fail must be true or false."),
        ("demo", {"colour": "red"}, None, InvalidRunInput, "unknown field(s) colour"),
        ("calculator", {}, None, InvalidRunInput, 'exactly one field, "expression"'),
        ("calculator", {"expression": "   "}, None, InvalidRunInput, "expression must be a non-empty string."),
        ("demo", {"pad": "x" * 20_000}, None, InvalidRunInput, "the limit is 16384"),
        ("demo", {"x": deeply_nested(5_000)}, None, InvalidRunInput, "JSON nested more than 32 levels deep"),
        ("demo", {"x": float("nan")}, None, InvalidRunInput, "input must be JSON: Not JSON-serialisable"),
        ("calculator", {"expression": "\ud800"}, None, InvalidRunInput, "input must be JSON: A string holds a lone"),
        ("demo", {}, 0, InvalidRunInput, "timeout must be a number of seconds above 0 and at most 600."),
        ("demo", {}, 601, InvalidRunInput, "at most 600"),
        ("demo", {}, "10", InvalidRunInput, "timeout must be a number"),
    ],
)
def test_bad_starts_are_refused_with_the_reason_and_create_nothing(
    alice: Any, agent: str, run_input: object, run_timeout: object, error: type, message: str
) -> None:
    with pytest.raises(error) as refused:
        run_create(user_id=alice.pk, agent=agent, input=run_input, run_timeout=run_timeout)
    assert message in str(refused.value)
    assert not AgentRun.objects.exists()


def test_timeout_defaults_from_settings_and_can_be_overridden(alice: Any, settings: Any) -> None:
    settings.AGENT_RUN_TIMEOUT_SECONDS = 42
    assert run_create(user_id=alice.pk, agent="demo", input={}).timeout_seconds == 42
    assert run_create(user_id=alice.pk, agent="demo", input={}, run_timeout=1.5).timeout_seconds == 1.5


def test_active_runs_per_user_are_bounded(alice: Any, bob: Any, settings: Any) -> None:
    settings.AGENT_MAX_ACTIVE_RUNS_PER_USER = 2
    first = run_create(user_id=alice.pk, agent="demo", input={})
    run_create(user_id=alice.pk, agent="demo", input={})
    with pytest.raises(TooManyRuns, match=r"You already have 2 runs going; the limit is 2\."):
        run_create(user_id=alice.pk, agent="demo", input={})
    run_create(user_id=bob.pk, agent="demo", input={})  # Another user's limit is their own.
    AgentRun.objects.filter(pk=first.pk).update(status=RunStatus.COMPLETED)
    run_create(user_id=alice.pk, agent="demo", input={})


def test_cancel_request_checks_owner_and_state(alice: Any, bob: Any) -> None:
    run = run_create(user_id=alice.pk, agent="demo", input={})
    with pytest.raises(RunNotFound):
        _cancel_request(user_id=bob.pk, run_id=run.pk)
    with pytest.raises(RunNotFound):
        _cancel_request(user_id=alice.pk, run_id=uuid.uuid4())
    assert _cancel_request(user_id=alice.pk, run_id=run.pk).cancel_requested_at is not None
    AgentRun.objects.filter(pk=run.pk).update(status=RunStatus.COMPLETED)
    with pytest.raises(RunFinished, match="already ended"):
        _cancel_request(user_id=alice.pk, run_id=run.pk)


def test_reaper_ends_runs_whose_process_died_exactly_once(alice: Any) -> None:
    long_ago = timezone.now() - timedelta(hours=1)
    lost = run_create(user_id=alice.pk, agent="demo", input={}, run_timeout=10)
    AgentRun.objects.filter(pk=lost.pk).update(status=RunStatus.RUNNING, started_at=long_ago)
    never_started = run_create(user_id=alice.pk, agent="demo", input={}, run_timeout=10)
    AgentRun.objects.filter(pk=never_started.pk).update(created_at=long_ago)
    healthy = run_create(user_id=alice.pk, agent="demo", input={}, run_timeout=10)
    AgentRun.objects.filter(pk=healthy.pk).update(status=RunStatus.RUNNING, started_at=timezone.now())

    assert runs_reap_lost(grace_seconds=60) == 2
    assert runs_reap_lost(grace_seconds=60) == 0
    for run in (lost, never_started):
        run.refresh_from_db()
        assert run.status == RunStatus.FAILED
        assert run.error == {"kind": "lost", "message": "The process running this agent stopped before the run ended."}
        [event] = Event.objects.filter(run_id=run.pk)
        assert event.event == "agent_error" and event.data["kind"] == "lost"
    healthy.refresh_from_db()
    assert healthy.status == RunStatus.RUNNING
    assert not Event.objects.filter(run_id=healthy.pk).exists()


# Properties: whatever a client asks for, a run is created by the documented rules or refused.


@pytest.fixture
def carol(db: None, django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("carol", password=None)


def as_stored_json(value: Any) -> tuple[int, int] | None:
    """The compact UTF-8 size and depth of ``value`` as JSON, or None if it is not JSON the database can store."""
    try:
        size, depth = len(sendable(value).encode()), json_depth(value)
    except (TypeError, ValueError):  # (UnicodeEncodeError included.)
        return None
    return None if any("\x00" in text for text in strings_in(value)) else (size, depth)


def expected_run(agent: str, run_input: Any, run_timeout: Any) -> tuple[dict[str, Any], float] | None:
    """The validated input and timeout of the run README "Agents" and docs/protocol.md promise, or None."""
    encoded = as_stored_json(run_input)
    if encoded is None or not isinstance(run_input, dict):
        return None
    if encoded[0] > django_settings.AGENT_INPUT_MAX_BYTES or encoded[1] > django_settings.JSON_MAX_DEPTH:
        return None
    validated = documented_input(agent, run_input)
    if validated is None:
        return None
    maximum = django_settings.AGENT_RUN_MAX_TIMEOUT_SECONDS
    if run_timeout is None:
        return validated, float(min(django_settings.AGENT_RUN_TIMEOUT_SECONDS, maximum))
    if type(run_timeout) not in (int, float) or not 0 < run_timeout <= maximum:
        return None
    return validated, float(run_timeout)


@example(agent="calculator", run_input={"expression": "\ud800"}, run_timeout=None)
@example(agent="calculator", run_input={"expression": "1\x00"}, run_timeout=None)
@example(agent="demo", run_input={}, run_timeout=600)
@example(agent="demo", run_input={}, run_timeout=600.0000001)
@example(agent="demo", run_input={}, run_timeout=math.nan)
@example(agent="demo", run_input={"steps": 50, "delay": 30.0, "fail": True}, run_timeout=5e-324)
@settings(max_examples=200)
@given(
    agent=mostly(st.sampled_from(BUILTIN_AGENTS), hostile_text),
    run_input=run_inputs,
    run_timeout=run_timeouts,
)
def test_any_start_creates_the_documented_run_or_is_refused(
    carol: Any, agent: str, run_input: Any, run_timeout: Any
) -> None:
    """Any agent name, input and timeout: a queued run whose input and timeout are what the docs
    promise (README "Agents", docs/protocol.md), or ``UnknownAgent``/``InvalidRunInput`` and no run.

    Each example runs in a savepoint that is rolled back: no run counts towards the next one's limit.
    """
    with transaction.atomic():
        try:
            run = run_create(user_id=carol.pk, agent=agent, input=run_input, run_timeout=run_timeout)
        except RunRefused as exc:
            event(f"refused: {type(exc).__name__}")
            assert exc.detail
            if agent in BUILTIN_AGENTS:
                assert isinstance(exc, InvalidRunInput)
                assert expected_run(agent, run_input, run_timeout) is None, exc.detail
            else:
                assert isinstance(exc, UnknownAgent)
            assert not AgentRun.objects.exists()
            return
        event(f"created: {agent}")
        assert agent in BUILTIN_AGENTS
        assert expected_run(agent, run_input, run_timeout) == (run.input, run.timeout_seconds)
        stored = AgentRun.objects.get(pk=run.pk)
        assert (stored.agent, stored.status, stored.user_id) == (agent, RunStatus.QUEUED, carol.pk)
        assert (stored.input, stored.timeout_seconds) == (run.input, run.timeout_seconds)
        transaction.set_rollback(True)
