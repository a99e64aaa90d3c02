"""Benchmark producer: emit events at a fixed rate, spread over users, for a while.

    python bench/producer.py --mode ours --users 1,2,3 --rate 500 --seconds 5 --out sent.json
    python bench/producer.py --mode raw --redis redis://... --users 1,2,3 --rate 500 --seconds 5 --out sent.json

``ours`` records each event through the product's entry point
(``notifications.services.aevent_record``: written to the log, then
published); ``raw`` publishes to Redis for the raw forwarder. ``--rate 0``
emits as fast as it can.

Each event's data carries ``t`` for the clients' latency. At a fixed rate
``t`` is when the event was due, not when the producer got to it, so a
producer that falls behind shows as latency instead of hiding it (an open
loop). It also carries ``r``, this run's tag, so the orchestrator can find
exactly this run's events in the log. Writes what it sent: count, seconds,
achieved rate, the wall-clock time of the first emit, and per user count.
SIGTERM stops it early, as if ``--seconds`` had run out: what it started is
finished and written.
"""

import argparse
import asyncio
import json
import os
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

STOPPING = threading.Event()  # set by SIGTERM
IN_FLIGHT = 32  # concurrent emits; beyond this the producer is saturated and falls behind

Emit = Callable[[int, int, float], Awaitable[None]]


async def emit_ours(users: list[int], rate: float, seconds: float, tag: str) -> dict[str, object]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from notifications.services import aconnections_close, aevent_record

    run_id = uuid.uuid4()

    async def one(user_id: int, index: int, stamp: float) -> None:
        data = {"t": stamp, "i": index, "r": tag}
        await aevent_record(user_id=user_id, event="agent_thinking", run_id=run_id, agent="bench", data=data)

    try:
        return await pace(users, rate, seconds, one)
    finally:
        await aconnections_close()


async def emit_raw(redis_url: str, users: list[int], rate: float, seconds: float, tag: str) -> dict[str, object]:
    from redis import asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    seqs = dict.fromkeys(users, 0)

    async def one(user_id: int, index: int, stamp: float) -> None:
        seqs[user_id] += 1
        frame = {"type": "event", "seq": seqs[user_id], "data": {"t": stamp, "i": index, "r": tag}}
        await client.publish(f"raw:{user_id}", json.dumps(frame))

    try:
        return await pace(users, rate, seconds, one)
    finally:
        await client.aclose()


async def pace(users: list[int], rate: float, seconds: float, one: Emit) -> dict[str, object]:
    """Call ``one`` ``rate`` times a second (round-robin over users) for ``seconds``, or until SIGTERM."""
    gate = asyncio.Semaphore(IN_FLIGHT)
    tasks: set[asyncio.Task[None]] = set()
    per_user: Counter[int] = Counter()
    count = 0
    started, wall_start, cpu_start = time.perf_counter(), time.time(), time.process_time()
    deadline = started + seconds

    acks: list[float] = []

    async def guarded(user_id: int, index: int, stamp: float) -> None:
        try:
            await one(user_id, index, stamp)
            acks.append(time.time() - stamp)
        finally:
            gate.release()

    while (now := time.perf_counter()) < deadline and not STOPPING.is_set():
        due = started + count / rate if rate else now
        if due > now:
            await asyncio.sleep(due - now)
        await gate.acquire()
        stamp = wall_start + (due - started) if rate else time.time()
        user_id = users[count % len(users)]
        task = asyncio.create_task(guarded(user_id, count, stamp))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        per_user[user_id] += 1
        count += 1
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    acks.sort()

    def pct(p: float) -> float | None:
        return round(acks[min(len(acks) - 1, int(p * len(acks)))] * 1000, 2) if acks else None

    return {
        "sent": count,
        "seconds": elapsed,
        "cpu_seconds": time.process_time() - cpu_start,  # This process's, threads included.
        "rate": count / elapsed,
        "first_emit": wall_start,
        "per_user": {str(user): n for user, n in per_user.items()},
        # From when an event was due to when the producer's call returned (ours: written,
        # committed and published; raw: published): the write path's share of the latency.
        "ack_ms": {"p50": pct(0.50), "p99": pct(0.99), "max": pct(1.0)},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["ours", "raw"], required=True)
    parser.add_argument("--users", required=True, help="Comma-separated user ids.")
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--redis", default="")
    parser.add_argument("--tag", required=True, help="Marks this run's events.")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    users = [int(user) for user in args.users.split(",")]
    previous = signal.signal(signal.SIGTERM, lambda _signum, _frame: STOPPING.set())
    try:
        if args.mode == "ours":
            sent = asyncio.run(emit_ours(users, args.rate, args.seconds, args.tag))
        else:
            sent = asyncio.run(emit_raw(args.redis, users, args.rate, args.seconds, args.tag))
    finally:
        signal.signal(signal.SIGTERM, previous)
    with open(args.out, "w") as out:
        json.dump(sent, out)


if __name__ == "__main__":
    main()
