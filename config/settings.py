"""Settings for the agent-events service, read from the environment.

Every value has a default that works on a laptop (SQLite file, in-memory
channel layer, debug on). With ``DJANGO_DEBUG`` off the service refuses to
start without a real secret key.
"""

import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from config.redis_urls import RedisOptions, redis_channel_layers

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (true/false), got {raw!r}")


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from None


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, got {raw!r}") from None


def env_rate(name: str, default: str) -> str:
    """A DRF rate such as ``10/min``: a count, a slash, and a period (s, m, h or d, any suffix)."""
    value = env_str(name, default).strip()
    count, _, period = value.partition("/")
    if not count.isdigit() or period[:1] not in {"s", "m", "h", "d"}:
        raise ImproperlyConfigured(f"{name} must be a rate such as 10/min or 100/hour, got {value!r}")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


DEBUG = env_bool("DJANGO_DEBUG", True)

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("DJANGO_SECRET_KEY is required when DJANGO_DEBUG is off.")
    SECRET_KEY = "dev-only-insecure-key-do-not-use-in-production-ever-0123456789"  # noqa: S105 (debug only)
if not DEBUG and (len(SECRET_KEY) < 50 or len(set(SECRET_KEY)) < 5):
    raise ImproperlyConfigured(
        "DJANGO_SECRET_KEY must be at least 50 random characters when DJANGO_DEBUG is off; make one with: "
        "python -c 'import secrets; print(secrets.token_urlsafe(50))'"
    )

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
# Origins trusted for the admin's forms behind a proxy, e.g. https://events.example.com.
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

# HTTPS, served by a TLS-terminating proxy in front of daphne. On by default
# with debug off: secure cookies, a redirect from plain HTTP (except /healthz,
# which health checks call directly), and HSTS. Turn it off only where the
# service is really reached over plain HTTP (a private network, a demo).
HTTPS = env_bool("DJANGO_HTTPS", not DEBUG)
if env_bool("DJANGO_TRUST_X_FORWARDED_PROTO", False):
    # Only behind a proxy that sets X-Forwarded-Proto itself, overwriting the client's.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
if HTTPS:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = env_bool("DJANGO_SSL_REDIRECT", True)
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
    SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 31_536_000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("DJANGO_HSTS_PRELOAD", True)

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework_simplejwt.token_blacklist",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "notifications",
    "agents",
    "console",
]

