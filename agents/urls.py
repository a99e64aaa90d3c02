from django.urls import path

from .views import AgentListView, RunCancelView, RunDetailView, RunListView

urlpatterns = [
    path("agents/", AgentListView.as_view(), name="agent-list"),
    path("runs/", RunListView.as_view(), name="run-list"),
    path("runs/<uuid:run_id>/", RunDetailView.as_view(), name="run-detail"),
    path("runs/<uuid:run_id>/cancel/", RunCancelView.as_view(), name="run-cancel"),
]
