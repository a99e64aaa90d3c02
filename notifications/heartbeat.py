"""The heartbeat, once per process: one read decides which connections are behind.

Each event loop has one ``Heartbeats``. It splits the heartbeat interval into
slots (about one a second) and gives each connection a slot, so the beats
of many sockets are spread over the interval instead of landing together.
At each slot's turn it reads, in one query, the users of that slot's
connections (whether each is still active, and its stream's newest seq),
and hands every connection its user's state: a connection whose user is
gone closes, one that is behind reads the log, the rest only send their
``heartbeat`` frame. An idle process therefore makes one query per tick,
however many sockets it holds, and each connection still beats once per
interval: a lost layer message costs it at most one heartbeat.

The ticking task exists while the loop has connections and is cancelled
and awaited when the last one leaves.
"""

import asyncio
import itertools
import logging
import weakref
from collections.abc import Awaitable, Callable, Collection
from typing import Any, Protocol

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import DatabaseError

from . import metrics
from .membership import Membership
from .selectors import UserState, user_states

logger = logging.getLogger(__name__)

# The shortest tick: with a very short heartbeat (tests) there are fewer slots.
TICK_MIN_SECONDS = 0.05
STOP_TIMEOUT_SECONDS = 5.0

ReadStates = Callable[[Collection[int]], Awaitable[dict[int, UserState]]]


class Beating(Protocol):
    """A connection, as the heartbeat sees it."""

    user_id: int

    async def beat(self, state: UserState | None, *, rejoin: bool) -> None:
        """Act on the user's state read just now (None: the user is gone); re-join the group if asked."""


def _read_states(user_ids: Collection[int]) -> dict[int, UserState]:
    return {int(key): state for key, state in user_states(values=user_ids).items()}  # type: ignore[call-overload]


aread_states: ReadStates = database_sync_to_async(_read_states, thread_sensitive=False)


class Heartbeats:
    """Beat every connection of one event loop once per ``interval_seconds``, a slot at a time."""

    def __init__(self, *, interval_seconds: float, slot_count: int, membership: Membership, read: ReadStates) -> None:
        self.interval_seconds = interval_seconds
        self.slots: list[dict[Beating, tuple[float, int]]] = [{} for _ in range(slot_count)]
        self.membership = membership
        self.read = read
        self._next_slot = itertools.cycle(range(slot_count))
        self._where: dict[Beating, int] = {}
        self.task: asyncio.Task[None] | None = None

    @property
    def tick_seconds(self) -> float:
        return self.interval_seconds / len(self.slots)

    def __len__(self) -> int:
        return len(self._where)

    def add(self, connection: Beating) -> None:
        """Beat ``connection`` from now on; it has just joined its group."""
        loop = asyncio.get_running_loop()
        slot = next(self._next_slot)
        self.slots[slot][connection] = (loop.time(), self.membership.epoch)
        self._where[connection] = slot
        if self.task is None or self.task.done():
            self.task = loop.create_task(self._run(), name="ws-heartbeats")

    def joined(self, connection: Beating) -> None:
        """Record that ``connection`` joined its group again just now."""
        slot = self._where.get(connection)
        if slot is not None:
            self.slots[slot][connection] = (asyncio.get_running_loop().time(), self.membership.epoch)

    async def discard(self, connection: Beating) -> None:
        """Stop beating ``connection``; the last one out stops the task (and waits for it)."""
        slot = self._where.pop(connection, None)
        if slot is not None:
            self.slots[slot].pop(connection, None)
        task = self.task
        if self._where or task is None or task is asyncio.current_task():
            return
        self.task = None
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=STOP_TIMEOUT_SECONDS)
        if not done:
            logger.error("The heartbeat task did not stop within %ss", STOP_TIMEOUT_SECONDS)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time() + self.tick_seconds
        for slot in itertools.cycle(range(len(self.slots))):
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at = max(next_at + self.tick_seconds, loop.time())
            try:
                await self._beat(slot)
            except Exception:  # Keep beating whatever one tick hit.
                logger.exception("A heartbeat tick failed")

    async def _beat(self, slot: int) -> None:
        await self.membership.check()
        members = list(self.slots[slot].items())
        if not members:
            return
        try:
            states = await self.read({connection.user_id for connection, _ in members})
        except DatabaseError as exc:
            # No heartbeat frames while the database is down: the next tick of this slot tries again.
            metrics.database_error(operation="heartbeat")
            logger.warning("Heartbeat could not read %d connections' streams: %s", len(members), exc)
            return
        now = asyncio.get_running_loop().time()
        beats = [
            connection.beat(
                states.get(connection.user_id),
                rejoin=self.membership.due(joined_at=joined_at, joined_epoch=epoch, now=now),
            )
            for connection, (joined_at, epoch) in members
        ]
        for result in await asyncio.gather(*beats, return_exceptions=True):
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                logger.error("A connection's heartbeat failed", exc_info=result)


_hubs: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Heartbeats]" = weakref.WeakKeyDictionary()


def heartbeats(layer: Any) -> Heartbeats:
    """The running loop's heartbeats (made on first use, for ``layer``, from settings)."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    interval: float = settings.WS_HEARTBEAT_SECONDS
    if hub is None or (not hub and (hub.interval_seconds != interval or hub.membership.layer is not layer)):
        slot_count = max(1, min(int(settings.WS_HEARTBEAT_SLOTS), int(interval / TICK_MIN_SECONDS)))
        hub = _hubs[loop] = Heartbeats(
            interval_seconds=interval, slot_count=slot_count, membership=Membership(layer), read=aread_states
        )
    return hub