MIDDLEWARE = [
    # Outermost, so that it sees every error response under /api/, whoever made it.
    "notifications.middleware.ApiErrorsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
if not DEBUG:
    # Static files in production: collected, hashed and compressed, served by
    # WhiteNoise. With debug on, config.asgi serves them from the apps instead.
    MIDDLEWARE.insert(2, "whitenoise.middleware.WhiteNoiseMiddleware")

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Database. SQLite gets IMMEDIATE transactions so that concurrent writers queue
# on the write lock instead of failing to upgrade a read lock, and WAL so that
# readers do not block the writer.
DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}")
# Connections are reused for DB_CONN_MAX_AGE_SECONDS (checked before reuse):
# opening one per query would cost more than the query.
DATABASES = {
    "default": dj_database_url.parse(
        DATABASE_URL, conn_max_age=env_int("DB_CONN_MAX_AGE_SECONDS", 60), conn_health_checks=True
    )
}
# PostgreSQL: a pooled connection idle for longer than this is checked (a round trip) before it is lent.
DB_POOL_CHECK_IDLE_SECONDS = env_float("DB_POOL_CHECK_IDLE_SECONDS", 2.0)
# PostgreSQL: while it is down, one connection attempt per this interval tries it; the others fail at once.
DB_OUTAGE_PROBE_SECONDS = env_float("DB_OUTAGE_PROBE_SECONDS", 0.5)
DB_STATEMENT_TIMEOUT_MS = env_int("DB_STATEMENT_TIMEOUT_MS", 15_000)
# PostgreSQL: the event writer's connections (notifications/pgwrite.py) prepare a statement on its
# fifth use. Turn it off behind a pooler that cannot keep prepared statements (PgBouncer before
# 1.21 in transaction mode).
DB_PREPARED_STATEMENTS = env_bool("DB_PREPARED_STATEMENTS", True)
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # Django's backend, failing fast while the database is down (config/postgresql/base.py).
    DATABASES["default"]["ENGINE"] = "config.postgresql"
    # Bound every query and connection attempt: no request waits forever on the database.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        connect_timeout=env_int("DB_CONNECT_TIMEOUT_SECONDS", 5),
        options=f"-c statement_timeout={DB_STATEMENT_TIMEOUT_MS}",
    )
    if env_bool("DB_POOL", True):
        # Under ASGI every HTTP request runs its ORM calls in a thread of its
        # own, so per-thread persistent connections would be opened per
        # request and left for the garbage collector. A process-wide pool
        # (psycopg_pool, through Django) hands the same connections to every
        # thread instead; Django requires CONN_MAX_AGE=0 with it.
        DATABASES["default"]["CONN_MAX_AGE"] = 0
        # With CONN_HEALTH_CHECKS the pool checks a connection before lending it,
        # if it sat idle (config/postgresql/pool.py), not before every loan.
        DATABASES["default"]["OPTIONS"]["pool"] = {
            "min_size": env_int("DB_POOL_MIN_SIZE", 1),
            "max_size": env_int("DB_POOL_MAX_SIZE", 20),
            # How long a caller waits for a connection before the answer is 503 unavailable.
            "timeout": env_float("DB_POOL_TIMEOUT_SECONDS", 2.0),
            # The pool retries a lost connection with a doubling delay, which after a
            # 30 s outage is 16 s long; giving a slot up after this long instead lets
            # the next caller open a fresh one at once.
            "reconnect_timeout": env_float("DB_POOL_RECONNECT_SECONDS", 2.0),
            # A connection idle this long is closed (down to min_size): after a burst, a process
            # gives back what it no longer uses, so many processes fit in max_connections.
            "max_idle": env_float("DB_POOL_MAX_IDLE_SECONDS", 600.0),
        }
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": env_int("SQLITE_BUSY_TIMEOUT_SECONDS", 20),
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # Tests talk to a real server subprocess, so the test database must be a
    # file that both processes open, not an in-memory one.
    DATABASES["default"]["TEST"] = {"NAME": str(BASE_DIR / ".test-db.sqlite3")}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
IS_POSTGRESQL = DATABASES["default"]["ENGINE"] == "config.postgresql"
if IS_POSTGRESQL:
    # The task engine that runs agents on workers (agents/workers.py). Its tables are
    # PostgreSQL's alone, so on SQLite it is not installed and runs stay in-process.
    INSTALLED_APPS.insert(INSTALLED_APPS.index("agents"), "procrastinate.contrib.django")

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env_str("DJANGO_STATIC_ROOT", str(BASE_DIR / "staticfiles")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage" if DEBUG else "config.storage.StaticStorage"
    },
}

# Channel layer. Unset REDIS_URL: in-memory, one process only. Set: the
# channels-redis pub/sub layer (CHANNEL_LAYER=pubsub, the default) or the
# list-based core layer (CHANNEL_LAYER=core). Either way redis-py's socket
# timeout is raised above the layer's 5 s blocking read, so idle connections
# are not torn down by a read timeout, and the core layer gets a pool that
# waits for a free connection instead of failing at 100.
REDIS_URL = env_str("REDIS_URL", "")
CHANNEL_LAYER = env_str("CHANNEL_LAYER", "pubsub")
REDIS_OPTIONS = RedisOptions(
    socket_timeout_seconds=env_float("REDIS_SOCKET_TIMEOUT_SECONDS", 15.0),
    socket_connect_timeout_seconds=env_float("REDIS_SOCKET_CONNECT_TIMEOUT_SECONDS", 2.0),
    max_connections=env_int("REDIS_MAX_CONNECTIONS", 1000),
    pool_timeout_seconds=env_float("REDIS_POOL_TIMEOUT_SECONDS", 5.0),
    brpop_timeout_seconds=env_float("REDIS_BRPOP_TIMEOUT_SECONDS", 5.0),
    channel_capacity=env_int("CHANNEL_LAYER_CAPACITY", 1000),
    channel_expiry_seconds=env_int("CHANNEL_LAYER_EXPIRY_SECONDS", 60),
    group_expiry_seconds=env_int("CHANNEL_LAYER_GROUP_EXPIRY_SECONDS", 86400),
    sentinel_password=env_str("REDIS_SENTINEL_PASSWORD", ""),
)

