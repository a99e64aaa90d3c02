"""REST endpoints: the agent catalogue and the caller's runs."""

import uuid
from typing import Any

from asgiref.sync import async_to_sync
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from notifications.frames import isoformat_utc
from notifications.openapi import QUERY_INVALID, RATE_LIMITED, RETRY_AFTER, UNAUTHENTICATED, UNAVAILABLE
from notifications.throttles import WriteRateThrottle

from .exceptions import RunFinished, RunNotFound, RunRefused, TooManyRuns
from .models import AgentRun
from .openapi import (
    RUN_FINISHED,
    RUN_NOT_FOUND,
    RUN_REFUSED,
    RUN_START_EXAMPLE,
    RUN_START_LIMITED,
    AgentSerializer,
    RunPageSerializer,
    RunSerializer,
    RunStartSerializer,
)
from .registry import agents_all
from .selectors import run_get, runs_for_user
from .services import arun_cancel, arun_start
from .supervisor import SupervisorClosed


def run_payload(run: AgentRun) -> dict[str, Any]:
    """A run as the API shows it."""
    return {
        "id": str(run.id),
        "agent": run.agent,
        "status": run.status,
        "input": run.input,
        "timeout_seconds": run.timeout_seconds,
        "result": run.result,
        "error": run.error,
        "created_at": isoformat_utc(run.created_at),
        "started_at": isoformat_utc(run.started_at) if run.started_at else None,
        "finished_at": isoformat_utc(run.finished_at) if run.finished_at else None,
        "duration_ms": run.duration_ms,
    }


def _user_id(request: Request) -> int:
    return int(request.user.pk)  # type: ignore[arg-type]  # Authenticated: never None.


def error(code: str, detail: str, http_status: int) -> Response:
    return Response({"code": code, "detail": detail}, status=http_status)


RUN_ID = OpenApiParameter("run_id", {"type": "string", "format": "uuid"}, OpenApiParameter.PATH)


class AgentListView(APIView):
    @extend_schema(
        operation_id="agents_list",
        summary="The agents a run can start",
        responses={200: AgentSerializer(many=True), 401: UNAUTHENTICATED, 503: UNAVAILABLE},
        tags=["agents"],
    )
    def get(self, request: Request) -> Response:
        return Response(
            [
                {"name": s.name, "description": s.description, "input": s.input_help, "example": s.input_example}
                for s in agents_all()
            ]
        )


class RunStartBody(serializers.Serializer):  # type: ignore[type-arg]
    agent = serializers.CharField(max_length=100)
    input = serializers.JSONField(default=dict)
    # Checked by the run service, by the same rules as the WebSocket's run.start.
    timeout = serializers.JSONField(required=False)


class RunsQuery(serializers.Serializer):  # type: ignore[type-arg]
    limit = serializers.IntegerField(min_value=1, max_value=200, default=50)
    before = serializers.DateTimeField(required=False)


class RunListView(APIView):
    throttle_classes = [WriteRateThrottle]  # Starting runs, per user: THROTTLE_RUNS_RATE.
    throttle_scope = "runs"

    @extend_schema(
        operation_id="runs_list",
        summary="The caller's runs, newest first",
        description=(
            "Pages back by time, not by number: pass the `created_at` of the last run of a page as `before` "
            "to get the runs created before it. There is no `next` link; a page shorter than `limit` is the last."
        ),
        parameters=[
            OpenApiParameter("limit", {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}),
            OpenApiParameter(
                "before", {"type": "string", "format": "date-time"}, description="Only runs created before this."
            ),
        ],
        responses={200: RunPageSerializer, 400: QUERY_INVALID, 401: UNAUTHENTICATED, 503: UNAVAILABLE},
        tags=["runs"],
    )
    def get(self, request: Request) -> Response:
        """The caller's runs, newest first; ``before`` (a created_at) pages back."""
        query = RunsQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        runs = runs_for_user(
            user_id=_user_id(request), limit=query.validated_data["limit"], before=query.validated_data.get("before")
        )
        return Response({"results": [run_payload(run) for run in runs]})

    @extend_schema(
        operation_id="runs_create",
        summary="Start a run of an agent",
        description="The run's events follow on the WebSocket and in `GET /api/events/?run=`.",
        request={"application/json": RunStartSerializer},
        responses={
            201: RunSerializer,
            400: RUN_REFUSED,
            401: UNAUTHENTICATED,
            429: RUN_START_LIMITED,
            503: OpenApiResponse(
                UNAVAILABLE.response, description="The database is unavailable, or the server is shutting down."
            ),
        },
        parameters=[RETRY_AFTER],
        examples=[RUN_START_EXAMPLE],
        tags=["runs"],
    )
    def post(self, request: Request) -> Response:
        body = RunStartBody(data=request.data)
        if not body.is_valid():
            return Response({"code": "invalid_message", "detail": body.errors}, status=status.HTTP_400_BAD_REQUEST)
        try:
            # Runs execute on the server's event loop; this view runs in a
            # worker thread, and async_to_sync hands the start to that loop.
            run = async_to_sync(arun_start)(
                user_id=_user_id(request),
                agent=body.validated_data["agent"],
                input=body.validated_data["input"],
                run_timeout=body.validated_data.get("timeout"),
            )
        except TooManyRuns as exc:
            return error(exc.code, exc.detail, status.HTTP_429_TOO_MANY_REQUESTS)
        except RunRefused as exc:
            return error(exc.code, exc.detail, status.HTTP_400_BAD_REQUEST)
        except SupervisorClosed as exc:
            return error("unavailable", str(exc), status.HTTP_503_SERVICE_UNAVAILABLE)
        return Response(run_payload(run), status=status.HTTP_201_CREATED)


class RunDetailView(APIView):
    @extend_schema(
        operation_id="runs_retrieve",
        summary="One of the caller's runs",
        parameters=[RUN_ID],
        responses={200: RunSerializer, 401: UNAUTHENTICATED, 404: RUN_NOT_FOUND, 503: UNAVAILABLE},
        tags=["runs"],
    )
    def get(self, request: Request, run_id: uuid.UUID) -> Response:
        run = run_get(user_id=_user_id(request), run_id=run_id)
        if run is None:
            return error("not_found", "No such run.", status.HTTP_404_NOT_FOUND)
        return Response(run_payload(run))


class RunCancelView(APIView):
    throttle_classes = [WriteRateThrottle]
    throttle_scope = "runs"

    @extend_schema(
        operation_id="runs_cancel",
        summary="Ask a run to stop",
        description="202 with the run: the cancel is on its way, and the run's `agent_error` (cancelled) follows.",
        request=None,
        parameters=[RUN_ID, RETRY_AFTER],
        responses={
            202: RunSerializer,
            401: UNAUTHENTICATED,
            404: RUN_NOT_FOUND,
            409: RUN_FINISHED,
            429: RATE_LIMITED,
            503: UNAVAILABLE,
        },
        tags=["runs"],
    )
    def post(self, request: Request, run_id: uuid.UUID) -> Response:
        """Ask the run to stop: 202 with the run; its agent_error (cancelled) follows as an event."""
        try:
            run = async_to_sync(arun_cancel)(user_id=_user_id(request), run_id=run_id)
        except RunNotFound:
            return error("not_found", "No such run.", status.HTTP_404_NOT_FOUND)
        except RunFinished as exc:
            return error("run_finished", str(exc), status.HTTP_409_CONFLICT)
        return Response(run_payload(run), status=status.HTTP_202_ACCEPTED)
