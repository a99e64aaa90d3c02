"""The run messages of the WebSocket protocol: ``run.start`` and ``run.cancel``."""

import uuid
from dataclasses import dataclass
from typing import Any

from notifications.exceptions import ProtocolError
from notifications.protocol import BASE_PARSERS, Parser, fields_only


@dataclass(frozen=True, slots=True)
class RunStart:
    agent: str
    input: Any
    timeout: Any = None


@dataclass(frozen=True, slots=True)
class RunCancel:
    run_id: uuid.UUID


def _run_start(fields: dict[str, Any]) -> RunStart:
    fields_only(fields, "run.start", {"agent", "input", "timeout"})
    agent = fields.get("agent")
    if not isinstance(agent, str) or not agent:
        raise ProtocolError("invalid_message", 'run.start needs "agent", the name of an agent.')
    # input and timeout are checked by the run service, with the same rules as the API.
    return RunStart(agent=agent, input=fields.get("input", {}), timeout=fields.get("timeout"))


def _run_cancel(fields: dict[str, Any]) -> RunCancel:
    fields_only(fields, "run.cancel", {"run_id"})
    try:
        return RunCancel(run_id=uuid.UUID(str(fields["run_id"])))
    except (KeyError, ValueError):
        raise ProtocolError("invalid_message", 'run.cancel needs "run_id", the UUID of one of your runs.') from None


RUN_PARSERS: dict[str, Parser] = {**BASE_PARSERS, "run.start": _run_start, "run.cancel": _run_cancel}
