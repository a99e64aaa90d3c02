"""Benchmark clients that all connect at once and keep coming back: the connect and reconnect storms.

    python bench/storm_clients.py --url ws://127.0.0.1:8000/ws/notifications/ --tokens tokens.json --out result.json

``tokens.json`` is a list of ``[user_id, token_or_null]``, as for
``clients.py``: with a token, the product's protocol; without, the raw
forwarder. Every client connects at once, with no bound on handshakes in
flight, and the process prints ``READY {...}`` once each has had its
``hello`` (raw: is open). From then on each client stays connected and,
whenever it is closed, comes back:

- after a close 4503 or 1001 whose reason is ``{"retry_after": <seconds>}``,
  that long after (at most a minute);
- after anything else (refused, reset, timed out, closed without a hint),
  after a jittered 50-300 ms;

and, on the product's protocol, sends ``resume`` after the last seq it
processed and is live again at ``resumed``. It processes events as a client
of docs/protocol.md must: between ``hello`` and ``resumed`` events are held
back, then those after the last seq processed are processed in seq order;
outside that window every event is processed as it comes, so a duplicate or
a reordering by the server shows in the counts.

Commands on stdin: ``MARK`` (prints ``MARKED``, then ``LIVE {...}`` once
every client has been live again since), ``EXPECT n`` (wait until n
distinct events came or nothing came for ``--idle`` seconds, flush every
connection with a ping, then stop) and ``STOP``. READY and LIVE come after
``--limit`` seconds at the latest: ``all_live`` is then null, and ``live``
says how many clients were.
"""

import argparse
import asyncio
import json
import random
import resource
import sys
import time
from collections import Counter
from typing import Any

from clients import Tally, summary
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.frames import Close
from websockets.typing import Subprotocol

OPEN_TIMEOUT_SECONDS = 120.0
BACKOFF_SECONDS = (0.05, 0.3)
HINTED_CLOSE_CODES = (1001, 4503)
EXPECT_MAX_SECONDS = 240.0  # the longest EXPECT waits, however slowly events still trickle in
RETRY_AFTER_MAX_SECONDS = 60.0  # a longer hint is capped, as docs/protocol.md asks of clients
Stats = Counter[str]


def backoff() -> float:
    """A jittered delay before trying again without a hint from the server."""
    return random.uniform(*BACKOFF_SECONDS)  # noqa: S311 (jitter, not a secret)


def retry_after(close: Close | None) -> float | None:
    """The server's hint in a 1001 or 4503 close reason, ``{"retry_after": <seconds>}``, if any."""
    if close is None or close.code not in HINTED_CLOSE_CODES:
        return None
    try:
        hint = json.loads(close.reason)["retry_after"]
    except (ValueError, TypeError, KeyError):
        return None
    if not isinstance(hint, int | float) or isinstance(hint, bool) or not hint >= 0:
        return None
    return min(float(hint), RETRY_AFTER_MAX_SECONDS)


class Roll:
    """The clients yet to become live since the roll was started; ``done`` is set when none is left."""

    def __init__(self) -> None:
        self.waiting: set[Client] = set()
        self.done = asyncio.Event()
        self.last_at = 0.0

    def start(self, clients: list["Client"]) -> None:
        self.waiting, self.last_at = set(clients), 0.0
        self.done.clear()

    def report(self, clients: list["Client"], since: float, cpu: float) -> dict[str, Any]:
        """Since ``since``: when the last client became live (None if some have not), how many have, the CPU used."""
        return {
            "since": since, "until": time.time(), "all_live": self.last_at if self.done.is_set() else None,
            "live": len(clients) - len(self.waiting), "cpu_seconds": time.process_time() - cpu,
        }  # fmt: skip

    def live(self, client: "Client", at: float) -> None:
        if client in self.waiting:
            self.waiting.discard(client)
            self.last_at = at
            if not self.waiting:
                self.done.set()