CHANNEL_LAYERS = (
    redis_channel_layers(
        redis_url=REDIS_URL,
        layer=CHANNEL_LAYER,
        prefix=env_str("CHANNEL_LAYER_PREFIX", "agentevents"),
        options=REDIS_OPTIONS,
    )
    if REDIS_URL
    else {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
)

# REST framework and JWT.
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework_simplejwt.authentication.JWTAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": [
        "notifications.parsers.LimitedJSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_PAGINATION_CLASS": None,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "notifications.throttles.api_exception_handler",
    # Rates per client address (sign-in, refresh) or per user (starting and cancelling runs).
    "DEFAULT_THROTTLE_RATES": {
        "auth": env_rate("THROTTLE_AUTH_RATE", "10/min"),
        "auth_refresh": env_rate("THROTTLE_AUTH_REFRESH_RATE", "60/min"),
        "runs": env_rate("THROTTLE_RUNS_RATE", "60/min"),
    },
    # The client address is REMOTE_ADDR, which daphne --proxy-headers takes from
    # the proxy's X-Forwarded-For; DRF never reads that header itself, so a
    # client cannot pick its own address.
    "NUM_PROXIES": 0,
}

# The cache holds the REST rate-limit counters; in Redis they are shared by
# every server process. CACHE_REDIS_URL defaults to REDIS_URL's first server
# (a Sentinel REDIS_URL needs an explicit one); without either, per process.
_first_redis = REDIS_URL.split(",")[0].strip()
CACHE_REDIS_URL = env_str(
    "CACHE_REDIS_URL", _first_redis if _first_redis.startswith(("redis://", "rediss://", "unix://")) else ""
)
CACHES = {
    "default": (
        {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": CACHE_REDIS_URL,
            "KEY_PREFIX": env_str("CHANNEL_LAYER_PREFIX", "agentevents") + ":cache",
            "OPTIONS": {
                "socket_timeout": REDIS_OPTIONS.socket_connect_timeout_seconds,
                "socket_connect_timeout": REDIS_OPTIONS.socket_connect_timeout_seconds,
            },
        }
        if CACHE_REDIS_URL
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    )
}
# The OpenAPI schema (/api/schema/) and its Swagger UI (/api/docs/): public, like the
# protocol document; the UI's assets are this project's own static files (the sidecar).
SPECTACULAR_SETTINGS = {
    "TITLE": "Agent events API",
    # The AG-UI endpoints are left out: they answer with a Server-Sent Events stream from a
    # Channels consumer in front of Django, which the schema generator does not see, and
    # whose events AG-UI's own schemas describe (docs/protocol.md, section 12).
    "DESCRIPTION": (
        "The REST half of the service; the WebSocket protocol and the AG-UI streams (`/api/ag-ui/`, "
        "Server-Sent Events) are in docs/protocol.md."
    ),
    "VERSION": "1.0.0",
    "SCHEMA_PATH_PREFIX": "/api/",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {"RunStatus": "agents.models.RunStatus", "EventType": "notifications.models.EventType"},
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "SWAGGER_UI_SETTINGS": {"persistAuthorization": False, "displayOperationId": True},
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "notifications.openapi.query_empty_is_absent",
        "agents.openapi.run_links",
    ],
}
SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(seconds=env_int("JWT_ACCESS_LIFETIME_SECONDS", 300)),
    "REFRESH_TOKEN_LIFETIME": timedelta(seconds=env_int("JWT_REFRESH_LIFETIME_SECONDS", 86400)),
    "UPDATE_LAST_LOGIN": False,
}

# WebSocket protocol limits. Tests shorten the intervals through the same
# variables; see docs/protocol.md for what each one means to a client.
WS_HEARTBEAT_SECONDS = env_float("WS_HEARTBEAT_SECONDS", 25.0)
if WS_HEARTBEAT_SECONDS <= 0:
    raise ImproperlyConfigured("WS_HEARTBEAT_SECONDS must be positive.")
