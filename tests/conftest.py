"""Shared fixtures: throwaway Redis servers, real daphne processes, users and tokens.

Every fixture that starts something stops it. Every wait is bounded.
"""

import asyncio
import inspect
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Literal, NoReturn, Protocol

import channels.layers
import psycopg
import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings as django_settings
from django.core.cache import cache
from django.db import connection, connections
from django.test import Client
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from config.redis_urls import redis_channel_layers
from notifications import pgwrite, services
from tests.servers import (
    ROOT,
    DaphneServer,
    PostgresCluster,
    RedisServer,
    WorkerProcess,
    database_url,
    http_request,
    postgres_bindir,
)

IN_CI = os.environ.get("CI", "").lower() == "true"
# A run's last batch records its publish outcome just after its callers return.
OUTCOMES_WAIT_SECONDS = 2.0


def unavailable(message: str) -> NoReturn:
    """Skip the tests that need something this machine lacks; under CI=true, fail them instead."""
    if IN_CI:
        pytest.fail(message + " Under CI=true that is a failure.")
    pytest.skip(message)


# The events of a two-step ``demo`` run, in order.
LIFECYCLE_OF_TWO_STEPS = [
    "agent_started",
    "agent_thinking",
    "tool_executing",
    "tool_completed",
    "agent_thinking",
    "tool_executing",
    "tool_completed",
    "agent_completed",
]
SESSION_PREFIX = f"test{uuid.uuid4().hex[:8]}"

