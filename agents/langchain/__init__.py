"""LangChain and LangGraph agents: a callback handler that turns a runnable's lifecycle into a run's events.

Needs the optional extra (``pip install -r requirements-agents.txt``); the
rest of the service never imports this package unless it is installed.
``graph_agent`` (in ``register``) registers a runnable or a compiled graph
as an agent in one call; ``coalesce`` (no LangChain needed) is how a token
stream becomes a few ``agent_thinking`` events rather than one per token.
"""