# The heartbeat interval is split into this many slots, each connection beating
# in one: a process reads its users' streams once per slot (one query a second
# at the default interval), and the beats of many sockets are spread out.
WS_HEARTBEAT_SLOTS = env_int("WS_HEARTBEAT_SLOTS", 25)
if WS_HEARTBEAT_SLOTS < 1:
    raise ImproperlyConfigured("WS_HEARTBEAT_SLOTS must be at least 1.")
# Admission (notifications/admission.py): a connect is closed with 4503 and a
# retry appointment when the oldest handshake in progress (accept to hello) has
# waited WS_CONNECT_MAX_WAIT_SECONDS, or WS_CONNECT_MAX_PENDING are in progress.
# Appointments start about WS_CONNECT_RETRY_SECONDS ahead (half to one and a
# half of it) and are spaced at WS_RECONNECT_RATE_PER_SECOND. At 5 s a 10,000-client
# restart on 2 cores refused 12,936 connects and took 48.6 s; at 15 s, 1,624 and
# 21.2 s (bench/RESULTS.md).
WS_CONNECT_MAX_PENDING = env_int("WS_CONNECT_MAX_PENDING", 10_000)
WS_CONNECT_MAX_WAIT_SECONDS = env_float("WS_CONNECT_MAX_WAIT_SECONDS", 15.0)
WS_CONNECT_RETRY_SECONDS = env_float("WS_CONNECT_RETRY_SECONDS", 2.0)
# On SIGTERM each client is told to come back after a random delay spread over
# (open sockets / WS_RECONNECT_RATE_PER_SECOND) seconds, at least one second and
# at most WS_RECONNECT_SPREAD_MAX_SECONDS: the rate one server admits connects
# (measured about 850/s on 2 cores, bench/RESULTS.md).
WS_RECONNECT_RATE_PER_SECOND = env_float("WS_RECONNECT_RATE_PER_SECOND", 1000.0)
WS_RECONNECT_SPREAD_MAX_SECONDS = env_float("WS_RECONNECT_SPREAD_MAX_SECONDS", 30.0)
WS_MAX_MESSAGE_BYTES = env_int("WS_MAX_MESSAGE_BYTES", 64 * 1024)
# An event's data, JSON-encoded, is refused above this; a frame the server
# sends is at most this plus the envelope, well under WS_MAX_SERVER_FRAME_BYTES.
EVENT_DATA_MAX_BYTES = env_int("EVENT_DATA_MAX_BYTES", 256 * 1024)
WS_MAX_SERVER_FRAME_BYTES = EVENT_DATA_MAX_BYTES + 64 * 1024
# How deeply arrays and objects may nest in JSON a client sends (REST bodies,
# WebSocket frames, run input); deeper is refused with invalid_json. Event data
# may nest a few levels more, for the envelopes that events put around a run's
# input, a tool's arguments and an agent's result.
JSON_MAX_DEPTH = env_int("JSON_MAX_DEPTH", 32)
if not 1 <= JSON_MAX_DEPTH <= 200:
    raise ImproperlyConfigured("JSON_MAX_DEPTH must be between 1 and 200.")
EVENT_DATA_MAX_DEPTH = JSON_MAX_DEPTH + 8
WS_RATE_LIMIT_MESSAGES = env_int("WS_RATE_LIMIT_MESSAGES", 20)
WS_RATE_LIMIT_PER_SECONDS = env_float("WS_RATE_LIMIT_PER_SECONDS", 1.0)
WS_RATE_LIMIT_BURST = env_int("WS_RATE_LIMIT_BURST", 40)
WS_RATE_LIMIT_STRIKES = env_int("WS_RATE_LIMIT_STRIKES", 10)
WS_REPLAY_BATCH_SIZE = env_int("WS_REPLAY_BATCH_SIZE", 500)
# A resume that would replay more than this is refused; older events come
# from GET /api/events/ a page at a time.
WS_RESUME_MAX_EVENTS = env_int("WS_RESUME_MAX_EVENTS", 10_000)
# Origins allowed to open a WebSocket from a browser; "*" allows any. By
# default the same hosts as ALLOWED_HOSTS, on any scheme and port.
WS_ALLOWED_ORIGINS = env_list("WS_ALLOWED_ORIGINS", ALLOWED_HOSTS)

