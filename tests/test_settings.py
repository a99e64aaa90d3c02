"""config.settings: environment parsing that fails fast."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from config import settings as project_settings

ROOT = Path(__file__).resolve().parent.parent


def settings_in_subprocess(**env: str) -> subprocess.CompletedProcess[str]:
    code = "import config.settings as s; print(s.CHANNEL_LAYERS['default']['BACKEND'])"
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_debug_off_without_secret_key_refuses_to_start() -> None:
    result = settings_in_subprocess(DJANGO_DEBUG="false", DJANGO_SECRET_KEY="")
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY is required" in result.stderr


def test_socket_timeout_must_exceed_the_blocking_read() -> None:
    result = settings_in_subprocess(REDIS_SOCKET_TIMEOUT_SECONDS="5", REDIS_BRPOP_TIMEOUT_SECONDS="5")
    assert result.returncode != 0
    assert "REDIS_SOCKET_TIMEOUT_SECONDS must exceed" in result.stderr


@pytest.mark.parametrize(
    ("env", "backend"),
    [
        ({"REDIS_URL": ""}, "channels.layers.InMemoryChannelLayer"),
        ({"REDIS_URL": "redis://127.0.0.1:1/0"}, "channels_redis.pubsub.RedisPubSubChannelLayer"),
        ({"REDIS_URL": "redis://127.0.0.1:1/0", "CHANNEL_LAYER": "core"}, "notifications.layers.RedisCoreChannelLayer"),
    ],
)
def test_redis_url_switches_the_layer(env: dict[str, str], backend: str) -> None:
    result = settings_in_subprocess(**env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == backend


def test_env_helpers_reject_garbage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("X_BOOL", "maybe")
    monkeypatch.setenv("X_INT", "ten")
    with pytest.raises(ImproperlyConfigured, match="X_BOOL must be a boolean"):
        project_settings.env_bool("X_BOOL", False)
    with pytest.raises(ImproperlyConfigured, match="X_INT must be an integer"):
        project_settings.env_int("X_INT", 1)
    monkeypatch.setenv("X_LIST", "a, b,,c")
    assert project_settings.env_list("X_LIST", []) == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"AGENT_EXECUTION": "celery"}, "AGENT_EXECUTION must be inprocess or worker, not 'celery'."),
        (
            {"AGENT_EXECUTION": "worker", "DATABASE_URL": "sqlite:///unused.sqlite3"},
            "AGENT_EXECUTION=worker needs PostgreSQL",
        ),
        (
            {"AGENT_WORKER_HEARTBEAT_SECONDS": "5", "AGENT_WORKER_STALLED_SECONDS": "10"},
            "AGENT_WORKER_STALLED_SECONDS must be above twice AGENT_WORKER_HEARTBEAT_SECONDS.",
        ),
    ],
)
def test_worker_settings_that_cannot_work_refuse_to_start(env: dict[str, str], message: str) -> None:
    result = settings_in_subprocess(**env)
    assert result.returncode != 0
    assert message in result.stderr
