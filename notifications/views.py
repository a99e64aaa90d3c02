"""HTTP endpoints: the caller's event log, and the service's health."""

import asyncio
import logging
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from .frames import event_frame
from .models import EventType
from .openapi import QUERY_INVALID, UNAUTHENTICATED, UNAVAILABLE, EventPageSerializer
from .selectors import events_after, events_pending_summary
from .services import alayer_ping

HEALTH_TIMEOUT_SECONDS = 1.5

logger = logging.getLogger(__name__)


class EventsQuery(serializers.Serializer):  # type: ignore[type-arg]
    after = serializers.IntegerField(min_value=0, default=0)
    limit = serializers.IntegerField(min_value=1, required=False)
    run = serializers.UUIDField(required=False)
    event = serializers.ChoiceField(choices=EventType.choices, required=False)

    def validate_limit(self, value: int) -> int:
        if value > settings.EVENTS_PAGE_MAX:
            raise serializers.ValidationError(f"Ensure this value is less than or equal to {settings.EVENTS_PAGE_MAX}.")
        return value


class EventListView(APIView):
    """List the caller's own events in seq order, a page at a time.

    The page is keyed by seq: ``next`` is the URL of the following page, or
    null when this page reached the end of the log.
    """

    @extend_schema(
        operation_id="events_list",
        summary="The caller's events, in seq order, a page at a time",
        description=(
            "Events with `seq > after`, oldest first. Pages are keyed by seq, not numbered: `next` is this "
            "query with `after` set to the last seq returned and `limit` set, or null when the page reached "
            "the end of the log. Unknown parameters are ignored."
        ),
        parameters=[
            OpenApiParameter(
                "after",
                {"type": "integer", "minimum": 0, "default": 0},
                description="Return events with `seq` above this.",
            ),
            OpenApiParameter(
                "limit",
                {"type": "integer", "minimum": 1, "maximum": settings.EVENTS_PAGE_MAX},
                description=f"Events per page (`EVENTS_PAGE_DEFAULT`, {settings.EVENTS_PAGE_DEFAULT}, if absent).",
            ),
            OpenApiParameter("run", {"type": "string", "format": "uuid"}, description="Only this run's events."),
            OpenApiParameter(
                "event", {"type": "string", "enum": list(EventType.values)}, description="Only events of this type."
            ),
        ],
        responses={200: EventPageSerializer, 400: QUERY_INVALID, 401: UNAUTHENTICATED, 503: UNAVAILABLE},
        tags=["events"],
    )
    def get(self, request: Request) -> Response:
        query = EventsQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        params: dict[str, Any] = query.validated_data
        limit = params.get("limit", settings.EVENTS_PAGE_DEFAULT)
        # One more than the page tells whether a next page exists.
        events = events_after(
            user_id=int(request.user.pk),  # type: ignore[arg-type]
            after=params["after"],
            limit=limit + 1,
            run_id=params.get("run"),
            event=params.get("event"),
        )
        next_url = None
        if len(events) > limit:
            events = events[:limit]
            next_params = request.query_params.copy()
            next_params["after"] = str(events[-1].seq)
            next_params["limit"] = str(limit)
            next_url = request.build_absolute_uri(f"{request.path}?{next_params.urlencode()}")
        return Response({"results": [event_frame(event) for event in events], "next": next_url})


async def healthz(request: HttpRequest) -> JsonResponse:
    """Report database and channel-layer health and the pending backlog; 503 if either is down.

    Both checks run at once, each bounded by ``HEALTH_TIMEOUT_SECONDS``, so a
    load balancer gets its answer in that time whatever is down.
    """
    (database, pending), channel_layer = await asyncio.gather(_database_check(), _layer_check())
    healthy = database["ok"] and channel_layer["ok"]
    body = {
        "status": "ok" if healthy else "unavailable",
        "database": database,
        "channel_layer": channel_layer,
        "pending_events": pending,
    }
    return JsonResponse(body, status=200 if healthy else 503)


# Database checks that outlived their answer. A thread cannot be cancelled
# (asgiref would wait for it), so a slow one is left to finish, bounded by
# the pool's timeout, and kept here until it does.
_stragglers: set["asyncio.Future[Any]"] = set()


async def _database_check() -> tuple[dict[str, Any], dict[str, Any]]:
    pending: dict[str, Any] = {"count": None, "oldest_age_seconds": None}
    check = asyncio.ensure_future(database_sync_to_async(events_pending_summary, thread_sensitive=False)())
    done, _ = await asyncio.wait([check], timeout=HEALTH_TIMEOUT_SECONDS)
    if not done:
        _stragglers.add(check)
        check.add_done_callback(_straggler_done)
        return {"ok": False, "error": "timeout"}, pending
    try:
        count, oldest = check.result()
    except Exception as exc:  # Any database failure is the answer, not an error.
        return {"ok": False, "error": type(exc).__name__}, pending
    age = (timezone.now() - oldest).total_seconds() if oldest is not None else None
    return {"ok": True}, {"count": count, "oldest_age_seconds": age}


def _straggler_done(check: "asyncio.Future[Any]") -> None:
    _stragglers.discard(check)
    if not check.cancelled() and check.exception() is not None:
        logger.info("A late health check of the database failed: %s", check.exception())


async def _layer_check() -> dict[str, Any]:
    channel_layer: dict[str, Any] = {"ok": True, "backend": type(get_channel_layer()).__name__}
    try:
        await alayer_ping(timeout_seconds=HEALTH_TIMEOUT_SECONDS)
    except Exception as exc:  # Any layer failure is the answer.
        channel_layer.update(ok=False, error=type(exc).__name__)
    return channel_layer
