"""Delivery's log reads (notifications/delivery.py): connections reading together share one query.

A reconnect storm resumes thousands of connections at once and a heartbeat
round catches up every connection that is behind; each must get exactly its
own user's events, in order, and together they cost a few queries, not one
per connection.
"""

import asyncio
import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from channels.db import database_sync_to_async

from notifications import delivery as delivery_module
from notifications.delivery import Delivery
from notifications.selectors import events_after_many, streams_positions
from notifications.services import event_record

pytestmark = pytest.mark.django_db(transaction=True)
USERS = 12


class Frames:
    def __init__(self) -> None:
        self.texts: list[str] = []

    async def __call__(self, text: str) -> bool:
        self.texts.append(text)
        await asyncio.sleep(0)  # a send yields, so the connections interleave
        return True

    def seqs(self) -> list[int]:
        import json

        return [json.loads(text)["seq"] for text in self.texts]


def _users_with_events(make_user: Callable[..., Any]) -> list[Any]:
    users = [make_user() for _ in range(USERS)]
    for n, user in enumerate(users):
        run_id = uuid.uuid4()
        for _ in range(n + 1):
            event_record(user_id=user.pk, event="agent_thinking", run_id=run_id, agent="a", data={})
    return users


async def users_with_events(make_user: Callable[..., Any]) -> list[Any]:
    """USERS users; the nth has n + 1 events."""
    users: list[Any] = await database_sync_to_async(_users_with_events)(make_user)
    return users


@pytest.fixture
def counted_reads(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    calls = {"events": 0, "positions": 0}

    def events(*, asks: Any) -> Any:
        calls["events"] += 1
        return events_after_many(asks=asks)

    def positions(*, user_ids: Any) -> Any:
        calls["positions"] += 1
        return streams_positions(user_ids=user_ids)

    monkeypatch.setattr(delivery_module, "events_after_many", events)
    monkeypatch.setattr(delivery_module, "streams_positions", positions)
    return calls


async def test_concurrent_resumes_each_replay_their_own_events_in_order_from_shared_reads(
    make_user: Callable[..., Any], counted_reads: dict[str, int]
) -> None:
    users = await users_with_events(make_user)
    frames = [Frames() for _ in users]
    deliveries = [Delivery(user_id=u.pk, send_text=f, sent_seq=0) for u, f in zip(users, frames, strict=True)]
    # User n has n + 1 events; each connection resumes after a different point (the last one: nothing to replay).
    afters = [n // 2 for n in range(USERS - 1)] + [USERS]
    async with asyncio.timeout(30):
        resumed = await asyncio.gather(*(d.resume(after) for d, after in zip(deliveries, afters, strict=True)))
    for n, (result, frame) in enumerate(zip(resumed, frames, strict=True)):
        assert frame.seqs() == list(range(afters[n] + 1, n + 2))
        expected = (afters[n], n + 1, n + 1 - afters[n], False)
        assert (result.after, result.last_seq, result.count, result.truncated) == expected
    # One positions read for all and one replay read; the positions reads after the replays are shared
    # by those that end while one is under way (unbatched: 1 + 11 positions reads and 11 replay reads).
    assert counted_reads["events"] == 1
    assert 2 <= counted_reads["positions"] <= USERS // 2, counted_reads


async def test_concurrent_catch_ups_send_each_event_once_in_order(make_user: Callable[..., Any], settings: Any) -> None:
    settings.WS_REPLAY_BATCH_SIZE = 4  # several batches for the longer streams
    users = await users_with_events(make_user)
    frames = [Frames() for _ in users]
    deliveries = [Delivery(user_id=u.pk, send_text=f, sent_seq=0) for u, f in zip(users, frames, strict=True)]
    async with asyncio.timeout(30):
        sent = await asyncio.gather(*(d.catch_up() for d in deliveries))
        again = await asyncio.gather(*(d.catch_up() for d in deliveries))
    assert sent == again == [n + 1 for n in range(USERS)]
    assert [f.seqs() for f in frames] == [list(range(1, n + 2)) for n in range(USERS)]


async def test_live_reads_are_made_at_once_not_behind_a_storms_batched_replay_read(
    make_user: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gap fill and a catch-up hold the delivery lock: they must not wait for a replay read under way."""
    users = await users_with_events(make_user)
    slow, live = users[-1], users[2]  # 12 events, and 3
    release, entered = threading.Event(), threading.Event()

    def events(*, asks: Any) -> Any:
        if any(user_id == slow.pk for user_id, _, _ in asks):
            entered.set()
            assert release.wait(timeout=10), "the test never released the slow read"
        return events_after_many(asks=asks)

    monkeypatch.setattr(delivery_module, "events_after_many", events)
    replaying = Delivery(user_id=slow.pk, send_text=Frames(), sent_seq=0)
    frames, others = Frames(), Frames()
    behind = Delivery(user_id=live.pk, send_text=frames, sent_seq=0)
    other = Delivery(user_id=users[4].pk, send_text=others, sent_seq=0)
    resuming = asyncio.ensure_future(replaying.resume(0))
    try:
        async with asyncio.timeout(10):
            await asyncio.to_thread(entered.wait, 10)
            await behind.live(seq=3, frame='{"seq":3}')  # 1 and 2 come from the log first
            assert frames.seqs() == [1, 2, 3]
            assert await other.catch_up() == 5
            assert not resuming.done()  # the slow read is still under way
    finally:
        release.set()
        async with asyncio.timeout(10):
            assert (await resuming).count == USERS
