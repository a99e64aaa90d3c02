"""agents.protocol: the run messages, parsed with the base ones (``RUN_PARSERS``)."""

import json
import uuid
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from agents.protocol import RUN_PARSERS, RunCancel, RunStart
from notifications.protocol import Ack, Auth, ClientMessage, Ping, Resume, client_message_parse
from tests.hostile import (
    BASE_TYPES,
    RUN_TYPES,
    frames_text,
    parsed_or_refused,
    sendable,
    shaped_messages,
    valid_messages,
)
from tests.notifications.test_protocol import base_frame

KINDS = BASE_TYPES + RUN_TYPES
MESSAGES = (Ping, Resume, Ack, Auth, RunStart, RunCancel)


def run_frame(message: ClientMessage | RunStart | RunCancel) -> dict[str, Any]:
    """The frame a client would send for ``message``."""
    match message:
        case RunStart(agent=agent, input=run_input, timeout=None):
            return {"type": "run.start", "agent": agent, "input": run_input}
        case RunStart(agent=agent, input=run_input, timeout=timeout):
            return {"type": "run.start", "agent": agent, "input": run_input, "timeout": timeout}
        case RunCancel(run_id=run_id):
            return {"type": "run.cancel", "run_id": str(run_id)}
    return base_frame(message)


def test_run_messages_parse() -> None:
    run_id = uuid.uuid4()
    assert client_message_parse('{"type": "run.start", "agent": "demo"}', RUN_PARSERS) == RunStart("demo", {})
    text = json.dumps({"type": "run.cancel", "run_id": str(run_id)})
    assert client_message_parse(text, RUN_PARSERS) == RunCancel(run_id)


@example(text='{"type": "run.cancel", "\\udfff": 1}')
@settings(max_examples=500)
@given(text=frames_text(KINDS))
def test_any_text_is_a_message_or_a_documented_error(text: str) -> None:
    parsed_or_refused(text, RUN_PARSERS, MESSAGES)


@settings(max_examples=200)
@given(frame=valid_messages(KINDS))
def test_valid_messages_round_trip(frame: dict[str, Any]) -> None:
    message = client_message_parse(json.dumps(frame), RUN_PARSERS)
    expected = dict(frame)
    if frame["type"] == "run.start":
        expected.setdefault("input", {})
        if expected.get("timeout", 0) is None:  # A null timeout counts as absent.
            del expected["timeout"]
    assert run_frame(message) == expected


@example(frame={"type": "run.start", "agent": "calculator", "input": {"expression": "\ud800"}}, ascii_only=True)
@settings(max_examples=300)
@given(frame=shaped_messages(KINDS) | valid_messages(KINDS), ascii_only=st.booleans())
def test_an_accepted_frame_can_be_sent_back_and_parses_to_the_same_message(
    frame: dict[str, Any], ascii_only: bool
) -> None:
    message = parsed_or_refused(json.dumps(frame, ensure_ascii=ascii_only), RUN_PARSERS, MESSAGES)
    if message is not None:
        assert client_message_parse(sendable(run_frame(message)), RUN_PARSERS) == message