# On SIGTERM the server closes WebSockets with 1001 and waits this long for
# clients to answer before cancelling what is left.
SHUTDOWN_CLOSE_GRACE_SECONDS = env_float("SHUTDOWN_CLOSE_GRACE_SECONDS", 2.0)
# Connections the kernel queues for the server to accept (capped by net.core.somaxconn).
SERVER_LISTEN_BACKLOG = env_int("SERVER_LISTEN_BACKLOG", 4096)
# How often daphne's timeout checker runs (WebSocket pings, handshake timeouts), and
# how often the server pings each WebSocket to find peers that vanished.
SERVER_TIMEOUT_CHECK_SECONDS = env_float("SERVER_TIMEOUT_CHECK_SECONDS", 5.0)
WS_PING_SECONDS = env_int("WS_PING_SECONDS", 60)
# After the server sends a close frame, how long the client has to answer it
# (reading whatever was queued before it) before the connection is dropped.
WS_CLOSE_HANDSHAKE_SECONDS = env_float("WS_CLOSE_HANDSHAKE_SECONDS", 5.0)
# The server's garbage collector (config/server.py, tune_gc): what is loaded at
# start is frozen out of every collection, and the youngest generation is
# collected every SERVER_GC_THRESHOLDS[0] allocations instead of 700. With
# Python's defaults a 10,000-client connect storm spent half its CPU in full
# collections of the connections' own objects (bench/RESULTS.md).
SERVER_GC_THRESHOLDS = tuple(int(n) for n in env_list("SERVER_GC_THRESHOLDS", ["50000", "20", "10"]))
if len(SERVER_GC_THRESHOLDS) != 3 or min(SERVER_GC_THRESHOLDS) < 1:
    raise ImproperlyConfigured("SERVER_GC_THRESHOLDS must be three positive integers, like 50000,20,10.")

# Agent runs.
# Modules that register the deployment's own agents and tools (dotted paths), imported at start
# by every process: web servers, workers and commands.
AGENT_MODULES = env_list("AGENT_MODULES", [])
AGENT_RUN_TIMEOUT_SECONDS = env_float("AGENT_RUN_TIMEOUT_SECONDS", 60.0)
AGENT_RUN_MAX_TIMEOUT_SECONDS = env_float("AGENT_RUN_MAX_TIMEOUT_SECONDS", 600.0)
AGENT_MAX_ACTIVE_RUNS_PER_USER = env_int("AGENT_MAX_ACTIVE_RUNS_PER_USER", 5)
AGENT_INPUT_MAX_BYTES = env_int("AGENT_INPUT_MAX_BYTES", 16 * 1024)
# How often a process checks whether another process asked to cancel one of its runs.
AGENT_CANCEL_POLL_SECONDS = env_float("AGENT_CANCEL_POLL_SECONDS", 0.5)
# On shutdown, how long runs get to record their cancellation.
AGENT_SHUTDOWN_TIMEOUT_SECONDS = env_float("AGENT_SHUTDOWN_TIMEOUT_SECONDS", 5.0)
# A run's end that cannot be written (the database is down) is retried, the
# delay doubling up to this, until it is written or the process stops.
AGENT_END_RETRY_MAX_SECONDS = env_float("AGENT_END_RETRY_MAX_SECONDS", 1.0)
# A run still active this long past its timeout lost its process.
AGENT_LOST_GRACE_SECONDS = env_float("AGENT_LOST_GRACE_SECONDS", 60.0)
# LangChain/LangGraph agents (agents/langchain/): model tokens become one agent_thinking
# event per this many milliseconds or characters of text, whichever comes first.
AGENT_THINKING_COALESCE_MS = env_float("AGENT_THINKING_COALESCE_MS", 50.0)
AGENT_THINKING_COALESCE_CHARS = env_int("AGENT_THINKING_COALESCE_CHARS", 400)
if AGENT_THINKING_COALESCE_MS < 0 or AGENT_THINKING_COALESCE_CHARS < 1:
    raise ImproperlyConfigured("AGENT_THINKING_COALESCE_MS must be >= 0 and AGENT_THINKING_COALESCE_CHARS >= 1.")
