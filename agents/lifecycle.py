"""The order every run's events must follow."""

from notifications.models import EventType

from .exceptions import LifecycleError

TERMINAL = frozenset({EventType.AGENT_COMPLETED, EventType.AGENT_ERROR})


class Lifecycle:
    """Check each event of one run before it is recorded, and advance once it is.

    ``agent_started`` first; then any ``agent_thinking``, ``tool_executing``
    and ``tool_completed``, each completion matching an open call; then
    exactly one terminal event, after which nothing. ``check`` only looks;
    ``advance`` moves on, and ``restore`` undoes that when the write turns
    out not to have happened.
    """

    def __init__(self) -> None:
        self.started = False
        self.finished = False
        self.open_calls: dict[str, str] = {}  # call_id -> tool name

    def check(self, event: str, *, call_id: str | None = None) -> None:
        """Raise ``LifecycleError`` unless ``event`` may come next."""
        if self.finished:
            raise LifecycleError(f"{event} after the run's terminal event.")
        if event == EventType.AGENT_STARTED:
            if self.started:
                raise LifecycleError("agent_started twice.")
            return
        if not self.started:
            raise LifecycleError(f"{event} before agent_started.")
        if event == EventType.TOOL_EXECUTING:
            if call_id is None or call_id in self.open_calls:
                raise LifecycleError(f"tool_executing with a missing or reused call id {call_id!r}.")
        elif event == EventType.TOOL_COMPLETED:
            if call_id not in self.open_calls:
                raise LifecycleError(f"tool_completed for call {call_id!r}, which is not executing.")
        elif event not in TERMINAL and event != EventType.AGENT_THINKING:
            raise LifecycleError(f"Unknown event {event!r}.")

    def snapshot(self) -> tuple[bool, bool, dict[str, str]]:
        return self.started, self.finished, dict(self.open_calls)

    def restore(self, state: tuple[bool, bool, dict[str, str]]) -> None:
        self.started, self.finished, self.open_calls = state[0], state[1], dict(state[2])

    def advance(self, event: str, *, call_id: str | None = None, tool: str = "") -> None:
        """Record that ``event`` happened (checking it first)."""
        self.check(event, call_id=call_id)
        if event == EventType.AGENT_STARTED:
            self.started = True
        elif event == EventType.TOOL_EXECUTING:
            assert call_id is not None
            self.open_calls[call_id] = tool
        elif event == EventType.TOOL_COMPLETED:
            del self.open_calls[call_id]  # type: ignore[arg-type]
        elif event in TERMINAL:
            self.finished = True
