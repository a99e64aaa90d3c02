"""What a restarted run takes over from its earlier attempt, read from the log.

A restartable agent's run whose worker died goes on, on another worker
(``agents.workers``): the same run, with no second ``agent_started``. The
log says where the earlier attempt stopped: the tool calls it left open
(closed now, as failed), how many steps it thought (the new attempt's steps
count on), and whether something ended the run meanwhile.
"""

import uuid
from dataclasses import dataclass, field

from django.conf import settings

from notifications.models import Event, EventType

from .lifecycle import TERMINAL

CALL_STOPPED_MESSAGE = "The worker running this call stopped; the run starts again."


@dataclass(slots=True)
class EarlierAttempt:
    open_calls: dict[str, str] = field(default_factory=dict)  # call_id -> tool name
    steps: int = 0
    ended: bool = False


def earlier_attempt_read(run_id: uuid.UUID) -> EarlierAttempt:
    """The run's events so far, summed up for the attempt that takes over."""
    earlier = EarlierAttempt()
    for event, data in Event.objects.filter(run_id=run_id).order_by("seq").values_list("event", "data"):
        if event == EventType.TOOL_EXECUTING:
            earlier.open_calls[data["call_id"]] = data["tool"]
        elif event == EventType.TOOL_COMPLETED:
            earlier.open_calls.pop(data["call_id"], None)
        elif event == EventType.AGENT_THINKING and isinstance(data.get("step"), int):
            earlier.steps = max(earlier.steps, data["step"])
        elif event in TERMINAL:
            earlier.ended = True
    return earlier


def restart_thought(restart: int) -> str:
    return (
        "The worker running this run stopped; it starts again from the beginning "
        f"(restart {restart} of at most {settings.AGENT_RESTART_MAX_ATTEMPTS})."
    )
