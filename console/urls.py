from django.urls import path

from .views import favicon, index

urlpatterns = [
    path("", index, name="console"),
    path("favicon.ico", favicon, name="favicon"),
]
