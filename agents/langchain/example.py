"""The built-in LangGraph agent ``langgraph_words``: a model that calls a tool, then answers.

The model is langchain-core's ``GenericFakeChatModel`` with scripted
replies, never a real provider: the agent shows what a LangGraph agent's run
looks like (streamed, coalesced thoughts; a tool call; one end) anywhere the
optional extra is installed, with nothing to configure. LangGraph is imported
when a run builds its graph, not when the agent is registered.
"""

import json
from typing import Any

from .register import graph_agent

TEXT_MAX_CHARS = 2000


def count_words(text: str) -> int:
    """Count the words in a text."""
    return len(text.split())


def words_input(value: dict[str, Any]) -> dict[str, Any]:
    if set(value) != {"text"} or not isinstance(value["text"], str) or not value["text"].strip():
        raise ValueError('langgraph_words takes exactly one field, "text", a non-empty string.')
    if len(value["text"]) > TEXT_MAX_CHARS:
        raise ValueError(f"text must be at most {TEXT_MAX_CHARS} characters.")
    return {"text": value["text"]}


def scripted_model(text: str) -> Any:
    """A fake model that reasons, asks for ``count_words`` on ``text``, then states the count."""
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage

    call = {"name": "count_words", "arguments": json.dumps({"text": text})}
    first = AIMessage(
        content="I will count the words with the count_words tool rather than by eye.",
        additional_kwargs={
            "reasoning_content": "Counting words by hand is error-prone; the tool splits on whitespace.",
            "tool_calls": [{"index": 0, "id": "call_count_words", "type": "function", "function": call}],
        },
    )
    answer = AIMessage(content=f"The text has {count_words(text)} words.")
    return GenericFakeChatModel(messages=iter([first, answer]))


def words_graph(input: dict[str, Any]) -> Any:
    """The graph of one run: model, then the tool if it asked for one, then the model again."""
    from langchain_core.tools import tool
    from langgraph.graph import END, START, MessagesState, StateGraph
    from langgraph.prebuilt import ToolNode, tools_condition

    model = scripted_model(input["text"])

    async def call_model(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await model.ainvoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("model", call_model)
    builder.add_node("tools", ToolNode([tool(count_words)]))
    builder.add_edge(START, "model")
    builder.add_conditional_edges("model", tools_condition, ["tools", END])
    builder.add_edge("tools", "model")
    return builder.compile()


def words_question(input: dict[str, Any]) -> dict[str, Any]:
    from langchain_core.messages import HumanMessage

    return {"messages": [HumanMessage(f"How many words are in: {input['text']}")]}


graph_agent(
    "langgraph_words",
    words_graph,
    description="A LangGraph agent (a scripted fake model, no provider) that counts words with a tool.",
    graph_input=words_question,
    validate_input=words_input,
    input_help={"text": f"the text whose words to count (at most {TEXT_MAX_CHARS} characters)"},
    input_example={"text": "Agents think, call tools, and finish."},
)
