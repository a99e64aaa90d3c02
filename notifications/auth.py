"""Authenticate WebSocket connections with simplejwt access tokens.

Checking a token is two steps: its signature and claims (CPU only, on the
event loop, ``access_claims``), then its user, read with every other
connection's that asks at the same time (``auser_state``): one query and one
thread hop for a burst of connects, not one each.
"""

from dataclasses import dataclass

from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db.models import Field
from rest_framework_simplejwt.exceptions import TokenError
from rest_framework_simplejwt.settings import api_settings
from rest_framework_simplejwt.tokens import AccessToken

from .batching import batched_reader
from .exceptions import AuthenticationFailed
from .selectors import UserState, user_states

JWT_SUBPROTOCOL = "jwt"


@dataclass(frozen=True, slots=True)
class Claims:
    """A verified access token: whose it is (the value of ``USER_ID_FIELD``) and until when."""

    user_key: object
    expires_at: float  # Unix time at which the access token expires.


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


def access_claims(token: str) -> Claims:
    """Verify an access token's signature, type and expiry; no database.

    The user id claim is converted to the user model's field here, so that a
    junk claim (a huge number, a list) is this token's refusal and never
    reaches a query shared with other connections. The error says what is
    wrong but never repeats the token.
    """
    try:
        access = AccessToken(token)  # type: ignore[arg-type]
    except TokenError:
        raise AuthenticationFailed("The access token is invalid or expired.") from None
    field = get_user_model()._meta.get_field(api_settings.USER_ID_FIELD)
    assert isinstance(field, Field)
    try:
        user_key = field.to_python(access.get(api_settings.USER_ID_CLAIM))
        if user_key is None:
            raise ValidationError("no user")
        field.run_validators(user_key)
    except (ValidationError, TypeError, ValueError):
        raise AuthenticationFailed("The access token is invalid or expired.") from None
    return Claims(user_key=user_key, expires_at=float(access["exp"]))


def _states_by_token_field(keys: list[object]) -> dict[object, UserState]:
    return user_states(values=keys, field=api_settings.USER_ID_FIELD)


def _states_by_pk(user_ids: list[int]) -> dict[int, UserState]:
    return {state.user_id: state for state in user_states(values=user_ids).values()}


_astates_by_token_field = database_sync_to_async(_states_by_token_field, thread_sensitive=False)
_astates_by_pk = database_sync_to_async(_states_by_pk, thread_sensitive=False)


async def auser_id(claims: Claims) -> int | None:
    """The primary key of the token's user: the claim itself when ``USER_ID_FIELD`` is the key, else read."""
    model = get_user_model()
    if api_settings.USER_ID_FIELD in ("pk", model._meta.pk.name):
        key: int = claims.user_key  # type: ignore[assignment]
        return key
    state = await batched_reader("users-by-token-field", _astates_by_token_field).get(claims.user_key)
    return None if state is None else state.user_id


async def auser_state(user_id: int) -> UserState | None:
    """The user and its stream's newest seq, read after this call began; None if there is no such user."""
    return await batched_reader("users", _astates_by_pk).get(user_id)


def identity_from(claims: Claims, state: UserState | None) -> Identity:
    """The connection's identity, or ``AuthenticationFailed`` for a deleted or inactive user."""
    if state is None or not state.active:
        raise AuthenticationFailed("The token's user does not exist or is inactive.")
    return Identity(user_id=state.user_id, username=state.username, expires_at=claims.expires_at)


async def aidentity_from_token(token: str) -> Identity:
    """Validate an access token and load its active user."""
    claims = access_claims(token)
    user_id = await auser_id(claims)
    return identity_from(claims, None if user_id is None else await auser_state(user_id))
