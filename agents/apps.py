import logging

from django.apps import AppConfig

logger = logging.getLogger(__name__)

OPTIONAL_PACKAGES = frozenset({"langchain_core", "langgraph"})


class AgentsConfig(AppConfig):
    name = "agents"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Register the built-in agents and tools.
        from . import builtin  # noqa: F401

        # The LangGraph example needs the optional extra (requirements-agents.txt).
        try:
            from .langchain import example  # noqa: F401
        except ImportError as exc:
            if (exc.name or "").split(".")[0] not in OPTIONAL_PACKAGES:
                raise
            logger.debug("LangChain/LangGraph are not installed (%s): langgraph_words is not registered", exc.name)
