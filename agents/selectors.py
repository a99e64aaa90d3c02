"""Reads of agent runs."""

import uuid
from datetime import datetime

from .models import AgentRun


def run_get(*, user_id: int, run_id: uuid.UUID) -> AgentRun | None:
    """The user's run, or None (another user's run does not exist for them)."""
    return AgentRun.objects.filter(pk=run_id, user_id=user_id).first()


def runs_for_user(*, user_id: int, limit: int, before: datetime | None = None) -> list[AgentRun]:
    """The user's runs, newest first."""
    runs = AgentRun.objects.filter(user_id=user_id)
    if before is not None:
        runs = runs.filter(created_at__lt=before)
    return list(runs.order_by("-created_at")[:limit])