# Property tests. No example database: nothing is written into the repository,
# and a failure is replayed from the blob it prints (@reproduce_failure). No
# deadline: a property that must be fast says so with a bound of its own. The
# suite's function-scoped fixtures (the rate-limit cache, the agents'
# supervisor, a user) are shared by a test's examples on purpose; examples
# that write to the database undo their writes themselves. Under CI the
# examples are the same every run, so a CI failure reproduces anywhere.
hypothesis_settings.register_profile(
    "dev",
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
hypothesis_settings.register_profile("ci", parent=hypothesis_settings.get_profile("dev"), derandomize=True)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if IN_CI else "dev"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give every async test the task-leak check, set up first so it tears down last."""
    for item in items:
        if inspect.iscoroutinefunction(getattr(item, "function", None)):
            item.fixturenames.insert(0, "no_task_leaks")  # type: ignore[attr-defined]


@pytest.fixture
async def no_task_leaks() -> AsyncIterator[None]:
    """Fail the test if it leaves asyncio tasks running on its loop.

    First it waits (bounded) for the publish outcomes still being recorded,
    as the server does at shutdown: a run's last batch records its outcome
    just after its callers return. Then it closes the loop's event-writer
    connections and the database connection of the thread that runs its ORM
    calls, so the test database can be dropped at the end.
    """
    yield
    await services.aevents_outcomes_recorded(timeout_seconds=OUTCOMES_WAIT_SECONDS)
    await pgwrite.aclose()
    await sync_to_async(connections.close_all)()
    await asyncio.sleep(0)
    current = asyncio.current_task()
    leftover = [task for task in asyncio.all_tasks() if task is not current and not task.done()]
    if leftover:
        for task in leftover:
            task.cancel()
        await asyncio.wait(leftover, timeout=2)
        pytest.fail(f"The test left {len(leftover)} asyncio task(s) running: {leftover!r}")


# Redis.


@pytest.fixture(scope="session")
def redis_server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[], RedisServer]]:
    """Start throwaway redis-server processes; each is stopped at the end of the session."""
    binary = shutil.which("redis-server")
    if binary is None:
        message = "redis-server is not installed: every test that needs real Redis is SKIPPED."
        unavailable(message)
    servers: list[RedisServer] = []

    def start() -> RedisServer:
        server = RedisServer(binary=binary, workdir=tmp_path_factory.mktemp("redis"))
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest) -> str:
    """The suite's Redis: ``REDIS_URL`` if set, else a throwaway server of its own."""
    configured = os.environ.get("REDIS_URL")
    if configured:
        return configured
    start: Callable[[], RedisServer] = request.getfixturevalue("redis_server_factory")
    return start().url


# Channel layers.

LayerKind = Literal["memory", "pubsub", "core"]
LAYER_FLUSH_TIMEOUT_SECONDS = 5.0


class ChannelLayers(Protocol):
    def __call__(self, kind: LayerKind, *, redis_url: str = "", prefix: str = SESSION_PREFIX) -> Any: ...


@pytest.fixture
async def channel_layers(settings: Any) -> AsyncIterator[ChannelLayers]:
    """Give this process a channel layer of one kind, through ``settings``; each call returns the layer.

    ``channel_layers("memory")``, or ``channel_layers("pubsub" | "core", redis_url=..., prefix=...)``;
    a later call replaces the layer. channels keeps built layers in
    ``channels.layers.channel_layers.backends``: that cache is emptied first, so
    nothing built on an earlier test's loop is handed out, and every layer built
    here is flushed on this test's loop afterwards (the in-memory layer forgets
    its groups, the pub/sub layer closes its connections, the core layer deletes
    its prefix's keys and closes its pools) before the cache is emptied again.
    """
    channels.layers.channel_layers.backends.clear()
    built: list[Any] = []

    def use(kind: LayerKind, *, redis_url: str = "", prefix: str = SESSION_PREFIX) -> Any:
        if (kind == "memory") == bool(redis_url):
            raise ValueError("The Redis layers need a redis_url, and the in-memory layer takes none.")
        if kind == "memory":
            settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
        else:
            settings.CHANNEL_LAYERS = redis_channel_layers(
                redis_url=redis_url, layer=kind, prefix=prefix, options=django_settings.REDIS_OPTIONS
            )
        layer = get_channel_layer()
        built.append(layer)
        return layer

    yield use
    for layer in reversed(built):
        async with asyncio.timeout(LAYER_FLUSH_TIMEOUT_SECONDS):
            await layer.flush()
    channels.layers.channel_layers.backends.clear()


@pytest.fixture
def redis_layer(redis_url: str, channel_layers: ChannelLayers) -> Any:
    """This process's channel layer on the suite's Redis: the pub/sub layer, as servers use by default."""
    return channel_layers("pubsub", redis_url=redis_url)


# Real servers.


def test_database_url() -> str:
    """The URL of the test database, for server processes to share it."""
    return database_url(connection.settings_dict)


test_database_url.__test__ = False  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def daphne_factory(
    django_db_setup: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., DaphneServer]]:
    """Start daphne processes on the test database; each is stopped at the end."""
    servers: list[DaphneServer] = []

    def start(*, redis_url: str, args: tuple[str, ...] = (), **env: str) -> DaphneServer:
        server_env = {
            "DATABASE_URL": test_database_url(),
            "REDIS_URL": redis_url,
            "CHANNEL_LAYER_PREFIX": SESSION_PREFIX,
            "DJANGO_SECRET_KEY": django_settings.SECRET_KEY,
            # Long enough that only the live path can deliver within a test's
            # timeouts; tests about the heartbeat use ``daphne_beating``.
            "WS_HEARTBEAT_SECONDS": "60",
            "LOG_LEVEL": "INFO",
            # Every test signs in from 127.0.0.1; the limits have tests of their own.
            "THROTTLE_AUTH_RATE": "100000/min",
            "THROTTLE_AUTH_REFRESH_RATE": "100000/min",
            "THROTTLE_RUNS_RATE": "100000/min",
            # The suite's servers live for the whole session: idle, they give their connections back.
            "DB_POOL_MAX_IDLE_SECONDS": "5",
            **env,
        }
        server = DaphneServer(env=server_env, log_path=tmp_path_factory.mktemp("daphne") / "server.log", args=args)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def daphne(daphne_factory: Callable[..., DaphneServer], redis_url: str) -> DaphneServer:
    """The suite's shared server, for tests that do not stop or reconfigure it."""
    return daphne_factory(redis_url=redis_url)


@pytest.fixture(scope="session")
def daphne_beating(daphne_factory: Callable[..., DaphneServer], redis_url: str) -> DaphneServer:
    """A shared server with a fast heartbeat, for tests of the heartbeat's catch-up."""
    return daphne_factory(redis_url=redis_url, WS_HEARTBEAT_SECONDS="0.3")