# AG-UI streams (/api/ag-ui/): an idle stream sends an SSE comment this often,
# and reads the log then too, so a lost live message delays an event by at most this.
AGUI_KEEPALIVE_SECONDS = env_float("AGUI_KEEPALIVE_SECONDS", 15.0)
if AGUI_KEEPALIVE_SECONDS <= 0:
    raise ImproperlyConfigured("AGUI_KEEPALIVE_SECONDS must be positive.")
# Where runs execute: "inprocess" (in the process that started them: the web server or
# run_agent) or "worker" (on `manage.py run_worker` processes, through Procrastinate; web
# servers and run_agent then only enqueue). Workers need PostgreSQL; the default follows it.
AGENT_EXECUTION = env_str("AGENT_EXECUTION", "inprocess")
if AGENT_EXECUTION not in ("inprocess", "worker"):
    raise ImproperlyConfigured(f"AGENT_EXECUTION must be inprocess or worker, not {AGENT_EXECUTION!r}.")
if AGENT_EXECUTION == "worker" and not IS_POSTGRESQL:
    raise ImproperlyConfigured("AGENT_EXECUTION=worker needs PostgreSQL (DATABASE_URL=postgres://...).")
# run_worker: how many runs one worker executes at once, and on which queues.
AGENT_WORKER_CONCURRENCY = env_int("AGENT_WORKER_CONCURRENCY", 50)
AGENT_WORKER_QUEUES = env_list("AGENT_WORKER_QUEUES", ["agents"])
# On SIGTERM a worker takes no new run, lets its runs finish for this long, then cancels the rest.
AGENT_WORKER_SHUTDOWN_GRACE_SECONDS = env_float("AGENT_WORKER_SHUTDOWN_GRACE_SECONDS", 30.0)
# A worker writes its heartbeat this often; one silent for AGENT_WORKER_STALLED_SECONDS is dead,
# and its runs end as lost (or restart, for agents that allow it) at the next check, made every
# AGENT_WORKER_REAP_SECONDS by every worker and by drain_events. With the defaults a killed
# worker's runs end within 10 + 5 s.
AGENT_WORKER_HEARTBEAT_SECONDS = env_float("AGENT_WORKER_HEARTBEAT_SECONDS", 2.0)
AGENT_WORKER_STALLED_SECONDS = env_float("AGENT_WORKER_STALLED_SECONDS", 10.0)
AGENT_WORKER_REAP_SECONDS = env_float("AGENT_WORKER_REAP_SECONDS", 5.0)
# How often an idle worker looks for jobs besides being woken by LISTEN/NOTIFY.
AGENT_WORKER_POLL_SECONDS = env_float("AGENT_WORKER_POLL_SECONDS", 5.0)
if AGENT_WORKER_STALLED_SECONDS <= 2 * AGENT_WORKER_HEARTBEAT_SECONDS:
    raise ImproperlyConfigured("AGENT_WORKER_STALLED_SECONDS must be above twice AGENT_WORKER_HEARTBEAT_SECONDS.")
# How many times a run of an agent declared restartable (@agent(restartable=True)) is started
# again after its worker died, before it ends as lost.
AGENT_RESTART_MAX_ATTEMPTS = env_int("AGENT_RESTART_MAX_ATTEMPTS", 3)
PROCRASTINATE_AUTODISCOVER_MODULE_NAME = "tasks"
# run_agent on workers: how often it reads the run's new events, and after how long a run
# that no worker took yet makes it say so.
RUN_AGENT_FOLLOW_POLL_SECONDS = env_float("RUN_AGENT_FOLLOW_POLL_SECONDS", 0.1)
RUN_AGENT_WORKER_HINT_SECONDS = env_float("RUN_AGENT_WORKER_HINT_SECONDS", 5.0)
# Async callables (dotted paths) the server awaits on SIGTERM, beside closing sockets.
SHUTDOWN_HOOKS = env_list("SHUTDOWN_HOOKS", ["agents.supervisor.ashutdown"])

