"""Load runs: throughput and latency, a producer emitting to connected users at a rate or flat out.

The clients (``clients.py``) connect first; the producer then emits, open
loop (each event stamped when it was due), and every event is checked per
user against the log (ours) or 1..n (raw).
"""

import json
import os
import subprocess
import uuid
from typing import Any

from harness import BENCH, PYTHON, ROOT, CpuSampler, Machine, database_processes, events_judged, wait_line


def load(
    machine: Machine, env: dict[str, str], *, mode: str, url: str, users: list[tuple[int, str | None]],
    rate: float, seconds: float, server_pid: int, layer: str = "pubsub",
) -> dict[str, Any]:  # fmt: skip
    """Connect the users, emit for ``seconds`` at ``rate`` (0: flat out), and count what arrived.

    Ours promises every event within one heartbeat even when the layer drops
    it, so its clients wait that long for stragglers before counting one lost.
    """
    idle_seconds = 5.0 + (float(env["WS_HEARTBEAT_SECONDS"]) if mode == "ours" else 0.0)
    tag = uuid.uuid4().hex[:8]
    tokens_file, clients_out, sent_out = (machine.workdir / f"{tag}.{name}.json" for name in ("tokens", "recv", "sent"))
    tokens_file.write_text(json.dumps(users))
    clients = machine.start(
        [PYTHON, str(BENCH / "clients.py"), "--url", url, "--tokens", str(tokens_file), "--out", str(clients_out),
         "--idle", str(idle_seconds)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    wait_line(clients, "READY", 120)
    producer = [
        PYTHON, str(BENCH / "producer.py"), "--mode", mode, "--users", ",".join(str(user) for user, _ in users),
        "--rate", str(rate), "--seconds", str(seconds), "--out", str(sent_out), "--redis", env["REDIS_URL"],
        "--tag", tag,
    ]  # fmt: skip
    # CPU of the server, PostgreSQL, Redis and the clients, sampled from the first
    # emit until the last event arrived (the clients' idle wait for stragglers
    # afterwards is left out). The producer reports its own.
    sampler = CpuSampler(
        {
            "server": lambda: [server_pid],
            "postgres": lambda: database_processes(machine.database),
            "redis": lambda: [machine.redis_pid],
            "clients": lambda: [clients.pid],
        }
    )
    sampler.start()
    with open(machine.workdir / f"{tag}.producer.log", "wb") as log:
        subprocess.run(
            producer, cwd=ROOT, env={**os.environ, **env, "CHANNEL_LAYER": layer}, check=True, timeout=600, stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    sent = json.loads(sent_out.read_text())
    assert clients.stdin is not None
    clients.stdin.write(f"EXPECT {sent['sent']}\n")
    clients.stdin.flush()
    wait_line(clients, "DONE", 300 + idle_seconds)
    sampler.stop()
    received = json.loads(clients_out.read_text())
    until = received["last_received"] if received["received"] else sent["first_emit"] + sent["seconds"]
    used = sampler.used(until)
    events = events_judged(env, mode=mode, tag=tag, sent=sent, received=received)
    # From the first emit to the last arrival: a backlog still draining after
    # the producer stopped counts against the rate.
    unique = events.pop("distinct")
    del events["lost_seqs"]
    span = max(received["last_received"] - sent["first_emit"], sent["seconds"]) if unique else sent["seconds"]
    return {
        "users": len(users),
        "emit_rate": round(sent["rate"], 1),
        "delivered_rate": round(unique / span, 1),
        "ack_ms": sent["ack_ms"],
        **events,
        # CPU per event sent: the producer's while it emitted, the others' from the
        # first emit until the last arrival (to within the 0.1 s sampling).
        "producer_cpu_us_per_event": round(sent["cpu_seconds"] / max(sent["sent"], 1) * 1e6, 1),
        **{f"{name}_cpu_us_per_event": round(cpu / max(sent["sent"], 1) * 1e6, 1) for name, cpu in used.items()},
    }
