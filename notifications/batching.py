"""Concurrent lookups become one read: what a process asks at the same time is read together.

A caller asks for one key and waits; a reader task takes every key queued,
reads them in one call (one thread hop, one query), and settles each caller.
Keys queued while a read is under way go into the next one, so under load a
read grows to what one round of the database takes, and alone a key is read
at once: there is no waiting window. A key queued after a read began is
never answered by it, so a caller that did something before asking (joined
its group, say) gets a read made after that.
"""

import asyncio
import weakref
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

READ_MAX_KEYS = 1000


@dataclass
class BatchedReader(Generic[K, V]):
    """Answer ``get(key)`` from batched calls of ``read(keys)``; a key it does not return is None.

    ``read`` raising fails every caller of that batch with the same error.
    """

    read: Callable[[list[K]], Awaitable[Mapping[K, V]]]
    max_keys: int = READ_MAX_KEYS
    queue: "list[tuple[K, asyncio.Future[V | None]]]" = field(default_factory=list)
    task: "asyncio.Task[None] | None" = None

    async def get(self, key: K) -> V | None:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[V | None] = loop.create_future()
        self.queue.append((key, waiter))
        if self.task is None or self.task.done():
            self.task = loop.create_task(self._run(), name="batched-reader")
        return await waiter

    async def _run(self) -> None:
        while self.queue:
            batch, self.queue = self.queue[: self.max_keys], self.queue[self.max_keys :]
            # Callers cancelled while queued are not read for.
            batch = [(key, waiter) for key, waiter in batch if not waiter.done()]
            if not batch:
                continue
            try:
                found = await self.read(list(dict.fromkeys(key for key, _ in batch)))
            except Exception as exc:
                for _, waiter in batch:
                    if not waiter.done():
                        waiter.set_exception(exc)
                        waiter.exception()  # A caller cancelled meanwhile never reads it.
                continue
            except BaseException:
                # The reader itself was cancelled (the loop is closing): so is every caller waiting on it.
                for _, waiter in batch + self.queue:
                    waiter.cancel()
                self.queue = []
                raise
            for key, waiter in batch:
                if not waiter.done():
                    waiter.set_result(found.get(key))


_readers: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Hashable, BatchedReader]]" = (  # type: ignore[type-arg]
    weakref.WeakKeyDictionary()
)


def batched_reader(
    key: Hashable, read: Callable[[list[K]], Awaitable[Mapping[K, V]]], *, max_keys: int = READ_MAX_KEYS
) -> BatchedReader[K, V]:
    """The running loop's reader for ``key`` (a name, or a name and the object it reads for; made on first use)."""
    readers = _readers.setdefault(asyncio.get_running_loop(), {})
    reader = readers.get(key)
    if reader is None:
        reader = readers[key] = BatchedReader(read=read, max_keys=max_keys)
    return reader
