"""The outbox migration (0006) moves every pending event into the outbox, and back when reversed.

A deploy of it must not lose a pending event nor send again one published long ago.
"""

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

BEFORE = [("notifications", "0005_stream_drain_lease")]
AFTER = [("notifications", "0006_outbox")]


@pytest.fixture
def executor(transactional_db: None) -> Iterator[MigrationExecutor]:
    executor = MigrationExecutor(connection)
    yield executor
    # The rest of the suite runs on the latest schema.
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())


def migrate(executor: MigrationExecutor, targets: list[tuple[str, str]]) -> Any:
    executor.loader.build_graph()
    executor.migrate(targets)
    return MigrationExecutor(connection).loader.project_state(targets).apps


def test_pending_events_move_into_the_outbox_and_back(executor: MigrationExecutor) -> None:
    apps = migrate(executor, BEFORE)
    user = apps.get_model("auth", "User").objects.create(username="migrated")
    event_model = apps.get_model("notifications", "Event")
    fields = {"user": user, "event": "agent_thinking", "run_id": uuid.uuid4(), "agent": "demo"}
    now = timezone.now()
    event_model.objects.create(seq=1, created_at=now, published_at=now, **fields)
    event_model.objects.create(seq=2, created_at=now, publish_attempts=4, last_error="ConnectionError", **fields)
    event_model.objects.create(seq=3, created_at=now, **fields)

    apps = migrate(executor, AFTER)
    outbox = apps.get_model("notifications", "PendingEvent").objects.order_by("seq")
    assert [(row.seq, row.user_id, row.publish_attempts, row.last_error) for row in outbox] == [
        (2, user.pk, 4, "ConnectionError"),
        (3, user.pk, 0, ""),
    ]
    assert apps.get_model("notifications", "Event").objects.count() == 3

    apps = migrate(executor, BEFORE)
    back = apps.get_model("notifications", "Event").objects.order_by("seq")
    assert [(row.seq, row.published_at is None, row.publish_attempts, row.last_error) for row in back] == [
        (1, False, 0, ""),
        (2, True, 4, "ConnectionError"),
        (3, True, 0, ""),
    ]
