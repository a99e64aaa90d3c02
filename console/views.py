"""The web console: one page; everything else is static modules talking to the API."""

from django.http import HttpRequest, HttpResponse, HttpResponsePermanentRedirect
from django.shortcuts import render
from django.templatetags.static import static
from django.views.decorators.http import require_safe

# Only this origin's scripts, styles, API and WebSocket: no inline script, no
# third-party asset, and nothing may frame the page.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)


@require_safe
def index(request: HttpRequest) -> HttpResponse:
    """Serve the console page."""
    response = render(request, "console/index.html")
    response["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response["Cache-Control"] = "no-cache"
    response["Referrer-Policy"] = "same-origin"
    return response


@require_safe
def favicon(request: HttpRequest) -> HttpResponsePermanentRedirect:
    """Answer browsers' ``/favicon.ico`` on pages without an icon link (the admin's)."""
    return HttpResponsePermanentRedirect(static("console/favicon.svg"))
