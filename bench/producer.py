"""Benchmark producer: emit events at a fixed rate, spread over users, for a while.

    python bench/producer.py --mode ours --users 1,2,3 --rate 500 --seconds 5 --out sent.json
    python bench/producer.py --mode raw --redis redis://... --users 1,2,3 --rate 500 --seconds 5 --out sent.json

``ours`` records each event through the product's entry point
(``notifications.services.aevent_record``: written to the log, then
published); ``raw`` publishes to Redis for the raw forwarder. Each event's
data carries ``t``, the emit time, for the clients' latency. ``--rate 0``
emits as fast as it can. Writes what it sent: count, seconds, achieved rate.
"""

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

IN_FLIGHT = 32  # concurrent emits; beyond this the producer is saturated and falls behind


async def emit_ours(users: list[int], rate: float, seconds: float) -> tuple[int, float]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from notifications.services import aevent_record, alayer_close

    run_id = uuid.uuid4()

    async def one(user_id: int, index: int) -> None:
        await aevent_record(
            user_id=user_id, event="agent_thinking", run_id=run_id, agent="bench", data={"t": time.time(), "i": index}
        )

    try:
        return await pace(users, rate, seconds, one)
    finally:
        await alayer_close()


async def emit_raw(redis_url: str, users: list[int], rate: float, seconds: float) -> tuple[int, float]:
    from redis import asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    seqs = dict.fromkeys(users, 0)

    async def one(user_id: int, index: int) -> None:
        seqs[user_id] += 1
        frame = {"type": "event", "seq": seqs[user_id], "data": {"t": time.time(), "i": index}}
        await client.publish(f"raw:{user_id}", json.dumps(frame))

    try:
        return await pace(users, rate, seconds, one)
    finally:
        await client.aclose()


async def pace(users: list[int], rate: float, seconds: float, one: Any) -> tuple[int, float]:
    """Call ``one`` ``rate`` times a second (round-robin over users) for ``seconds``; return (count, elapsed)."""
    gate = asyncio.Semaphore(IN_FLIGHT)
    tasks: set[asyncio.Task[None]] = set()
    count = 0
    started = time.perf_counter()
    deadline = started + seconds

    async def guarded(user_id: int, index: int) -> None:
        try:
            await one(user_id, index)
        finally:
            gate.release()

    while (now := time.perf_counter()) < deadline:
        if rate:
            due = started + count / rate
            if due > now:
                await asyncio.sleep(due - now)
        await gate.acquire()
        task = asyncio.create_task(guarded(users[count % len(users)], count))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        count += 1
    await asyncio.gather(*tasks)
    return count, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["ours", "raw"], required=True)
    parser.add_argument("--users", required=True, help="Comma-separated user ids.")
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--redis", default="")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    users = [int(user) for user in args.users.split(",")]
    if args.mode == "ours":
        count, elapsed = asyncio.run(emit_ours(users, args.rate, args.seconds))
    else:
        count, elapsed = asyncio.run(emit_raw(args.redis, users, args.rate, args.seconds))
    with open(args.out, "w") as out:
        json.dump({"sent": count, "seconds": elapsed, "rate": count / elapsed}, out)


if __name__ == "__main__":
    main()
