"""Errors of the agents app.

``AgentError`` and its subclasses carry messages written for the user: they
end a run as ``agent_error`` with that message. Any other exception from an
agent is reported without its text, which could hold internals.
"""

MESSAGE_MAX_CHARS = 500


class AgentError(Exception):
    """An agent failed, for a reason the user may read."""


class ToolError(AgentError):
    """A tool failed or was called wrongly."""


class UnknownTool(ToolError):
    """An agent called a tool that is not registered; ends the run with kind ``not_found``."""


class EventsUnavailable(AgentError):
    """The run's events cannot be recorded (the database is down); the run ends as ``unavailable``."""


class LifecycleError(AgentError):
    """An agent emitted out of lifecycle order: a programming error in the agent."""


def user_message(exc: BaseException) -> str:
    """What the user may read about a failure: our own errors' text, otherwise only the type."""
    if isinstance(exc, AgentError):
        # (Without NUL, which the log cannot store: the run's end must always be writable.)
        return str(exc).replace("\x00", "")[:MESSAGE_MAX_CHARS]
    return f"The agent failed with an internal error ({type(exc).__name__})."


class RunRefused(Exception):
    """A run could not be started; ``code`` is the protocol error code."""

    code = "invalid_message"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class UnknownAgent(RunRefused):
    code = "unknown_agent"


class InvalidRunInput(RunRefused):
    code = "invalid_message"


class TooManyRuns(RunRefused):
    code = "too_many_runs"


class RunNotFound(Exception):
    """No such run for this user (another user's run does not exist for them)."""


class RunFinished(Exception):
    """The run has already ended."""
