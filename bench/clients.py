"""Benchmark clients: one process holding many WebSocket connections, counting what arrives.

    python bench/clients.py --url ws://127.0.0.1:8000/ws/notifications/ --tokens tokens.json --out result.json

``tokens.json`` is a list of ``[user_id, token_or_null]``; with a token the
client speaks the product's protocol (``jwt`` subprotocol, wait for hello),
without one it connects to ``<url><user_id>`` (the raw forwarder). It prints
READY once every connection is open, then records each event (user, seq,
latency from the ``t`` the producer stamped) until it reads STOP on stdin,
and writes a summary: received, duplicates, out of order, latency
percentiles. Which events were lost is the orchestrator's to count: it
knows what was sent.
"""

import argparse
import asyncio
import itertools
import json
import resource
import sys
import time
from collections import defaultdict
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State
from websockets.typing import Subprotocol

CONNECT_CONCURRENCY = 200
OPEN_TIMEOUT_SECONDS = 60.0


class Tally:
    def __init__(self) -> None:
        self.seqs: dict[int, list[int]] = defaultdict(list)
        self.distinct_seqs: dict[int, set[int]] = defaultdict(set)
        self.latencies: list[float] = []
        self.received = 0
        self.distinct = 0
        self.first = 0.0
        self.last = 0.0

    def event(self, user_id: int, frame: dict[str, Any]) -> None:
        now = time.time()
        self.received += 1
        self.first = self.first or now
        self.last = now
        self.seqs[user_id].append(frame["seq"])
        if frame["seq"] not in self.distinct_seqs[user_id]:
            self.distinct_seqs[user_id].add(frame["seq"])
            self.distinct += 1
        self.latencies.append(now - frame["data"]["t"])


async def hold(url: str, user_id: int, token: str | None, tally: Tally, ready: asyncio.Semaphore) -> ClientConnection:
    """Open one connection (waiting for hello on the product's protocol)."""
    async with ready:
        if token is None:
            ws = await connect(f"{url}{user_id}", open_timeout=OPEN_TIMEOUT_SECONDS, ping_interval=None, max_size=None)
        else:
            ws = await connect(
                url,
                subprotocols=[Subprotocol("jwt"), Subprotocol(token)],
                open_timeout=OPEN_TIMEOUT_SECONDS,
                ping_interval=None,
                max_size=None,
            )
            hello = json.loads(await asyncio.wait_for(ws.recv(), OPEN_TIMEOUT_SECONDS))
            assert hello["type"] == "hello", hello
    return ws


async def receive(ws: ClientConnection, user_id: int, tally: Tally) -> None:
    try:
        async for message in ws:
            frame = json.loads(message)
            if frame.get("type", "event") == "event":
                tally.event(user_id, frame)
    except ConnectionClosed:
        pass


def summary(tally: Tally, connections: int, connect_seconds: float) -> dict[str, Any]:
    duplicates = out_of_order = 0
    for seqs in tally.seqs.values():
        duplicates += len(seqs) - len(set(seqs))
        out_of_order += sum(1 for a, b in itertools.pairwise(seqs) if b <= a)
    latencies = sorted(tally.latencies)

    def pct(p: float) -> float | None:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 2) if latencies else None

    return {
        "connections": connections,
        "connect_seconds": round(connect_seconds, 3),
        "received": tally.received,
        "duplicates": duplicates,
        "out_of_order": out_of_order,
        "seqs": {str(user): seqs for user, seqs in tally.seqs.items()},
        "latency_ms": {"p50": pct(0.50), "p99": pct(0.99), "max": pct(1.0)},
        "first_received": tally.first,
        "last_received": tally.last,
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--tokens", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--idle", type=float, default=5.0, help="Give up waiting after this long with nothing new.")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    users: list[tuple[int, str | None]] = [tuple(pair) for pair in json.loads(open(args.tokens).read())]  # type: ignore[misc]
    tally = Tally()
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    started = time.perf_counter()
    sockets = await asyncio.gather(*(hold(args.url, user, token, tally, gate) for user, token in users))
    connect_seconds = time.perf_counter() - started
    readers = [asyncio.create_task(receive(ws, user, tally)) for ws, (user, _) in zip(sockets, users, strict=True)]
    print(f"READY {len(sockets)} {connect_seconds:.3f}", flush=True)
    loop = asyncio.get_running_loop()
    # "OPEN": how many connections are open now. "EXPECT n": wait until n distinct
    # events came (or none came for --idle seconds), then let every connection
    # flush what is already on its way (a ping's pong comes after it), then stop.
    while (command := await loop.run_in_executor(None, sys.stdin.readline)).startswith("OPEN"):
        print(f"OPEN {sum(1 for ws in sockets if ws.state is State.OPEN)}", flush=True)
    if command.startswith("EXPECT"):
        expected = int(command.split()[1])
        seen, quiet_since = -1, time.monotonic()
        while tally.distinct < expected and time.monotonic() - quiet_since < args.idle:
            if tally.received != seen:
                seen, quiet_since = tally.received, time.monotonic()
            await asyncio.sleep(0.02)
        pongs = await asyncio.gather(*(ws.ping() for ws in sockets), return_exceptions=True)
        await asyncio.wait_for(
            asyncio.gather(*(pong for pong in pongs if isinstance(pong, asyncio.Future)), return_exceptions=True),
            timeout=30,
        )
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    await asyncio.gather(*readers, return_exceptions=True)
    with open(args.out, "w") as out:
        json.dump(summary(tally, len(sockets), connect_seconds), out)
    print("DONE", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
