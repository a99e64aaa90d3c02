"""Batched reads (notifications/batching.py): concurrent lookups become one read, and none is answered early."""

import asyncio
from collections.abc import Mapping

import pytest

from notifications.batching import BatchedReader


class Reads:
    """A read that records each call and waits until the test lets it answer."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.fail: Exception | None = None

    async def __call__(self, keys: list[int]) -> Mapping[int, str]:
        self.calls.append(keys)
        self.started.set()
        await asyncio.wait_for(self.release.wait(), timeout=5)
        if self.fail is not None:
            raise self.fail
        return {key: f"v{key}" for key in keys if key != 404}


async def test_callers_waiting_together_share_one_read_and_each_gets_its_own_answer() -> None:
    reads = Reads()
    reader = BatchedReader(read=reads)
    reads.release.set()
    answers = await asyncio.gather(*(reader.get(key) for key in [1, 2, 3, 2, 404]))
    assert answers == ["v1", "v2", "v3", "v2", None]
    assert reads.calls == [[1, 2, 3, 404]]  # once each, in order


async def test_a_key_asked_while_a_read_is_under_way_waits_for_the_next_read() -> None:
    """A caller that did something first (joined its group) must get a read made after that."""
    reads = Reads()
    reader = BatchedReader(read=reads)
    first = asyncio.ensure_future(reader.get(1))
    await asyncio.wait_for(reads.started.wait(), timeout=5)
    second = asyncio.ensure_future(reader.get(1))
    await asyncio.sleep(0)
    assert reads.calls == [[1]]
    reads.release.set()
    assert list(await asyncio.wait_for(asyncio.gather(first, second), timeout=5)) == ["v1", "v1"]
    assert reads.calls == [[1], [1]]


async def test_a_failed_read_fails_its_callers_and_the_next_read_goes_on() -> None:
    reads = Reads()
    reader = BatchedReader(read=reads)
    reads.fail = ConnectionError("database down")
    reads.release.set()
    results = await asyncio.gather(reader.get(1), reader.get(2), return_exceptions=True)
    assert [type(result) for result in results] == [ConnectionError, ConnectionError]
    reads.fail = None
    assert await reader.get(3) == "v3"


async def test_a_cancelled_caller_leaves_the_others_answered() -> None:
    reads = Reads()
    reader = BatchedReader(read=reads)
    leaving = asyncio.ensure_future(reader.get(1))
    staying = asyncio.ensure_future(reader.get(2))
    await asyncio.wait_for(reads.started.wait(), timeout=5)
    leaving.cancel()
    reads.release.set()
    assert await asyncio.wait_for(staying, timeout=5) == "v2"
    with pytest.raises(asyncio.CancelledError):
        await leaving


async def test_reads_are_at_most_max_keys_long() -> None:
    reads = Reads()
    reader = BatchedReader(read=reads, max_keys=2)
    reads.release.set()
    assert await asyncio.gather(*(reader.get(key) for key in range(5))) == [f"v{key}" for key in range(5)]
    assert reads.calls == [[0, 1], [2, 3], [4]]
