"""The order every run's events must follow."""

from notifications.models import EventType

from .exceptions import LifecycleError

TERMINAL = frozenset({EventType.AGENT_COMPLETED, EventType.AGENT_ERROR})


class Lifecycle:
    """Check each event of one run before it is recorded.

    ``agent_started`` first; then any ``agent_thinking``, ``tool_executing``
    and ``tool_completed``, each completion matching an open call; then
    exactly one terminal event, after which nothing.
    """

    def __init__(self) -> None:
        self.started = False
        self.finished = False
        self.open_calls: dict[str, str] = {}  # call_id -> tool name

    def check(self, event: str, *, call_id: str | None = None, tool: str | None = None) -> None:
        """Accept ``event`` and advance, or raise ``LifecycleError``."""
        if self.finished:
            raise LifecycleError(f"{event} after the run's terminal event.")
        if event == EventType.AGENT_STARTED:
            if self.started:
                raise LifecycleError("agent_started twice.")
            self.started = True
            return
        if not self.started:
            raise LifecycleError(f"{event} before agent_started.")
        if event == EventType.TOOL_EXECUTING:
            if call_id is None or call_id in self.open_calls:
                raise LifecycleError(f"tool_executing with a missing or reused call id {call_id!r}.")
            self.open_calls[call_id] = tool or ""
        elif event == EventType.TOOL_COMPLETED:
            if call_id not in self.open_calls:
                raise LifecycleError(f"tool_completed for call {call_id!r}, which is not executing.")
            del self.open_calls[call_id]
        elif event in TERMINAL:
            self.finished = True
        elif event != EventType.AGENT_THINKING:
            raise LifecycleError(f"Unknown event {event!r}.")
