"""Errors of the agents app.

``AgentError`` and its subclasses carry messages written for the user: they
end a run as ``agent_error`` with that message. Any other exception from an
agent is reported without its text, which could hold internals.
"""


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
