"""REST rate limits: scoped, counted in the shared cache so every server process sees the same totals."""

import logging
from types import SimpleNamespace
from typing import Any

from redis.exceptions import RedisError
from rest_framework.exceptions import ParseError, Throttled
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import APIView, exception_handler

logger = logging.getLogger(__name__)


class ScopedThrottle(ScopedRateThrottle):
    """DRF's scoped throttle, failing open: if the cache (Redis) is down, requests go through unlimited.

    Refusing every sign-in because a counter cannot be read would turn a
    Redis outage into a full outage; the failure is logged instead.
    """

    def allow_request(self, request: Request, view: APIView) -> bool:
        try:
            return super().allow_request(request, view)
        except (RedisError, OSError) as exc:  # The cache is unreachable: let the request through, and say so.
            logger.warning("Rate limit not checked (%s: %s); allowing the request", type(exc).__name__, exc)
            return True


class WriteRateThrottle(ScopedThrottle):
    """A scoped throttle that counts only writes: reading a list never uses up the budget for starting runs."""

    def allow_request(self, request: Request, view: APIView) -> bool:
        if request.method in ("GET", "HEAD", "OPTIONS"):
            return True
        return super().allow_request(request, view)


def write_rate_wait_seconds(*, scope: str, user_id: int) -> float | None:
    """Count one write of the user in ``scope``, on the REST throttle's own counter; the wait if over the rate.

    For endpoints that are not DRF views (the AG-UI consumer): the same cache
    key, so starting runs there and through ``POST /api/runs/`` shares one budget.
    None means allowed. Synchronous: the cache is.
    """
    throttle = WriteRateThrottle()
    request = SimpleNamespace(method="POST", user=SimpleNamespace(pk=user_id, is_authenticated=True))
    if throttle.allow_request(request, SimpleNamespace(throttle_scope=scope)):  # type: ignore[arg-type]
        return None
    return throttle.wait() or 1.0


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, with a ``code`` on throttled and unparsable requests as on the API's other errors."""
    response = exception_handler(exc, context)
    if response is None:
        return None  # Not an API exception: notifications.middleware answers in JSON.
    if isinstance(exc, Throttled):
        response.data = {"code": "rate_limited", "detail": str(exc.detail)}
    elif isinstance(exc, ParseError):
        response.data = {"code": "invalid_json", "detail": str(exc.detail)}
    return response
