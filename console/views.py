"""The web console and the API docs page; everything else is static modules talking to the API."""

from typing import Any

from django.http import HttpRequest, HttpResponse, HttpResponsePermanentRedirect
from django.shortcuts import render
from django.templatetags.static import static
from django.views.decorators.http import require_safe
from drf_spectacular.utils import extend_schema
from drf_spectacular.views import SpectacularSwaggerSplitView
from rest_framework.request import Request
from rest_framework.response import Response

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


class ApiDocsView(SpectacularSwaggerSplitView):
    """Serve Swagger UI over ``/api/schema/`` under the console's policy.

    The split view loads its init script from this URL (``?script``) instead
    of inline, and the template here links a stylesheet where drf-spectacular's
    own has an inline ``<style>``: the page needs no exception to the policy.
    """

    template_name = "console/api_docs.html"

    @extend_schema(exclude=True)
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        response: Response = super().get(request, *args, **kwargs)  # type: ignore[no-untyped-call]
        response["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response["Referrer-Policy"] = "same-origin"
        return response
