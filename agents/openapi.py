"""How the agents' REST endpoints describe themselves in OpenAPI (see notifications.openapi)."""

from typing import Any

from django.conf import settings
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema_field
from rest_framework import serializers

from notifications.openapi import BODY_CODES, FIELD_ERRORS_SCHEMA, error_serializer

from .models import RunStatus


class RunErrorSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """How a run ended in `agent_error`: the same `kind` and `message` as that event."""

    kind = serializers.CharField()
    message = serializers.CharField()


class RunSerializer(serializers.Serializer):  # type: ignore[type-arg]
    id = serializers.UUIDField()
    agent = serializers.CharField(max_length=100)
    status = serializers.ChoiceField(choices=RunStatus.choices)
    input = serializers.DictField(help_text="The input as the agent validated it: defaults filled in.")
    timeout_seconds = serializers.FloatField()
    result = serializers.JSONField(allow_null=True, help_text="What the agent returned; null until it completed.")
    error = RunErrorSerializer(allow_null=True)
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    duration_ms = serializers.IntegerField(allow_null=True, help_text="From start to end; null until it ended.")


class RunPageSerializer(serializers.Serializer):  # type: ignore[type-arg]
    results = RunSerializer(many=True)


class AgentSerializer(serializers.Serializer):  # type: ignore[type-arg]
    name = serializers.CharField()
    description = serializers.CharField()
    input = serializers.DictField(child=serializers.CharField(), help_text="Each input field, with its help text.")
    example = serializers.DictField(help_text="A valid input, to start from.")


class RunStartSerializer(serializers.Serializer):  # type: ignore[type-arg]
    agent = serializers.CharField(max_length=100, help_text="The name of an agent from `GET /api/agents/`.")
    input = serializers.DictField(required=False, help_text="The agent's input (default `{}`), checked by the agent.")
    timeout = serializers.FloatField(
        required=False,
        help_text=(
            "Seconds, above 0 and at most `AGENT_RUN_MAX_TIMEOUT_SECONDS` "
            f"({settings.AGENT_RUN_MAX_TIMEOUT_SECONDS:g} here); `AGENT_RUN_TIMEOUT_SECONDS` if absent."
        ),
    )


# Field errors of the body (in ``detail``), or the reason the run was refused.
@extend_schema_field({"oneOf": [{"type": "string"}, FIELD_ERRORS_SCHEMA]})
class RefusalDetailField(serializers.JSONField):
    pass


RUN_REFUSED = OpenApiResponse(
    error_serializer("RunRefused", ["invalid_message", "unknown_agent", *BODY_CODES], detail=RefusalDetailField()),
    description="The body or the input is invalid (`invalid_message`; field errors in `detail`), "
    "the agent is unknown, or the body is not acceptable JSON.",
)
RUN_START_LIMITED = OpenApiResponse(
    error_serializer("RunStartLimited", ["rate_limited", "too_many_runs"]),
    description="Over `THROTTLE_RUNS_RATE` (`rate_limited`, with `Retry-After`), or "
    "`AGENT_MAX_ACTIVE_RUNS_PER_USER` runs are still going (`too_many_runs`).",
)
RUN_NOT_FOUND = OpenApiResponse(
    error_serializer("RunNotFound", ["not_found"]), description="No such run for this user."
)
RUN_FINISHED = OpenApiResponse(
    error_serializer("RunFinished", ["run_finished"]), description="The run has already ended."
)
RUN_START_EXAMPLE = OpenApiExample(
    "demo", value={"agent": "demo", "input": {"steps": 1, "delay": 0.05}, "timeout": 10}, request_only=True
)

# Where a run's id leads: the run itself, and its cancel.
RUN_LINKS = {
    "GetRun": {"operationId": "runs_retrieve", "parameters": {"run_id": "$response.body#/id"}},
    "CancelRun": {"operationId": "runs_cancel", "parameters": {"run_id": "$response.body#/id"}},
}


def run_links(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """Add OpenAPI links from a started or read run to reading and cancelling it (a postprocessing hook)."""
    operations = {
        operation["operationId"]: operation for path in result.get("paths", {}).values() for operation in path.values()
    }
    for operation_id, status in (("runs_create", "201"), ("runs_retrieve", "200"), ("runs_cancel", "202")):
        if operation_id in operations:
            operations[operation_id]["responses"][status]["links"] = RUN_LINKS
    return result