# drain_events: publishing what the on-commit publisher could not.
DRAIN_BATCH_SIZE = env_int("DRAIN_BATCH_SIZE", 1000)
DRAIN_CONCURRENCY = env_int("DRAIN_CONCURRENCY", 2)
DRAIN_POLL_SECONDS = env_float("DRAIN_POLL_SECONDS", 1.0)
# Above the publisher's 5 s send timeout, so the drainer does not race an on-commit publish.
DRAIN_MIN_AGE_SECONDS = env_float("DRAIN_MIN_AGE_SECONDS", 10.0)
DRAIN_MAX_ATTEMPTS = env_int("DRAIN_MAX_ATTEMPTS", 10)
DRAIN_BACKOFF_BASE_SECONDS = env_float("DRAIN_BACKOFF_BASE_SECONDS", 1.0)
DRAIN_BACKOFF_MAX_SECONDS = env_float("DRAIN_BACKOFF_MAX_SECONDS", 300.0)
DRAIN_SHUTDOWN_SECONDS = env_float("DRAIN_SHUTDOWN_SECONDS", 5.0)
# The group writer: a published batch's outbox rows wait this long for the next batch's statement
# to delete them, then are deleted on their own. Far below DRAIN_MIN_AGE_SECONDS; no caller waits for it.
EVENT_OUTBOX_MARK_WAIT_MS = env_float("EVENT_OUTBOX_MARK_WAIT_MS", 5.0)
if not 0 <= EVENT_OUTBOX_MARK_WAIT_MS <= 60_000:
    raise ImproperlyConfigured("EVENT_OUTBOX_MARK_WAIT_MS must be between 0 and 60000.")
# Sync callables (dotted paths) the drainer runs every DRAIN_HOOK_SECONDS, such as reaping lost runs
# and the runs of dead workers.
DRAIN_HOOKS = env_list(
    "DRAIN_HOOKS",
    ["agents.services.runs_reap_lost_default"]
    + (["agents.workers.runs_reap_stalled_default"] if IS_POSTGRESQL else []),
)
DRAIN_HOOK_SECONDS = env_float("DRAIN_HOOK_SECONDS", 10.0)

# Retention: prune_events deletes published events older than this many days
# (pending ones never); 0 keeps everything.
EVENT_RETENTION_DAYS = env_float("EVENT_RETENTION_DAYS", 30.0)
PRUNE_BATCH_SIZE = env_int("PRUNE_BATCH_SIZE", 1000)

EVENTS_PAGE_MAX = env_int("EVENTS_PAGE_MAX", 500)
EVENTS_PAGE_DEFAULT = env_int("EVENTS_PAGE_DEFAULT", 100)

# Prometheus metrics (notifications/metrics.py), served at /metrics to a scrape
# with the bearer token or from an allowed network (CIDRs), and with debug on
# to localhost. Off: nothing is recorded, and /metrics answers 404.
METRICS_ENABLED = env_bool("METRICS_ENABLED", True)
METRICS_TOKEN = env_str("METRICS_TOKEN", "")
METRICS_ALLOWED_NETWORKS = env_list("METRICS_ALLOWED_NETWORKS", [])
# drain_events serves its metrics on this port (0: not served) and address.
DRAIN_METRICS_PORT = env_int("DRAIN_METRICS_PORT", 0)
DRAIN_METRICS_ADDRESS = env_str("DRAIN_METRICS_ADDRESS", "127.0.0.1")

LOG_LEVEL = env_str("LOG_LEVEL", "INFO")
# plain: human-readable lines; json: one JSON object per line (time, level,
# logger, message, and the access log's client, request, status and bytes).
LOG_FORMAT = env_str("LOG_FORMAT", "plain")
if LOG_FORMAT not in {"plain", "json"}:
    raise ImproperlyConfigured(f"LOG_FORMAT must be plain or json, got {LOG_FORMAT!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "config.logfmt.JsonFormatter"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT},
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # channels-redis logs dropped group messages at INFO; the log fills
        # those gaps, but an operator should still see that it happened.
        "channels_redis": {"level": "INFO"},
        "daphne": {"level": "WARNING"},
        # A request for a host not in ALLOWED_HOSTS gets 400; scanners send
        # them all day, and a traceback for each would drown real errors.
        "django.security.DisallowedHost": {"level": "CRITICAL"},
        # The task engine logs every job's start and end at INFO; agents.workers logs what matters.
        "procrastinate": {"level": env_str("PROCRASTINATE_LOG_LEVEL", "WARNING")},
    },
}
