"""Errors raised by the notifications app."""

from django.db import InterfaceError, OperationalError

# The database errors that mean it could not be reached or did not answer in
# time (the caller may retry), as opposed to refusing what it was asked.
DATABASE_UNAVAILABLE = (OperationalError, InterfaceError)


class NotificationsError(Exception):
    """Base class for this app's errors."""


class InvalidEventType(NotificationsError, ValueError):
    """The event name is not one of the lifecycle events."""


class ProtocolError(NotificationsError, ValueError):
    """A client message broke the WebSocket protocol.

    ``code`` is the ``error`` frame's code, ``detail`` its human-readable text.
    """

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class AuthenticationFailed(NotificationsError):
    """A token was missing, malformed, forged, expired or for no active user."""


class InvalidEventData(NotificationsError, ValueError):
    """The event's run id, agent or data cannot be stored."""


class InvalidJson(NotificationsError, ValueError):
    """A JSON document or value is malformed, nested too deeply, or not JSON at all."""
