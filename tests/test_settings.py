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


def test_redis_url_forms() -> None:
    from config.settings import redis_hosts

    [one] = redis_hosts("redis://r:6379/2")
    assert one["address"] == "redis://r:6379/2"
    shards = redis_hosts("redis://a:6379/0, rediss://b:6380/0")
    assert [host["address"] for host in shards] == ["redis://a:6379/0", "rediss://b:6380/0"]
    [sentinel] = redis_hosts("sentinel://:p%40ss@s1:26379,s2/mymaster/3")
    assert sentinel["sentinels"] == [("s1", 26379), ("s2", 26379)]
    assert (sentinel["master_name"], sentinel["db"], sentinel["password"]) == ("mymaster", 3, "p@ss")
    [with_user] = redis_hosts(" sentinel://app:secret@s1:26380/m ")
    assert (with_user["username"], with_user["password"], with_user["db"]) == ("app", "secret", 0)
    assert with_user["sentinels"] == [("s1", 26380)]
    for bad in ("http://r:6379/0", "sentinel://s1:26379", "sentinel:///mymaster", "sentinel://s1/m/0?ssl=true"):
        with pytest.raises(ImproperlyConfigured):
            redis_hosts(bad)
