from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from console.views import ApiDocsView
from notifications.views import healthz

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", ApiDocsView.as_view(url_name="schema"), name="api-docs"),
    path("api/", include("notifications.urls")),
    path("api/", include("agents.urls")),
    path("healthz", healthz, name="healthz"),
    path("", include("console.urls")),
]
