from django.urls import path

from .consumers import AgentConsumer

websocket_urlpatterns = [
    path("ws/notifications/", AgentConsumer.as_asgi()),
]
