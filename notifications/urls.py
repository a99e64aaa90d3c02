from django.urls import path
from rest_framework_simplejwt.views import TokenBlacklistView, TokenObtainPairView, TokenRefreshView

from .throttles import ScopedThrottle
from .views import EventListView


class TokenObtainView(TokenObtainPairView):
    """Sign in: limited per client address (``THROTTLE_AUTH_RATE``), against password guessing."""

    throttle_classes = [ScopedThrottle]
    throttle_scope = "auth"


class TokenRefreshThrottledView(TokenRefreshView):
    throttle_classes = [ScopedThrottle]
    throttle_scope = "auth_refresh"


urlpatterns = [
    path("auth/token/", TokenObtainView.as_view(), name="token_obtain_pair"),
    path("auth/token/refresh/", TokenRefreshThrottledView.as_view(), name="token_refresh"),
    path("auth/token/blacklist/", TokenBlacklistView.as_view(), name="token_blacklist"),
    path("events/", EventListView.as_view(), name="event-list"),
]
