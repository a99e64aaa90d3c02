"""LangGraph agents for the tests, built on langchain-core's fake chat models (never a real provider)."""

import json
from typing import Any

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.tools import ToolException, tool
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from agents.langchain.register import graph_agent

LONG_ANSWER_TOKENS = 1000


@tool
def test_lc_echo(text: str) -> str:
    """Return the text."""
    return text


@tool
def test_lc_refuses(text: str) -> str:
    """Refuse, with a message for the user."""
    raise ToolException(f"Refusing {text!r}.")


def tool_call_message(name: str, args: dict[str, Any], content: str = "") -> AIMessage:
    call = {
        "index": 0,
        "id": f"call_{name}",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(args)},
    }
    return AIMessage(content=content, additional_kwargs={"tool_calls": [call]})


def graph_of(replies: list[AIMessage], tools: list[Any], *, handle_tool_errors: bool = False) -> Any:
    model = GenericFakeChatModel(messages=iter(replies))

    async def call_model(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await model.ainvoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("model", call_model)
    builder.add_node("tools", ToolNode(tools, handle_tool_errors=handle_tool_errors))
    builder.add_edge(START, "model")
    builder.add_conditional_edges("model", tools_condition, ["tools", END])
    builder.add_edge("tools", "model")
    return builder.compile()


def ask(input: dict[str, Any]) -> dict[str, Any]:
    return {"messages": [HumanMessage(str(input.get("question", "?")))]}


graph_agent(
    "test_lc_long_answer",
    lambda input: graph_of([AIMessage(content=" ".join(["tok"] * LONG_ANSWER_TOKENS))], []),
    description="Answers with 1,000 whitespace-separated tokens.",
    graph_input=ask,
)
graph_agent(
    "test_lc_tool_error",
    lambda input: graph_of(
        [tool_call_message("test_lc_refuses", {"text": "this"}), AIMessage(content="It refused.")],
        [test_lc_refuses],
        handle_tool_errors=True,
    ),
    description="Calls a tool that raises ToolException, which the graph hands back to the model.",
    graph_input=ask,
)
graph_agent(
    "test_lc_tool_error_unhandled",
    lambda input: graph_of([tool_call_message("test_lc_refuses", {"text": "that"})], [test_lc_refuses]),
    description="Calls a tool that raises ToolException, which ends the graph.",
    graph_input=ask,
)
graph_agent(
    "test_lc_model_fails",
    lambda input: graph_of([], []),  # No reply: the model raises StopIteration inside the graph.
    description="Its model has nothing to say and fails.",
    graph_input=ask,
)
graph_agent(
    "test_lc_echo_twice",
    lambda input: graph_of(
        [
            tool_call_message("test_lc_echo", {"text": "one"}, content="First."),
            tool_call_message("test_lc_echo", {"text": "two"}, content="Second."),
            AIMessage(content="Done."),
        ],
        [test_lc_echo],
    ),
    description="Calls the echo tool twice.",
    graph_input=ask,
)
