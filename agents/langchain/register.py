"""Register a LangChain runnable or a LangGraph graph as an agent, in one call.

Importing this module costs nothing: LangChain is imported when a run first
needs it, so registering agents does not slow every process's start (about
half a second for langchain-core and LangGraph here).
"""

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..context import RunContext
from ..registry import InputValidator, agent

if TYPE_CHECKING:
    from langchain_core.runnables import Runnable

GraphFactory = Callable[[dict[str, Any]], "Runnable[Any, Any]"]


def graph_agent(
    name: str,
    graph: "Runnable[Any, Any] | GraphFactory",
    *,
    description: str,
    graph_input: Callable[[dict[str, Any]], Any] = lambda value: value,
    result: Callable[[Any], Any] | None = None,
    validate_input: InputValidator | None = None,
    input_help: dict[str, str] | None = None,
    input_example: dict[str, Any] | None = None,
    restartable: bool = False,
) -> None:
    """Register ``graph`` (a runnable, or a function of the run's input that builds one) as agent ``name``.

    The run invokes it with ``graph_input(input)`` and a ``RunCallbackHandler``;
    its output, through ``result`` (default: the last message's content for a
    graph whose state has ``messages``, else the output as JSON), is the
    run's result. An exception from the graph ends the run as any agent's does.
    ``restartable`` is ``agent``'s: the graph may run again from the start if its worker dies.
    """

    async def run(ctx: RunContext, input: dict[str, Any]) -> Any:
        from langchain_core.runnables import Runnable

        from .handler import RunCallbackHandler

        runnable = graph if isinstance(graph, Runnable) else graph(input)
        handler = RunCallbackHandler(ctx)
        try:
            output = await runnable.ainvoke(graph_input(input), config={"callbacks": [handler], "run_name": name})
        except asyncio.CancelledError:
            await handler.aclose(flush=False)  # The run is being ended for it; say nothing more.
            raise
        except BaseException:
            await handler.aclose()
            raise
        await handler.aclose()
        return (result or default_result)(output)

    register = agent(
        name,
        description=description,
        input_help=input_help,
        input_example=input_example,
        restartable=restartable,
        **({} if validate_input is None else {"validate_input": validate_input}),
    )
    register(run)


def default_result(output: Any) -> Any:
    """The last message's content when the output is a messages state, else the output as JSON."""
    from langchain_core.messages import BaseMessage

    from .handler import jsonable

    if isinstance(output, dict) and output.get("messages") and isinstance(output["messages"][-1], BaseMessage):
        return jsonable(output["messages"][-1].content)
    return jsonable(output)
