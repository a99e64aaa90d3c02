from django.urls import path
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework_simplejwt.views import TokenBlacklistView, TokenObtainPairView, TokenRefreshView

from .openapi import (
    BODY_INVALID,
    RATE_LIMITED,
    RETRY_AFTER,
    TOKEN_EXAMPLE,
    UNAUTHENTICATED,
    UNAVAILABLE,
    AccessTokenSerializer,
    CredentialsSerializer,
    RefreshTokenSerializer,
    TokenPairSerializer,
)
from .throttles import ScopedThrottle
from .views import EventListView

TAGS = ["auth"]


@extend_schema_view(
    post=extend_schema(
        operation_id="auth_token_obtain",
        summary="Sign in: a JWT access and refresh token for a username and password",
        request={"application/json": CredentialsSerializer},
        responses={
            200: TokenPairSerializer,
            400: BODY_INVALID,
            401: OpenApiResponse(
                UNAUTHENTICATED.response, description="Wrong username or password, or an inactive user."
            ),
            429: RATE_LIMITED,
            503: UNAVAILABLE,
        },
        parameters=[RETRY_AFTER],
        examples=[TOKEN_EXAMPLE],
        auth=[],
        tags=TAGS,
    )
)
class TokenObtainView(TokenObtainPairView):
    """Sign in: limited per client address (``THROTTLE_AUTH_RATE``), against password guessing."""

    throttle_classes = [ScopedThrottle]
    throttle_scope = "auth"


@extend_schema_view(
    post=extend_schema(
        operation_id="auth_token_refresh",
        summary="A new access token for a refresh token (refresh tokens are not rotated)",
        request={"application/json": RefreshTokenSerializer},
        responses={
            200: AccessTokenSerializer,
            400: BODY_INVALID,
            401: OpenApiResponse(
                UNAUTHENTICATED.response, description="The refresh token is invalid, expired or blacklisted."
            ),
            429: RATE_LIMITED,
            503: UNAVAILABLE,
        },
        parameters=[RETRY_AFTER],
        auth=[],
        tags=TAGS,
    )
)
class TokenRefreshThrottledView(TokenRefreshView):
    throttle_classes = [ScopedThrottle]
    throttle_scope = "auth_refresh"


@extend_schema_view(
    post=extend_schema(
        operation_id="auth_token_blacklist",
        summary="Log out: the refresh token can no longer be used",
        description="Access tokens already issued stay valid until they expire.",
        request={"application/json": RefreshTokenSerializer},
        responses={
            200: OpenApiResponse({"type": "object", "additionalProperties": False}, description="Blacklisted: `{}`."),
            400: BODY_INVALID,
            401: OpenApiResponse(UNAUTHENTICATED.response, description="The refresh token is invalid or expired."),
            503: UNAVAILABLE,
        },
        auth=[],
        tags=TAGS,
    )
)
class TokenLogoutView(TokenBlacklistView):
    pass


urlpatterns = [
    path("auth/token/", TokenObtainView.as_view(), name="token_obtain_pair"),
    path("auth/token/refresh/", TokenRefreshThrottledView.as_view(), name="token_refresh"),
    path("auth/token/blacklist/", TokenLogoutView.as_view(), name="token_blacklist"),
    path("events/", EventListView.as_view(), name="event-list"),
]
