from django.urls import path

from .consumers import AguiConsumer

http_urlpatterns = [
    path("api/ag-ui/<str:agent>/", AguiConsumer.as_asgi(resume=False)),
    path("api/ag-ui/<str:agent>/runs/<uuid:run_id>/", AguiConsumer.as_asgi(resume=True)),
]