class Client:
    """One user's connection, reconnected whenever it ends, and what it processed."""

    def __init__(self, url: str, user_id: int, token: str | None, tally: Tally, stats: Stats, roll: Roll) -> None:
        self.url, self.user_id, self.token = url, user_id, token
        self.tally, self.stats, self.roll = tally, stats, roll
        self.ws: ClientConnection | None = None
        self.last = -1  # the last seq processed; -1 until the first hello says where "now" is
        self.greeted = False  # this connection had its hello (raw: is open)
        self.held: list[dict[str, Any]] | None = None  # events between hello and resumed
        self.stopping = False

    async def run(self) -> None:
        while not self.stopping:
            self.stats["attempts"] += 1
            try:
                if self.token is None:
                    self.ws = await connect(
                        f"{self.url}{self.user_id}", open_timeout=OPEN_TIMEOUT_SECONDS, ping_interval=None,
                        max_size=None,
                    )  # fmt: skip
                    self.mark_live()
                else:
                    self.ws = await connect(
                        self.url, subprotocols=[Subprotocol("jwt"), Subprotocol(self.token)],
                        open_timeout=OPEN_TIMEOUT_SECONDS, ping_interval=None, max_size=None,
                    )  # fmt: skip
            except ConnectionRefusedError:
                self.stats["refused"] += 1
                await asyncio.sleep(backoff())
                continue
            except (OSError, TimeoutError, WebSocketException) as exc:
                self.stats[f"failed {type(exc).__name__}"] += 1
                await asyncio.sleep(backoff())
                continue
            close = await self.receive(self.ws)
            self.ws, self.greeted, self.held = None, False, None
            if self.stopping:
                return
            hint = retry_after(close)
            self.stats[f"closed {close.code if close else 1006}{' hinted' if hint is not None else ''}"] += 1
            await asyncio.sleep(backoff() if hint is None else hint)

    async def receive(self, ws: ClientConnection) -> Close | None:
        """Process frames until the connection closes; return the close frame the server sent, if any."""
        try:
            while True:
                message = await asyncio.wait_for(ws.recv(), None if self.greeted else OPEN_TIMEOUT_SECONDS)
                await self.frame(ws, json.loads(message))
        except ConnectionClosed as exc:
            return exc.rcvd
        except TimeoutError:
            self.stats["failed no hello"] += 1
            await ws.close()
            return None

    async def frame(self, ws: ClientConnection, frame: dict[str, Any]) -> None:
        kind = frame.get("type", "event")
        if kind == "event":
            if self.held is not None:
                self.held.append(frame)
            else:
                self.process(frame)
        elif kind == "hello":
            self.greeted = True
            if self.last < 0:  # the first connection starts from now, as the reference client does
                self.last = frame["last_seq"]
                self.mark_live()
            else:
                self.held = []
                await ws.send(json.dumps({"type": "resume", "after": self.last}))
        elif kind in ("resumed", "error") and self.held is not None:
            if kind == "error":
                self.stats["resume refused"] += 1
            else:
                self.stats["replayed"] += frame["count"]
            held, self.held = self.held, None
            for seq, event in sorted({event["seq"]: event for event in held}.items()):
                if seq > self.last:
                    self.process(event)
            self.mark_live()

    def process(self, event: dict[str, Any]) -> None:
        self.tally.event(self.user_id, event)
        self.last = max(self.last, event["seq"])

    def mark_live(self) -> None:
        """Live: open, greeted, and (after a reconnect) resumed."""
        self.greeted = True
        self.roll.live(self, time.time())


async def wait_roll(roll: Roll, since: float, limit: float) -> float:
    """Wait, at most ``limit`` seconds, for every client to become live; return how long it took so far."""
    try:
        await asyncio.wait_for(roll.done.wait(), limit)
    except TimeoutError:
        pass
    return (roll.last_at if roll.done.is_set() else time.time()) - since


async def flush(clients: list[Client]) -> None:
    """Ping every open connection: its pong comes after anything already on its way."""
    sockets = [client.ws for client in clients if client.ws is not None]
    pongs = await asyncio.gather(*(ws.ping() for ws in sockets), return_exceptions=True)
    waiters = [pong for pong in pongs if isinstance(pong, asyncio.Future)]
    await asyncio.wait_for(asyncio.gather(*waiters, return_exceptions=True), timeout=30)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--tokens", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--idle", type=float, default=5.0, help="Give up waiting after this long with nothing new.")
    parser.add_argument("--limit", type=float, default=600.0, help="Report READY or LIVE after this long at most.")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    users: list[tuple[int, str | None]] = [tuple(pair) for pair in json.loads(open(args.tokens).read())]  # type: ignore[misc]
    tally, stats, roll = Tally(), Stats(), Roll()
    clients = [Client(args.url, user, token, tally, stats, roll) for user, token in users]
    roll.start(clients)
    started, cpu = time.time(), time.process_time()
    tasks = [asyncio.create_task(client.run()) for client in clients]
    try:
        connect_seconds = await wait_roll(roll, started, args.limit)
        ready = {**roll.report(clients, started, cpu), "stats": stats}
        print(f"READY {json.dumps(ready)}", flush=True)
        loop = asyncio.get_running_loop()
        while (command := await loop.run_in_executor(None, sys.stdin.readline)).startswith("MARK"):
            mark, cpu, before = time.time(), time.process_time(), stats.copy()
            roll.start(clients)
            print("MARKED", flush=True)
            await wait_roll(roll, mark, args.limit)
            print(f"LIVE {json.dumps({**roll.report(clients, mark, cpu), 'stats': stats - before})}", flush=True)
        if command.startswith("EXPECT"):
            expected = int(command.split()[1])
            seen, quiet_since = -1, time.monotonic()
            give_up = quiet_since + EXPECT_MAX_SECONDS
            while tally.distinct < expected and (now := time.monotonic()) < give_up and now - quiet_since < args.idle:
                if tally.received != seen:
                    seen, quiet_since = tally.received, time.monotonic()
                await asyncio.sleep(0.02)
            await flush(clients)
    finally:
        for client in clients:
            client.stopping = True
        await asyncio.gather(*(client.ws.close() for client in clients if client.ws), return_exceptions=True)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    with open(args.out, "w") as out:
        json.dump({**summary(tally, len(clients), connect_seconds), "stats": stats}, out)
    print("DONE", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
