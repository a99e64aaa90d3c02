"""Authenticate WebSocket connections with simplejwt access tokens."""

from dataclasses import dataclass

from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from rest_framework_simplejwt.exceptions import TokenError
from rest_framework_simplejwt.settings import api_settings
from rest_framework_simplejwt.tokens import AccessToken

from .exceptions import AuthenticationFailed

JWT_SUBPROTOCOL = "jwt"


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: int
    username: str
    expires_at: float  # Unix time at which the access token expires.


def token_from_subprotocols(subprotocols: list[str]) -> str | None:
    """Return the token offered beside ``jwt`` (exactly two subprotocols), else None."""
    if len(subprotocols) != 2 or JWT_SUBPROTOCOL not in subprotocols:
        return None
    token = subprotocols[1] if subprotocols[0] == JWT_SUBPROTOCOL else subprotocols[0]
    return token or None


def identity_from_token(token: str) -> Identity:
    """Validate an access token and load its active user.

    The error says what is wrong but never repeats the token.
    """
    try:
        access = AccessToken(token)  # type: ignore[arg-type]
    except TokenError:
        raise AuthenticationFailed("The access token is invalid or expired.") from None
    user_id = access.get(api_settings.USER_ID_CLAIM)
    user_model = get_user_model()
    user = user_model._default_manager.filter(**{api_settings.USER_ID_FIELD: user_id}).first()
    if user is None or not user.is_active:
        raise AuthenticationFailed("The token's user does not exist or is inactive.")
    return Identity(user_id=user.pk, username=user.get_username(), expires_at=float(access["exp"]))


aidentity_from_token = database_sync_to_async(identity_from_token)
