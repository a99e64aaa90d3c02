"""Read an AG-UI ``RunAgentInput`` into what starting one of our runs needs."""

from dataclasses import dataclass
from typing import Any

from django.conf import settings

from notifications.exceptions import InvalidJson
from notifications.jsonlimits import json_parse

from ..exceptions import InvalidRunInput, RunRefused

THREAD_ID_MAX_CHARS = 200


class InvalidBody(RunRefused):
    code = "invalid_json"


@dataclass(frozen=True, slots=True)
class RunRequest:
    """A run to start: the AG-UI thread it belongs to, and our agent's input and timeout."""

    thread_id: str
    input: Any
    timeout: Any = None


def run_request_parse(body: bytes) -> RunRequest:
    """Parse a ``RunAgentInput`` body; raise ``RunRefused`` (a protocol code) if it is not one.

    AG-UI requires ``threadId``, ``runId`` and ``messages``; they are checked
    for their types. The agent's input is ``forwardedProps.input`` (default
    ``{}``) and its timeout ``forwardedProps.timeout``, both checked by the run
    service as ``POST /api/runs/`` checks them. ``runId`` is the client's
    own name for the request: our run gets its own id, sent back in
    ``RUN_STARTED.runId``. Messages, tools, context and state are accepted
    and not used: our agents take a JSON input, not a conversation.
    """
    try:
        document = json_parse(body.decode("utf-8"), max_depth=settings.JSON_MAX_DEPTH)
    except (InvalidJson, UnicodeDecodeError) as exc:
        raise InvalidBody(f"The body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidRunInput("The body must be a RunAgentInput object.")
    thread_id = document.get("threadId")
    if not isinstance(thread_id, str) or not 0 < len(thread_id) <= THREAD_ID_MAX_CHARS:
        raise InvalidRunInput(f"threadId must be a string of 1 to {THREAD_ID_MAX_CHARS} characters.")
    if not isinstance(document.get("runId"), str):
        raise InvalidRunInput("runId must be a string.")
    if not isinstance(document.get("messages"), list):
        raise InvalidRunInput("messages must be an array.")
    forwarded = document.get("forwardedProps")
    if forwarded is None:
        forwarded = {}
    if not isinstance(forwarded, dict):
        raise InvalidRunInput("forwardedProps must be an object.")
    return RunRequest(thread_id=thread_id, input=forwarded.get("input", {}), timeout=forwarded.get("timeout"))
