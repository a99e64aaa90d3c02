"""Batched reads of the log (notifications/selectors.py): many asks, one statement, each answered exactly."""

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from notifications.models import Stream
from notifications.selectors import events_after, events_after_many, streams_positions
from notifications.services import event_record

pytestmark = pytest.mark.django_db(transaction=True)


def record(user: Any, count: int) -> None:
    run_id = uuid.uuid4()
    for n in range(count):
        event_record(user_id=user.pk, event="agent_thinking", run_id=run_id, agent="a", data={"n": n})


def test_events_after_many_answers_each_ask_as_events_after_would_in_one_statement(
    make_user: Callable[..., Any],
) -> None:
    alice, bob, carol = make_user(), make_user(), make_user()
    record(alice, 7)
    record(bob, 3)
    asks = [(alice.pk, 0, 5), (alice.pk, 4, 100), (bob.pk, 1, 1), (bob.pk, 3, 10), (carol.pk, 0, 10), (alice.pk, 2, 0)]
    with CaptureQueriesContext(connection) as queries:
        found = events_after_many(asks=asks)
    assert len(queries) == 1
    for user_id, after, limit in asks:
        expected = events_after(user_id=user_id, after=after, limit=limit)
        got = found[(user_id, after, limit)]
        assert [(e.id, e.user_id, e.seq, e.data) for e in got] == [(e.id, e.user_id, e.seq, e.data) for e in expected]
    assert [e.seq for e in found[(alice.pk, 0, 5)]] == [1, 2, 3, 4, 5]
    assert [e.seq for e in found[(alice.pk, 4, 100)]] == [5, 6, 7]
    assert found[(carol.pk, 0, 10)] == [] and found[(alice.pk, 2, 0)] == []


def test_events_after_many_of_nothing_reads_nothing() -> None:
    with CaptureQueriesContext(connection) as queries:
        assert events_after_many(asks=[]) == {}
    assert len(queries) == 0


def test_streams_positions_reads_many_users_and_leaves_out_those_without_a_stream(
    make_user: Callable[..., Any],
) -> None:
    alice, bob, carol = make_user(), make_user(), make_user()
    record(alice, 4)
    record(bob, 2)
    Stream.objects.filter(pk=bob.pk).update(pruned_seq=1)
    with CaptureQueriesContext(connection) as queries:
        positions = streams_positions(user_ids=[alice.pk, bob.pk, carol.pk])
    assert len(queries) == 1
    assert positions == {alice.pk: (4, 0), bob.pk: (2, 1)}
