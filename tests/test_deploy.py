"""Production configuration: check --deploy is clean with the documented environment."""

import os
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.servers import DaphneServer

ROOT = Path(__file__).resolve().parent.parent
PRODUCTION_ENV = ROOT / "deploy" / "production.env.example"


def env_file(path: Path) -> dict[str, str]:
    """KEY=value lines; comments and blanks skipped."""
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line.strip() and line[0] != "#")
    return {key.strip(): value.strip() for key, value in pairs}


def manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "WS_"))}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_deploy_is_clean_with_the_documented_production_environment() -> None:
    env = env_file(PRODUCTION_ENV)
    assert env["DJANGO_SECRET_KEY"] == "", "the example must not ship a usable secret"
    env["DJANGO_SECRET_KEY"] = secrets.token_urlsafe(50)
    result = manage("check", "--deploy", "--fail-level", "WARNING", **env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_without_https_check_deploy_says_what_is_missing() -> None:
    env = {**env_file(PRODUCTION_ENV), "DJANGO_SECRET_KEY": secrets.token_urlsafe(50), "DJANGO_HTTPS": "false"}
    result = manage("check", "--deploy", "--fail-level", "WARNING", **env)
    assert result.returncode != 0
    for warning in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert warning in result.stderr + result.stdout


def test_a_weak_secret_key_is_refused_with_debug_off() -> None:
    env = {**env_file(PRODUCTION_ENV), "DJANGO_SECRET_KEY": "short"}
    result = manage("check", **env)
    assert result.returncode != 0
    assert "must be at least 50 random characters" in result.stderr


def production_server_env(collected_static: Path, **extra: str) -> dict[str, str]:
    """The documented production environment for a test server (its database and Redis come from the factory)."""
    env = env_file(PRODUCTION_ENV)
    for key in ("DATABASE_URL", "REDIS_URL", "DJANGO_SECRET_KEY"):
        env.pop(key)
    return {**env, "DJANGO_STATIC_ROOT": str(collected_static), **extra}


def get(url: str, **headers: str) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(url, headers=headers)
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=5) as response:
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as error:
        error.close()
        return error.code, dict(error.headers)


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def test_a_production_server_redirects_to_https_sends_hsts_and_passes_its_health_check(
    daphne_factory: Callable[..., DaphneServer], redis_url: str, collected_static: Path, transactional_db: None
) -> None:
    server = daphne_factory(redis_url=redis_url, **production_server_env(collected_static))
    host = {"Host": "events.example.com"}
    status, headers = get(f"{server.http_url}/", **host)
    assert status == 301 and headers["Location"] == "https://events.example.com/"
    status, headers = get(f"{server.http_url}/", **host, **{"X-Forwarded-Proto": "https"})
    assert status == 200
    assert headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains; preload"
    assert get(f"{server.http_url}/", Host="attacker.example")[0] == 400
    # The image's HEALTHCHECK command, with the server's environment.
    check = subprocess.run(
        [sys.executable, "-m", "config.healthcheck", "--port", str(server.port)],
        cwd=ROOT,
        env=server.env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert check.returncode == 0, check.stderr
    server.stop()
    down = subprocess.run(
        [sys.executable, "-m", "config.healthcheck", "--port", str(server.port)],
        cwd=ROOT,
        env=server.env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert down.returncode == 1 and "healthcheck:" in down.stderr
