"""The raw limit: a bare websockets server forwarding Redis pub/sub to each user's sockets.

    python bench/raw_forwarder.py --port 8100 --redis redis://127.0.0.1:6379/0

A client connects to ``/<user_id>``; whatever is published on ``raw:<user_id>``
goes to that user's sockets as is. No auth, no log, no ordering or
completeness guarantee beyond what Redis and TCP give: the practical
ceiling for a Python server on this machine, for comparison.
"""

import argparse
import asyncio
import resource
from collections import defaultdict

from redis import asyncio as aioredis
from websockets.asyncio.server import ServerConnection, broadcast, serve

sockets: dict[int, set[ServerConnection]] = defaultdict(set)


async def handler(ws: ServerConnection) -> None:
    user_id = int((ws.request.path if ws.request else "/0").strip("/") or 0)
    sockets[user_id].add(ws)
    try:
        await ws.wait_closed()
    finally:
        sockets[user_id].discard(ws)


async def forward(pubsub: aioredis.client.PubSub) -> None:
    async for message in pubsub.listen():
        if message["type"] == "pmessage":
            user_id = int(message["channel"].split(b":", 1)[1])
            broadcast(sockets.get(user_id, ()), message["data"].decode())


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis", required=True)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    pubsub = aioredis.Redis.from_url(args.redis).pubsub()
    await pubsub.psubscribe("raw:*")
    async with serve(handler, "127.0.0.1", args.port, ping_interval=None, max_size=None):
        print("READY", flush=True)
        await forward(pubsub)


if __name__ == "__main__":
    asyncio.run(main())
