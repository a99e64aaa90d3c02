"""Production configuration: check --deploy is clean with the documented environment."""

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from notifications.metrics_http import exposition
from tests.conftest import SCRATCH_PG_URL
from tests.scrape import scrape, value
from tests.servers import DaphneServer, LineReader, free_port, http_request, started, wait_for

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
    # (AGENT_EXECUTION too: these tests are about HTTP, and the suite's database may be
    # SQLite, where runs stay in process.)
    for key in ("DATABASE_URL", "REDIS_URL", "DJANGO_SECRET_KEY", "AGENT_EXECUTION"):
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
    check = healthcheck(server.port, server.env)
    assert check.returncode == 0, check.stderr
    server.stop()
    down = healthcheck(server.port, server.env)
    assert down.returncode == 1 and "healthcheck:" in down.stderr


# compose.yaml and the image's commands, run on this host (no container engine here).

COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())  # type: ignore[no-any-return]


def image_command() -> list[str]:
    """The image's ENTRYPOINT followed by its CMD, from the Dockerfile's exec forms."""
    lines = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in DOCKERFILE.read_text().splitlines() if line}
    return [*json.loads(lines["ENTRYPOINT"]), *json.loads(lines["CMD"])]


def service_command(service: dict[str, Any]) -> list[str]:
    return [*service.get("entrypoint", []), *service["command"]] if "entrypoint" in service else image_command()


def test_compose_runs_migrations_once_before_two_web_servers_two_workers_and_two_drainers() -> None:
    services = compose()["services"]
    for name in ("web", "worker", "drainer"):
        assert services[name]["deploy"]["replicas"] == 2
    for name in ("web", "worker", "drainer", "pruner"):
        assert services[name]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    assert services["migrate"]["depends_on"]["db"] == {"condition": "service_healthy"}
    assert services["migrate"]["restart"] == "no"
    # The image's health check is the web server's; the other services turn it off.
    for name in ("migrate", "worker", "drainer", "pruner", "manage"):
        assert services[name]["healthcheck"] == {"disable": True}
    # Runs execute on the workers only, and a worker's stop has the time its grace needs.
    for name in ("migrate", "web", "worker", "drainer", "pruner", "manage"):
        assert services[name]["environment"]["AGENT_EXECUTION"] == "worker"
    assert service_command(services["worker"]) == ["python", "manage.py", "run_worker"]
    grace = float(services["worker"]["environment"]["AGENT_WORKER_SHUTDOWN_GRACE_SECONDS"])
    assert float(services["worker"]["stop_grace_period"].removesuffix("s")) >= grace + 10
    assert "healthcheck" not in services["web"]
    assert service_command(services["migrate"]) == ["python", "manage.py", "migrate", "--noinput"]
    assert service_command(services["web"])[:3] == ["python", "-m", "config.server"]
    assert "--proxy-headers" in service_command(services["web"])
    # Every app service talks to the same PostgreSQL and Redis.
    for name in ("migrate", "web", "worker", "drainer", "pruner", "manage"):
        env = services[name]["environment"]
        assert env["DATABASE_URL"].startswith("postgres://") and "@db:5432/" in env["DATABASE_URL"]
        assert env["REDIS_URL"] == "redis://redis:6379/0"


METRICS_TOKEN = secrets.token_urlsafe(32)
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus.yml"


def test_compose_runs_prometheus_scraping_every_web_server_and_drainer_with_the_token() -> None:
    services = compose()
    prometheus = services["services"]["prometheus"]
    assert "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]
    assert prometheus["secrets"] == ["metrics_token"]
    assert services["secrets"]["metrics_token"] == {"environment": "METRICS_TOKEN"}
    assert prometheus["ports"] == ["127.0.0.1:9090:9090"]  # Not on every interface.
    app = services["services"]
    assert all(app[name]["environment"]["METRICS_TOKEN"].startswith("${METRICS_TOKEN:?") for name in ("web", "drainer"))
    drainer_port = int(app["drainer"]["environment"]["DRAIN_METRICS_PORT"])
    assert app["drainer"]["environment"]["DRAIN_METRICS_ADDRESS"] == "0.0.0.0"  # noqa: S104 (inside compose's network)
    assert str(drainer_port) in app["drainer"]["expose"]

    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"web", "drainer"}
    for name, port in (("web", 8000), ("drainer", drainer_port)):
        [discovery] = jobs[name]["dns_sd_configs"]
        assert discovery["names"] == [name] and discovery["port"] == port and discovery["type"] == "A"
        assert jobs[name]["authorization"] == {"type": "Bearer", "credentials_file": "/run/secrets/metrics_token"}
    # The proxy, the only published port of the app, does not pass /metrics on.
    assert "location = /metrics {\n        return 404;" in (ROOT / "deploy" / "nginx.conf").read_text()