# Workers with fast heartbeats and checks, so that a dead worker is found in about a second, not ten.
FAST_WORKER_ENV = {
    "AGENT_WORKER_HEARTBEAT_SECONDS": "0.2",
    "AGENT_WORKER_STALLED_SECONDS": "1",
    "AGENT_WORKER_REAP_SECONDS": "0.2",
    "AGENT_WORKER_POLL_SECONDS": "0.2",
    "AGENT_CANCEL_POLL_SECONDS": "0.1",
    "AGENT_MODULES": "tests.agents.worker_agents",
    "DB_POOL_MAX_IDLE_SECONDS": "5",
}


@pytest.fixture
def worker_factory(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start run_worker processes on a database and Redis; each still running at the end is stopped."""
    workers: list[WorkerProcess] = []

    def start(*args: str, database_url: str, redis_url: str, **env: str) -> WorkerProcess:
        worker = WorkerProcess(
            env={
                "DATABASE_URL": database_url,
                "REDIS_URL": redis_url,
                "CHANNEL_LAYER_PREFIX": SESSION_PREFIX,
                "DJANGO_SECRET_KEY": django_settings.SECRET_KEY,
                **FAST_WORKER_ENV,
                **env,
            },
            log_path=tmp_path / f"worker-{len(workers)}.log",
            args=args,
        )
        worker.start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()


SCRATCH_PG_URL = os.environ.get("SCRATCH_PG_URL", "postgres://postgres@127.0.0.1:5432/postgres")


def manage(*args: str, database_url: str) -> None:
    """Run a management command on another database, as an operator would."""
    subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database_url},
        check=True,
        capture_output=True,
        timeout=120,
    )


@pytest.fixture(scope="session")
def scratch_postgres() -> Iterator[Callable[[str], str]]:
    """Make migrated PostgreSQL databases of a test's own (whatever the suite's database); drop them at the end.

    Skipped where PostgreSQL is not reachable, and a failure instead under CI=true.
    """
    try:
        admin = psycopg.connect(SCRATCH_PG_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        message = f"PostgreSQL is not reachable at {SCRATCH_PG_URL} ({exc}): tests that need it are SKIPPED."
        unavailable(message)
    names: list[str] = []

    def make(purpose: str) -> str:
        name = f"{purpose}_{uuid.uuid4().hex[:10]}"
        admin.execute(f"CREATE DATABASE {name}")
        names.append(name)
        url = SCRATCH_PG_URL.rsplit("/", 1)[0] + f"/{name}"
        manage("migrate", "--noinput", database_url=url)
        return url

    with admin:
        try:
            yield make
        finally:
            for name in names:
                admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def postgres_cluster_factory() -> Iterator[Callable[[], PostgresCluster]]:
    """Start throwaway PostgreSQL clusters with a migrated database ``app``, for tests that stop them.

    They need PostgreSQL's server binaries and root (to run them as ``postgres``):
    skipped without, and a failure instead under CI=true. Destroyed at the end.
    """
    bindir = postgres_bindir()
    if bindir is None or shutil.which("runuser") is None or os.geteuid() != 0:
        message = "PostgreSQL server binaries, runuser and root are needed for outage tests: they are SKIPPED."
        unavailable(message)
    clusters: list[PostgresCluster] = []

    def make() -> PostgresCluster:
        cluster = PostgresCluster(bindir=bindir)
        clusters.append(cluster)
        cluster.start()
        with psycopg.connect(cluster.url(), autocommit=True) as admin:
            admin.execute("CREATE DATABASE app")
        manage("migrate", "--noinput", database_url=cluster.url("app"))
        return cluster

    try:
        yield make
    finally:
        for cluster in clusters:
            cluster.destroy()


@pytest.fixture(scope="session")
def collected_static(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run collectstatic as the Dockerfile does, into a directory of the test's own."""
    root = tmp_path_factory.mktemp("staticfiles")
    env = {**os.environ, "DJANGO_DEBUG": "false", "DJANGO_SECRET_KEY": django_settings.SECRET_KEY}
    env["DJANGO_STATIC_ROOT"] = str(root)
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"], cwd=ROOT, env=env, check=True, timeout=120
    )
    return root


@pytest.fixture(autouse=True)
def fresh_rate_limits() -> None:
    """Start each test with no REST rate-limit counts (they live in this process's cache)."""
    cache.clear()


