import importlib
import importlib.util
import logging

from django.apps import AppConfig
from django.conf import settings

logger = logging.getLogger(__name__)

OPTIONAL_PACKAGES = ("langchain_core", "langgraph")


class AgentsConfig(AppConfig):
    name = "agents"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Register the built-in agents and tools, then the deployment's own (AGENT_MODULES): the
        # same on every process, web servers and workers alike.
        from . import builtin  # noqa: F401

        for module in settings.AGENT_MODULES:
            importlib.import_module(module)

        # The LangGraph example needs the optional extra (requirements-agents.txt). It is
        # looked for, not imported: LangChain loads when a run needs it, not at every start.
        if all(importlib.util.find_spec(name) is not None for name in OPTIONAL_PACKAGES):
            from .langchain import example  # noqa: F401
        else:
            logger.debug("LangChain/LangGraph are not installed: the langgraph_words agent is not registered")
