"""The app registers its built-in agents, and starts without the optional LangChain extra, or its cost."""

import subprocess
import sys

from tests.servers import ROOT

START = """
import os, sys
if sys.argv[1] == "without":
    sys.modules.update(langchain_core=None, langgraph=None)  # As if not installed: importing them fails.
os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
import django
django.setup()
import config.asgi
from agents.registry import agents_all
print(",".join(spec.name for spec in agents_all()))
print(sorted(name for name in sys.modules if name.startswith(("langchain", "langgraph")) and sys.modules[name]))
"""


def start(extra: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", START, extra], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_with_the_extra_the_langgraph_example_is_registered_and_langchain_is_not_loaded_yet() -> None:
    # LangChain loads when a run needs it: importing it costs every process about half a second.
    assert start("with") == ["calculator,demo,langgraph_words", "[]"]


def test_without_the_extra_the_app_starts_with_the_other_agents() -> None:
    assert start("without") == ["calculator,demo", "[]"]
