"""How the REST API describes itself in OpenAPI: the shapes of answers and errors, for ``extend_schema``.

These serializers only describe; the views build their answers themselves
(``event_frame``, ``run_payload``), and the schemathesis test checks that the
two agree on every operation.
"""

from collections.abc import Sequence
from typing import Any

from drf_spectacular.extensions import OpenApiSerializerExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    PolymorphicProxySerializer,
    inline_serializer,
)
from rest_framework import serializers

from .models import EventType

# DRF's validation errors: each field, or ``non_field_errors``, with its messages.
FIELD_ERRORS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": {"type": "array", "items": {"type": "string"}},
    "description": "Field errors as DRF words them: each invalid field with its messages.",
    "example": {"limit": ["Ensure this value is greater than or equal to 1."]},
}


class FieldErrorsSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """Stands for ``FIELD_ERRORS_SCHEMA`` in the schema (``FieldErrorsExtension``)."""


class FieldErrorsExtension(OpenApiSerializerExtension):  # type: ignore[no-untyped-call]
    target_class = FieldErrorsSerializer

    def map_serializer(self, auto_schema: Any, direction: Any) -> dict[str, Any]:
        return FIELD_ERRORS_SCHEMA


# The codes notifications.middleware gives a refused body, whatever the endpoint.
BODY_CODES = ("invalid_json", "bad_request")
# A header of the 429 answer (``response``), not of the request.
RETRY_AFTER = OpenApiParameter(
    "Retry-After",
    OpenApiTypes.INT,
    OpenApiParameter.HEADER,
    response=[429],
    description="Seconds until a retry may succeed.",
)


def error_serializer(name: str, codes: Sequence[str], *, detail: Any = None) -> serializers.Serializer:  # type: ignore[type-arg]
    """A ``{"code", "detail"}`` error whose code is one of ``codes`` (a component named ``name``)."""
    return inline_serializer(
        name,
        fields={
            "code": serializers.ChoiceField(choices=list(codes)),
            "detail": detail or serializers.CharField(help_text="Human-readable; the wording may change."),
        },
    )


def error_response(name: str, codes: Sequence[str], description: str) -> OpenApiResponse:
    return OpenApiResponse(error_serializer(name, codes), description=description)


class AuthErrorSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """A refused credential, as DRF and simplejwt answer it (`code` only for a bad token)."""

    detail = serializers.CharField()
    code = serializers.ChoiceField(choices=["token_not_valid"], required=False)
    messages = serializers.ListField(child=serializers.DictField(), required=False)


UNAUTHENTICATED = OpenApiResponse(
    AuthErrorSerializer,
    description="No `Authorization: Bearer <access>`, or the token is invalid, expired or for no active user.",
)
UNAVAILABLE = error_response("Unavailable", ["unavailable"], "The database is unavailable; nothing was done, retry.")
RATE_LIMITED = OpenApiResponse(
    error_serializer("RateLimited", ["rate_limited"]),
    description="Over the endpoint's rate limit; `Retry-After` says when to come back.",
)
QUERY_INVALID = OpenApiResponse(FieldErrorsSerializer, description="A query parameter is invalid.")
BODY_INVALID = OpenApiResponse(
    PolymorphicProxySerializer(
        component_name="BodyInvalid",
        serializers=[FieldErrorsSerializer, error_serializer("BodyRefused", BODY_CODES)],
        resource_type_field_name=None,
    ),
    description="A field is missing or invalid (field errors), or the body is not acceptable JSON (a code).",
)


class EventFrameSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """One event, the same shape as the WebSocket's `event` frame."""

    type = serializers.ChoiceField(choices=["event"])
    id = serializers.UUIDField()
    seq = serializers.IntegerField(min_value=1, help_text="Per user, increasing.")
    event = serializers.ChoiceField(choices=EventType.choices)
    run_id = serializers.UUIDField()
    agent = serializers.CharField(min_length=1, max_length=100)
    created_at = serializers.DateTimeField()
    data = serializers.DictField()  # type: ignore[assignment]  # The field is named data, as in the frame.


class EventPageSerializer(serializers.Serializer):  # type: ignore[type-arg]
    results = EventFrameSerializer(many=True)
    next = serializers.URLField(
        allow_null=True, help_text="The following page: this query with `after` set to the last seq; null at the end."
    )


class TokenPairSerializer(serializers.Serializer):  # type: ignore[type-arg]
    access = serializers.CharField()
    refresh = serializers.CharField()


class AccessTokenSerializer(serializers.Serializer):  # type: ignore[type-arg]
    access = serializers.CharField()


class RefreshTokenSerializer(serializers.Serializer):  # type: ignore[type-arg]
    refresh = serializers.CharField()


class CredentialsSerializer(serializers.Serializer):  # type: ignore[type-arg]
    username = serializers.CharField()
    password = serializers.CharField()


TOKEN_EXAMPLE = OpenApiExample("demo", value={"username": "demo", "password": "demo"}, request_only=True)


def query_empty_is_absent(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """Mark every query parameter ``allowEmptyValue`` (a postprocessing hook).

    DRF reads an empty value of an optional field (``?run=``) as no value at
    all, so the server answers it as if the parameter were absent.
    """
    for path in result.get("paths", {}).values():
        for operation in path.values():
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "query":
                    parameter["allowEmptyValue"] = True
                    parameter["description"] = (
                        parameter.get("description", "") + " Empty is the same as absent."
                    ).strip()
    return result
