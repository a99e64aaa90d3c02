"""Register agents and tools by name.

An agent is an async function ``(ctx, input) -> result``; a tool is a typed
function (sync or async) that agents call through ``ctx.tool(name, **args)``.
See the README's "Writing an agent".
"""

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from .exceptions import InvalidRunInput, ToolError, UnknownAgent, UnknownTool

if TYPE_CHECKING:
    from .context import RunContext

AgentFunc = Callable[["RunContext", dict[str, Any]], Awaitable[Any]]
InputValidator = Callable[[dict[str, Any]], dict[str, Any]]
F = TypeVar("F", bound=Callable[..., Any])
A = TypeVar("A", bound=AgentFunc)


@dataclass(frozen=True, slots=True)
class AgentSpec:
    name: str
    description: str
    func: AgentFunc
    validate_input: InputValidator
    input_help: dict[str, str] = field(default_factory=dict)
    input_example: dict[str, Any] = field(default_factory=dict)
    # Safe to run again from the start if the worker running it dies (see ``agent``).
    restartable: bool = False


@dataclass(frozen=True, slots=True)
class ToolSpec:
    name: str
    description: str
    func: Callable[..., Any]
    signature: inspect.Signature

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.func)

    def bind(self, args: dict[str, Any]) -> None:
        """Check the arguments against the tool's signature; raise ``ToolError`` if they do not fit."""
        try:
            bound = self.signature.bind(**args)
        except TypeError as exc:
            raise ToolError(f"Bad arguments for tool {self.name}: {exc}.") from None
        for name, value in bound.arguments.items():
            expected = self.signature.parameters[name].annotation
            if isinstance(expected, type) and expected is not inspect.Parameter.empty:
                if not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool):
                    raise ToolError(
                        f"Bad arguments for tool {self.name}: {name} must be {expected.__name__}, "
                        f"got {type(value).__name__}."
                    )


_agents: dict[str, AgentSpec] = {}
_tools: dict[str, ToolSpec] = {}


def _no_validation(value: dict[str, Any]) -> dict[str, Any]:
    return value


def agent(
    name: str,
    *,
    description: str,
    validate_input: InputValidator = _no_validation,
    input_help: dict[str, str] | None = None,
    input_example: dict[str, Any] | None = None,
    restartable: bool = False,
) -> Callable[[A], A]:
    """Register an async agent function under ``name``.

    ``input_help`` describes each input field; ``input_example`` is a valid
    input that clients (the web console) offer as a starting point.

    ``restartable=True`` declares that running the agent again from the start
    is safe (its tools have no effects that must not happen twice). Then, if
    the worker running it dies, the run is started again on another worker,
    up to ``AGENT_RESTART_MAX_ATTEMPTS`` times: the same run, continuing its
    events (no second ``agent_started``). Otherwise, it ends as ``lost``.
    """

    def register(func: A) -> A:
        if not inspect.iscoroutinefunction(func):
            raise TypeError(f"Agent {name} must be an async function.")
        if name in _agents:
            raise ValueError(f"An agent named {name} is already registered.")
        example = dict(input_example or {})
        validate_input(dict(example))  # A bad example is a bug in the agent's module: fail at import.
        _agents[name] = AgentSpec(name, description, func, validate_input, dict(input_help or {}), example, restartable)
        return func  # type: ignore[return-value]

    return register


def tool(name: str, *, description: str) -> Callable[[F], F]:
    """Register a typed function (sync or async) as a tool under ``name``."""

    def register(func: F) -> F:
        if name in _tools:
            raise ValueError(f"A tool named {name} is already registered.")
        _tools[name] = ToolSpec(name, description, func, inspect.signature(func, eval_str=True))
        return func

    return register


def agent_get(name: str) -> AgentSpec:
    try:
        return _agents[name]
    except KeyError:
        known = ", ".join(sorted(_agents))
        raise UnknownAgent(f"Unknown agent {name[:100]!r}; available: {known}.") from None


def agents_all() -> list[AgentSpec]:
    return sorted(_agents.values(), key=lambda spec: spec.name)


def tool_get(name: str) -> ToolSpec:
    try:
        return _tools[name]
    except KeyError:
        raise UnknownTool(f"Unknown tool {name[:100]!r}.") from None


def agent_input_validate(spec: AgentSpec, value: object) -> dict[str, Any]:
    """Validate a run's input for its agent; raise ``InvalidRunInput`` with the reason."""
    if not isinstance(value, dict):
        raise InvalidRunInput(f"input must be a JSON object, got {type(value).__name__}.")
    try:
        return spec.validate_input(value)
    except (TypeError, ValueError) as exc:
        raise InvalidRunInput(f"Invalid input for {spec.name}: {exc}") from None
