"""The app registers its built-in agents, and starts without the optional LangChain extra."""

import subprocess
import sys

from agents.registry import agents_all
from tests.servers import ROOT

WITHOUT_EXTRA = """
import os, sys
sys.modules.update(langchain_core=None, langgraph=None)  # As if not installed: importing them fails.
os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
import django
django.setup()
import config.asgi
from agents.registry import agents_all
print(",".join(spec.name for spec in agents_all()))
print(sorted(name for name in sys.modules if name.startswith(("langchain", "langgraph"))))
"""


def test_with_the_extra_the_langgraph_example_is_registered() -> None:
    assert {"calculator", "demo", "langgraph_words"} <= {spec.name for spec in agents_all()}


def test_without_the_extra_the_app_starts_with_the_other_agents() -> None:
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_EXTRA], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    names, imported = done.stdout.splitlines()
    assert names == "calculator,demo"
    assert imported == "['langchain_core', 'langgraph']"  # Only the two blocked names: nothing else got in.
