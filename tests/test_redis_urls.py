"""config.redis_urls: every REDIS_URL form into channels-redis hosts, and the options' own check."""

from dataclasses import replace

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from config.redis_urls import RedisOptions, redis_hosts


def test_redis_url_forms() -> None:
    options = settings.REDIS_OPTIONS
    [one] = redis_hosts("redis://r:6379/2", options=options)
    assert one["address"] == "redis://r:6379/2"
    shards = redis_hosts("redis://a:6379/0, rediss://b:6380/0", options=options)
    assert [host["address"] for host in shards] == ["redis://a:6379/0", "rediss://b:6380/0"]
    [sentinel] = redis_hosts("sentinel://:p%40ss@s1:26379,s2/mymaster/3", options=options)
    assert sentinel["sentinels"] == [("s1", 26379), ("s2", 26379)]
    assert (sentinel["master_name"], sentinel["db"], sentinel["password"]) == ("mymaster", 3, "p@ss")
    [with_user] = redis_hosts(" sentinel://app:secret@s1:26380/m ", options=options)
    assert (with_user["username"], with_user["password"], with_user["db"]) == ("app", "secret", 0)
    assert with_user["sentinels"] == [("s1", 26380)]
    for bad in ("http://r:6379/0", "sentinel://s1:26379", "sentinel:///mymaster", "sentinel://s1/m/0?ssl=true"):
        with pytest.raises(ImproperlyConfigured):
            redis_hosts(bad, options=options)


def test_the_sentinels_password_goes_to_the_sentinels_only_and_stays_out_of_repr() -> None:
    options = replace(settings.REDIS_OPTIONS, sentinel_password="hunter2")
    [entry] = redis_hosts("sentinel://:master-pw@s1/m", options=options)
    assert entry["sentinel_kwargs"] == {
        "socket_timeout": options.socket_timeout_seconds,
        "socket_connect_timeout": options.socket_connect_timeout_seconds,
        "password": "hunter2",
    }
    assert entry["password"] == "master-pw"
    assert "hunter2" not in repr(options)


def test_socket_timeout_must_exceed_the_blocking_read() -> None:
    with pytest.raises(ImproperlyConfigured, match="REDIS_SOCKET_TIMEOUT_SECONDS must exceed"):
        replace(settings.REDIS_OPTIONS, socket_timeout_seconds=5.0, brpop_timeout_seconds=5.0)
    assert isinstance(replace(settings.REDIS_OPTIONS, socket_timeout_seconds=5.1), RedisOptions)