@pytest.fixture(scope="session", autouse=True)
def released_test_database(django_db_setup: None) -> Iterator[None]:
    """Before the test database is dropped, wait until nothing else is connected to it (PostgreSQL).

    Torn down after every server fixture. A stopped server's backends end a
    moment after its process; if a session is still there after the bound,
    it is described on stderr (its last query says who left it) and ended,
    so that the database can be dropped.
    """
    yield
    settings_dict = connection.settings_dict
    if not settings_dict["ENGINE"].endswith("postgresql"):
        return
    connections.close_all()
    connection.close_pool()  # type: ignore[attr-defined]  # (this process's own pool)
    others = (
        "SELECT pid, backend_start::text, state, left(query, 200) FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> pg_backend_pid()"
    )
    server_url = database_url({**settings_dict, "NAME": "postgres"})
    with psycopg.connect(server_url, autocommit=True, connect_timeout=5) as admin:
        deadline = time.monotonic() + 10
        while (rows := admin.execute(others, [settings_dict["NAME"]]).fetchall()) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid, started, state, query in rows:
            print(f"Still connected to the test database: pid {pid} since {started}, {state}: {query}", file=sys.stderr)
            admin.execute("SELECT pg_terminate_backend(%s)", [pid])


@pytest.fixture(scope="session", autouse=True)
def short_lived_db_connections(django_db_setup: None) -> None:
    """Close this process's database connections after each use, in every thread.

    Thread-pool threads would otherwise keep connections open, and the
    test database could not be dropped at the end.
    """
    connections.settings["default"]["CONN_MAX_AGE"] = 0


@pytest.fixture
def server_log_clean(daphne: DaphneServer) -> Iterator[None]:
    """Fail if the shared server logs an error or a traceback during the test."""
    mark = daphne.log_size()
    yield
    daphne.assert_log_clean(since=mark)


# The OpenAPI schema.


@pytest.fixture(scope="session")
def openapi_schema() -> dict[str, Any]:
    """The schema as ``/api/schema/`` serves it, in JSON."""
    response = Client().get("/api/schema/?format=json")
    assert response.status_code == 200, response.content
    schema: dict[str, Any] = response.json()
    return schema


@pytest.fixture
def api_fuzz_server(
    daphne_factory: Callable[..., DaphneServer], redis_url: str, make_user: Callable[..., Any]
) -> Iterator[tuple[DaphneServer, str]]:
    """A server of its own for schemathesis, and an access token of a user who signed in to it.

    The server is stopped when the test ends, before its user is deleted:
    runs the test started are cancelled by its shutdown, not left to fail.
    """
    user = make_user("fuzzer")
    user.set_password("fuzzer password")
    user.save()
    # The access token outlives the run (the factory lifts the rate limits).
    server = daphne_factory(redis_url=redis_url, JWT_ACCESS_LIFETIME_SECONDS="900")
    try:
        answer = http_request(
            server.http_url + "/api/auth/token/", body={"username": "fuzzer", "password": "fuzzer password"}
        )
        assert answer.status == 200, answer.body
        yield server, answer.json()["access"]
    finally:
        server.stop()


# Users.


@pytest.fixture
def staff_client(django_user_model: Any, transactional_db: None) -> Client:
    """Django's test client, logged in to the admin as a superuser."""
    admin = django_user_model.objects.create_superuser("root", password=None)
    client = Client()
    client.force_login(admin)
    return client


@pytest.fixture
def make_user(transactional_db: None, django_user_model: Any) -> Callable[..., Any]:
    def make(username: str | None = None, *, is_active: bool = True) -> Any:
        # No password: hashing one costs a third of a second, and tests log in with tokens.
        return django_user_model.objects.create_user(
            username=username or f"user-{uuid.uuid4().hex[:8]}", password=None, is_active=is_active
        )

    return make


@pytest.fixture
def alice(make_user: Callable[..., Any]) -> Any:
    return make_user("alice")


@pytest.fixture
def bob(make_user: Callable[..., Any]) -> Any:
    return make_user("bob")


def pytest_report_header() -> list[str]:
    return [f"database: {django_settings.DATABASES['default']['ENGINE']}", f"repo: {Path(__file__).parent.parent}"]
