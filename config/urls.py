from django.contrib import admin
from django.urls import include, path

from notifications.views import healthz

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include("notifications.urls")),
    path("api/", include("agents.urls")),
    path("healthz", healthz, name="healthz"),
    path("", include("console.urls")),
]