def test_prometheus_accepts_its_config(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip(
            "promtool (Debian: apt-get install prometheus) is not installed; the config's shape is checked above."
        )
    token = tmp_path / "metrics_token"
    token.write_text("token")
    config = tmp_path / "prometheus.yml"
    config.write_text(PROMETHEUS_CONFIG.read_text().replace("/run/secrets/metrics_token", str(token)))
    result = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    result = subprocess.run([str(hadolint), str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def host_env(service: dict[str, Any], *, database_url: str, redis_url: str, static_root: Path) -> dict[str, str]:
    """A compose service's environment on this host: the same, but for where PostgreSQL and Redis are."""
    env = {key: str(value) for key, value in service["environment"].items()}
    env.update(
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        METRICS_TOKEN=METRICS_TOKEN,
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        DJANGO_STATIC_ROOT=str(static_root),  # (the image collects its own)
        PYTHONUNBUFFERED="1",
    )
    clean = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "WS_", "DATABASE_"))}
    return {**clean, **env}


def on_host(command: list[str]) -> list[str]:
    return [sys.executable, *command[1:]] if command[0] == "python" else command


def test_the_services_commands_run_as_written_on_the_host(
    scratch_postgres: Callable[[str], str], redis_url: str, collected_static: Path
) -> None:
    services = compose()["services"]
    database_url = scratch_postgres("compose")  # PostgreSQL, as in compose.yaml: its workers need it.

    def env_of(name: str) -> dict[str, str]:
        return host_env(services[name], database_url=database_url, redis_url=redis_url, static_root=collected_static)

    def run(name: str, *args: str) -> None:
        """Run a one-off service, with other arguments in place of its command's if given."""
        command = on_host(service_command(services[name]))
        if args:
            command = command[: -len(services[name]["command"])] + list(args)
        subprocess.run(command, cwd=ROOT, env=env_of(name), check=True, capture_output=True, timeout=120)

    run("migrate")
    run("manage", "demo_setup")  # (the README's one-off command)
    pending = (
        "from datetime import timedelta; from django.utils import timezone; "
        "from notifications.models import PendingEvent; from notifications.services import event_record; "
        "import uuid; e = event_record(user_id=1, event='agent_started', run_id=uuid.uuid4(), agent='demo', data={}); "
        "PendingEvent.objects.update_or_create(event=e, defaults=dict(user_id=e.user_id, seq=e.seq, "
        "created_at=timezone.now() - timedelta(minutes=1)))"
    )
    subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", pending], cwd=ROOT, env=env_of("drainer"), check=True, timeout=60
    )

    # web: the image's ENTRYPOINT and CMD, on a free port; its HEALTHCHECK passes; SIGTERM ends it cleanly.
    port = free_port()
    command = on_host(service_command(services["web"]))
    command[command.index("-p") + 1] = str(port)
    with started(command, env_of("web")) as web:
        wait_for(
            lambda: healthcheck(port, env_of("web")).returncode == 0 or web.poll() is not None,
            timeout=30,
            what="the web server's health check",
        )
        assert web.poll() is None
        assert http_request(f"http://127.0.0.1:{port}/metrics").status == 401
        assert value(scrape(f"http://127.0.0.1:{port}", token=METRICS_TOKEN), "agentstream_pending_events") == 1
        web.send_signal(signal.SIGTERM)
        assert web.wait(timeout=15) == 0

    # drainer: publishes the pending event, shows it in its metrics, then stops on SIGTERM with its summary.
    metrics_port = free_port()
    drainer_env = {**env_of("drainer"), "DRAIN_METRICS_PORT": str(metrics_port), "DRAIN_METRICS_ADDRESS": "127.0.0.1"}
    with started(on_host(service_command(services["drainer"])), drainer_env) as drainer:
        output = LineReader(drainer.stdout)
        output.until("Draining pending events")
        output.until("Progress: published 1")
        samples = scrape(f"http://127.0.0.1:{metrics_port}", token=METRICS_TOKEN)
        assert value(samples, "agentstream_drain_events_published_total") == 1
        drainer.send_signal(signal.SIGTERM)
        assert "published 1" in output.until("Done:")
        assert drainer.wait(timeout=15) == 0

    # worker: starts taking runs, then stops on SIGTERM with exit 0.
    with started(on_host(service_command(services["worker"])), env_of("worker")) as worker:
        output = LineReader(worker.stdout)
        output.until("Worker started: 50 runs at once, queues agents.")
        worker.send_signal(signal.SIGTERM)
        output.until("Worker stopped.")
        assert worker.wait(timeout=15) == 0

    # pruner: a pass, then waits for the next hour until SIGTERM.
    with started(on_host(service_command(services["pruner"])), env_of("pruner")) as pruner:
        LineReader(pruner.stdout).until("published event(s) created before")
        pruner.send_signal(signal.SIGTERM)
        assert pruner.wait(timeout=15) == 0


