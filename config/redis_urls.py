"""Channel-layer configuration from a REDIS_URL: one server, shards, or Sentinel.

Settings read the environment and call this module; tests call it to point
a layer at Redis servers of their own.
"""

from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured


@dataclass(frozen=True)
class RedisOptions:
    """How the channel layer talks to Redis, beside the URL."""

    socket_timeout_seconds: float
    socket_connect_timeout_seconds: float
    # The core layer's pool and queues; the pub/sub layer keeps no queues.
    max_connections: int
    pool_timeout_seconds: float
    brpop_timeout_seconds: float
    channel_capacity: int
    channel_expiry_seconds: int
    group_expiry_seconds: int
    # The sentinels' own password, when they require one; kept out of repr, which logs and debug pages show.
    sentinel_password: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        if self.socket_timeout_seconds <= self.brpop_timeout_seconds:
            raise ImproperlyConfigured(
                "REDIS_SOCKET_TIMEOUT_SECONDS must exceed REDIS_BRPOP_TIMEOUT_SECONDS, "
                "or idle connections die with a Redis TimeoutError."
            )


def redis_hosts(redis_url: str, *, options: RedisOptions) -> list[dict[str, object]]:
    """Parse REDIS_URL into channels-redis ``hosts``.

    - ``redis://host:6379/0`` (or ``rediss://``, ``unix://``): one server.
    - Several URLs separated by commas: the layer shards groups and channels
      across them (every process must list them in the same order).
    - ``sentinel://[:password@]host:26379,host2:26379/<master>[/db]``: the
      master that Redis Sentinel names, followed across failovers.
    """
    timeouts: dict[str, object] = {
        "socket_timeout": options.socket_timeout_seconds,
        "socket_connect_timeout": options.socket_connect_timeout_seconds,
    }
    redis_url = redis_url.strip()
    if redis_url.startswith("sentinel://"):
        auth, _, rest = redis_url.removeprefix("sentinel://").rpartition("@")
        addresses, _, path = rest.partition("/")
        master, _, db = path.partition("/")
        if not master or not addresses or "?" in path or not (db or "0").isdigit():
            raise ImproperlyConfigured(
                "A sentinel REDIS_URL names the sentinels, the master and optionally the database, with no "
                "query string: sentinel://[user:password@]host:26379,host2:26379/mymaster/0"
            )
        sentinels = []
        for address in addresses.split(","):
            host, _, port = address.rpartition(":") if ":" in address else (address, "", "26379")
            sentinels.append((host, int(port or 26379)))
        entry: dict[str, object] = {
            "sentinels": sentinels,
            "master_name": master,
            "db": int(db or 0),
            "sentinel_kwargs": dict(timeouts),
            **timeouts,
        }
        username, _, password = (unquote(part) for part in auth.partition(":")) if auth else ("", "", "")
        if username:
            entry["username"] = username
        if password:
            entry["password"] = password
        if options.sentinel_password:
            entry["sentinel_kwargs"] = {**timeouts, "password": options.sentinel_password}
        return [entry]
    urls = [url.strip() for url in redis_url.split(",") if url.strip()]
    for url in urls:
        if urlsplit(url).scheme not in {"redis", "rediss", "unix"}:
            # (Not the URL itself: it may hold a password. A comma in a password must be written %2C.)
            raise ImproperlyConfigured("REDIS_URL entries must be redis://, rediss:// or unix:// URLs")
    return [{"address": url, **timeouts} for url in urls]


def redis_channel_layers(
    *, redis_url: str, layer: str, prefix: str, options: RedisOptions
) -> dict[str, dict[str, object]]:
    """Build CHANNEL_LAYERS for the pub/sub or the core layer on ``redis_url``."""
    hosts = redis_hosts(redis_url, options=options)
    if layer == "pubsub":
        # No capacity or expiry here: pub/sub keeps no queues. A message for a
        # connection that is not listening is gone, and the log fills the gap.
        return {
            "default": {
                "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
                "CONFIG": {"hosts": hosts, "prefix": prefix},
            }
        }
    if layer == "core":
        for host in hosts:
            host["max_connections"] = options.max_connections
            if "address" in host:
                host["timeout"] = options.pool_timeout_seconds  # (the waiting pool; see notifications.layers)
        return {
            "default": {
                "BACKEND": "notifications.layers.RedisCoreChannelLayer",
                "CONFIG": {
                    "hosts": hosts,
                    "prefix": prefix,
                    "brpop_timeout_seconds": options.brpop_timeout_seconds,
                    # Per channel: messages a slow connection may have queued, and how
                    # long one waits, before the layer drops it (the log fills the gap).
                    "capacity": options.channel_capacity,
                    "expiry": options.channel_expiry_seconds,
                    "group_expiry": options.group_expiry_seconds,
                },
            }
        }
    raise ImproperlyConfigured(f"CHANNEL_LAYER must be 'pubsub' or 'core', got {layer!r}")
