"""Origin validation for WebSocket handshakes."""

from typing import Any
from urllib.parse import ParseResult

from channels.security.websocket import OriginValidator
from django.conf import settings


class BrowserOriginValidator(OriginValidator):
    """Refuse handshakes whose Origin is not allowed; allow those with none.

    Browsers always send Origin, so this stops other sites' pages from
    opening sockets. Non-browser clients (services, CLIs) send none, and
    cross-site WebSocket hijacking is a browser attack, so they pass; they
    still need a valid token.
    """

    def valid_origin(self, parsed_origin: ParseResult | None) -> bool:
        if parsed_origin is None:
            return True
        return bool(self.validate_origin(parsed_origin))


def origin_validated(application: Any) -> BrowserOriginValidator:
    return BrowserOriginValidator(application, settings.WS_ALLOWED_ORIGINS)