def healthcheck(port: int, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The image's HEALTHCHECK command, run on this host."""
    command = [sys.executable, "-m", "config.healthcheck", "--port", str(port)]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=30, check=False)


def test_http_requests_share_a_pool_of_database_connections(
    scratch_postgres: Callable[[str], str], daphne_factory: Callable[..., DaphneServer], redis_url: str
) -> None:
    """Under ASGI each request's ORM calls run in a thread of its own; the pool keeps their connections few."""
    database_url = scratch_postgres("pool")
    manage_on(database_url, "demo_setup", "--username", "pooled", "--password", "pooled-password")
    server = daphne_factory(redis_url=redis_url, DATABASE_URL=database_url)
    status, pair = post_json(
        f"{server.http_url}/api/auth/token/", {"username": "pooled", "password": "pooled-password"}
    )
    assert status == 200
    name = database_url.rsplit("/", 1)[1]
    seen: set[tuple[int, str]] = set()
    done = threading.Event()

    def watch() -> None:
        with psycopg.connect(SCRATCH_PG_URL, autocommit=True) as conn:
            while not done.is_set():
                rows = conn.execute(
                    "SELECT pid, backend_start::text FROM pg_stat_activity WHERE datname = %s", [name]
                ).fetchall()
                seen.update((int(pid), str(start)) for pid, start in rows)
                done.wait(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for _ in range(40):  # each one looks its user up in the database
            request = urllib.request.Request(
                f"{server.http_url}/api/runs/", headers={"Authorization": f"Bearer {pair['access']}"}
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.status == 200
    finally:
        done.set()
        watcher.join(timeout=10)
    assert 1 <= len(seen) <= 3, f"{len(seen)} database connections for 40 requests"


def manage_on(database_url: str, *args: str) -> None:
    env = {**os.environ, "DATABASE_URL": database_url}
    subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True, capture_output=True, timeout=60)


def post_json(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, json.loads(response.read())


DASHBOARD = ROOT / "deploy" / "grafana-dashboard.json"


def test_the_dashboard_graphs_every_metric_and_only_metrics_that_exist(transactional_db: None) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = {name for expr in expressions for name in re.findall(r"\bagentstream_\w+", expr)}
    kinds = {family.name: family.type for family in text_string_to_metric_families(exposition().decode())}
    ours = {name: kind for name, kind in kinds.items() if name.startswith("agentstream_")}
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket",)}
    allowed = {name + suffix for name, kind in ours.items() for suffix in suffixes[kind]}
    assert used <= allowed, used - allowed
    assert {name for name in ours if not any(series.startswith(name) for series in used)} == set()
    assert all(panel["datasource"]["uid"] == "${datasource}" for panel in dashboard["panels"])
