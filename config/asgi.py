"""ASGI entry point: Django for HTTP (``/metrics`` and the AG-UI streams before it), the consumer for WebSockets."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_asgi_app = get_asgi_application()

# Imported after Django is set up: routing loads models.
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402
from django.urls import re_path  # noqa: E402

from agents.agui.routing import http_urlpatterns as agui_urlpatterns  # noqa: E402
from agents.routing import websocket_urlpatterns  # noqa: E402
from notifications.metrics_http import with_metrics  # noqa: E402
from notifications.origin import origin_validated  # noqa: E402

http_app = ASGIStaticFilesHandler(django_asgi_app) if settings.DEBUG else django_asgi_app

# Channels' URLRouter routes to ASGI apps; django-stubs types re_path for views.
django_route = re_path(r"", http_app)  # type: ignore[arg-type]

application = ProtocolTypeRouter(
    {
        # The AG-UI streams are long-lived SSE responses, served by a consumer; everything else is Django.
        "http": with_metrics(URLRouter([*agui_urlpatterns, django_route])),
        "websocket": origin_validated(URLRouter(websocket_urlpatterns)),
    }
)
