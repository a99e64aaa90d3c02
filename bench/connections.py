"""Connection runs: what idle sockets cost, memory at scale, a connect storm and a reconnect storm.

Each starts a fresh server (ours or the raw forwarder) of its own.

- ``idle``: one client process (``clients.py``, 200 handshakes at a time)
  opens the idle sockets; over a whole number of heartbeats the server's CPU
  and, for ours, the bench database's transactions are counted; then a
  second client process opens more, for the memory per socket at scale.
- ``storms``: every client of ``storm_clients.py`` connects at once; then a
  producer emits for some of the users while the server is restarted
  (SIGTERM, wait for the exit, a new one on the same port), and each client
  comes back and, on ours, resumes. Every event of the producer is then
  checked per user against the log (ours) or 1..n (raw: events published
  while it was down, or before a client was back, are lost; they are
  counted).
"""

import json
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from typing import Any

from harness import (
    BENCH,
    PG_URL,
    PYTHON,
    Machine,
    cpu_seconds,
    events_judged,
    listen_overflows,
    rss_kib,
    wait_line,
    wrong,
)

Start = Callable[[int], tuple[subprocess.Popen[Any], str]]  # a server on this port (0: any)
Users = list[tuple[int, str | None]]


def transactions(database: str) -> int:
    """Transactions committed and rolled back so far in ``database``, as pg_stat_database has them.

    Read from another database, so the probe adds nothing to the count.
    pg_stat_force_next_flush() flushes only the caller's own counts: each
    server backend reports its own at most once a second while busy, so
    both ends of a window lag alike under a steady load, and the delta
    stands to within about a second's worth of transactions.
    """
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_force_next_flush()")
        row = conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s", [database]
        ).fetchone()
    assert row is not None
    return int(row[0])


def holding(machine: Machine, url: str, users: Users) -> tuple[subprocess.Popen[str], float]:
    """Start a ``clients.py`` holding a socket per user; return it once all are open, and the connects/s."""
    tag = uuid.uuid4().hex[:8]
    tokens_file, clients_out = machine.workdir / f"{tag}.tokens.json", machine.workdir / f"{tag}.recv.json"
    tokens_file.write_text(json.dumps(users))
    clients = machine.start(
        [PYTHON, str(BENCH / "clients.py"), "--url", url, "--tokens", str(tokens_file), "--out", str(clients_out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    ready = wait_line(clients, "READY", 1800).split()
    return clients, int(ready[1]) / float(ready[2])


def command(clients: subprocess.Popen[str], line: str, answer: str, timeout: float = 300) -> str:
    assert clients.stdin is not None
    clients.stdin.write(f"{line}\n")
    clients.stdin.flush()
    return wait_line(clients, answer, timeout)


def idle_cost(pid: int, database: str | None, seconds: float) -> tuple[float, float | None]:
    """The server's CPU (% of one core) and the database's transactions/s over the next ``seconds``."""
    cpu, xacts, started = cpu_seconds(pid), transactions(database) if database else 0, time.monotonic()
    time.sleep(seconds)
    cpu, xacts = cpu_seconds(pid) - cpu, (transactions(database) - xacts) if database else None
    elapsed = time.monotonic() - started
    return cpu / elapsed * 100, None if xacts is None else xacts / elapsed


def idle(
    machine: Machine, start: Start, users: Users, more: Users, *, seconds: float, scale_seconds: float,
    database: str | None,
) -> dict[str, Any]:  # fmt: skip
    """Hold ``users`` idle, measure what they cost over ``seconds``, then add ``more``, for memory at scale."""
    server, url = start(0)
    time.sleep(1)  # let it settle after start-up
    before = rss_kib(server.pid)
    first, connect_rate = holding(machine, url, users)
    time.sleep(2)  # the last connects' work done: from here on, only the server's own timers
    cpu, xacts = idle_cost(server.pid, database, seconds)
    still_open = int(command(first, "OPEN", "OPEN").split()[1])
    after = rss_kib(server.pid)
    second, _ = holding(machine, url, more)
    time.sleep(2)
    scale_cpu, _ = idle_cost(server.pid, None, scale_seconds)
    at_scale = sum(int(command(clients, "OPEN", "OPEN").split()[1]) for clients in (first, second))
    at_scale_rss = rss_kib(server.pid)
    for clients in (first, second):
        command(clients, "STOP", "DONE")
    machine.stop(server)
    per_thousand = 1000 / max(still_open, 1)
    return {
        "connections": len(users),
        "open_when_measured": still_open,
        "connect_per_second": round(connect_rate, 1),
        "rss_before_kib": before,
        "rss_after_kib": after,
        "kib_per_connection": round((after - before) / max(still_open, 1), 1),
        "idle_seconds": seconds,
        "idle_cpu_percent": round(cpu, 2),
        "idle_cpu_percent_per_1000": round(cpu * per_thousand, 3),
        "idle_db_transactions_per_second": None if xacts is None else round(xacts, 1),
        "idle_db_transactions_per_second_per_1000": None if xacts is None else round(xacts * per_thousand, 2),
        "scale_open_when_measured": at_scale,
        "scale_idle_seconds": scale_seconds,
        "scale_idle_cpu_percent": round(scale_cpu, 2),
        "scale_rss_kib": at_scale_rss,
        "scale_kib_per_connection": round((at_scale_rss - before) / max(at_scale, 1), 1),
    }


def storms(
    machine: Machine, env: dict[str, str], start: Start, users: Users, *, mode: str, emit_users: int, rate: float,
    warm_seconds: float, live_limit_seconds: float,
) -> dict[str, Any]:  # fmt: skip
    """Connect every user at once, then restart the server under a steady trickle of events.

    A storm after which not every client is in within ``live_limit_seconds``
    (for the restart: of the SIGTERM) is reported as such (``seconds`` or
    ``all_live_seconds`` null; ``in`` or ``back``, how many were).
    """
    server, url = start(0)
    port = int(url.split(":")[2].split("/")[0])
    time.sleep(1)
    # Ours promises every event within one heartbeat even when the layer drops it.
    idle_seconds = 5.0 + (float(env["WS_HEARTBEAT_SECONDS"]) if mode == "ours" else 0.0)
    tag = uuid.uuid4().hex[:8]
    tokens_file, clients_out, sent_out = (machine.workdir / f"{tag}.{name}.json" for name in ("tokens", "recv", "sent"))
    tokens_file.write_text(json.dumps(users))
    server_cpu, overflows = cpu_seconds(server.pid), listen_overflows()
    clients = machine.start(
        [PYTHON, str(BENCH / "storm_clients.py"), "--url", url, "--tokens", str(tokens_file), "--out",
         str(clients_out), "--idle", str(idle_seconds), "--limit", str(live_limit_seconds)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    ready = json.loads(wait_line(clients, "READY", live_limit_seconds + 120).partition(" ")[2])
    server_cpu, overflows = cpu_seconds(server.pid) - server_cpu, listen_overflows() - overflows
    connect_seconds = (ready["all_live"] or ready["until"]) - ready["since"]
    connect = {
        "connections": len(users),
        "seconds": round(connect_seconds, 2) if ready["all_live"] else None,
        "in": ready["live"],
        "connect_per_second": round(ready["live"] / connect_seconds, 1),
        "attempts": ready["stats"].get("attempts", 0),
        "refused_4503": sum(n for key, n in ready["stats"].items() if key.startswith("closed 4503")),
        "outcomes": ready["stats"],
        "listen_overflows": overflows,
        "server_cpu_ms_per_connect": round(server_cpu / max(ready["live"], 1) * 1000, 2),
        "client_cpu_percent": round(ready["cpu_seconds"] / max(connect_seconds, 1e-3) * 100, 1),
    }

    emitting = [str(user) for user, _ in users[:emit_users]]
    producer_log = open(machine.workdir / f"{tag}.producer.log", "wb")
    producer = machine.start(
        [PYTHON, str(BENCH / "producer.py"), "--mode", mode, "--users", ",".join(emitting), "--rate", str(rate),
         "--seconds", "1800", "--out", str(sent_out), "--redis", env["REDIS_URL"], "--tag", tag],
        env, stdout=producer_log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    time.sleep(warm_seconds)
    command(clients, "MARK", "MARKED")
    stopping, overflows = time.time(), listen_overflows()
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=120)
    stopped = time.time()
    server, _url = start(port)
    opened, server_cpu = time.time(), cpu_seconds(server.pid)
    live = json.loads(wait_line(clients, "LIVE", live_limit_seconds + 120).partition(" ")[2])
    server_cpu, overflows = cpu_seconds(server.pid) - server_cpu, listen_overflows() - overflows
    time.sleep(warm_seconds)  # events after everyone is back, delivered live
    producer.send_signal(signal.SIGTERM)
    producer.wait(timeout=120)
    producer_log.close()
    sent = json.loads(sent_out.read_text())
    command(clients, f"EXPECT {sent['sent']}", "DONE", 300 + idle_seconds)
    machine.stop(server)
    received = json.loads(clients_out.read_text())
    events = events_judged(env, mode=mode, tag=tag, sent=sent, received=received)
    lost_seqs = events.pop("lost_seqs")
    if mode == "raw":
        lost_while = lost_when(
            lost_seqs, emitting, first_emit=sent["first_emit"], rate=rate, stopping=stopping, opened=opened
        )
    else:  # ours: seqs in the log go on from earlier runs, so when each was due is not known
        lost_while = {}
    del events["distinct"]
    back_at = live["all_live"] or live["until"]
    back = live["live"]
    return {
        "connect_storm": connect,
        "reconnect_storm": {
            "connections": len(users),
            "emitting_users": len(emitting),
            "emit_rate": round(sent["rate"], 1),
            "shutdown_seconds": round(stopped - stopping, 2),
            "down_seconds": round(opened - stopped, 2),
            "all_live_seconds": round(live["all_live"] - opened, 2) if live["all_live"] else None,
            "back": back,
            "reconnect_per_second": round(back / max(back_at - opened, 1e-3), 1),
            "attempts": live["stats"].get("attempts", 0),
            "refused_4503": sum(n for key, n in live["stats"].items() if key.startswith("closed 4503")),
            "outcomes": live["stats"],
            "listen_overflows": overflows,
            "server_cpu_ms_per_reconnect": round(server_cpu / max(back, 1) * 1000, 2),
            # From the MARK just before the SIGTERM until the last client was live again (or the limit).
            "client_cpu_percent": round(live["cpu_seconds"] / max(back_at - live["since"], 1e-3) * 100, 1),
            **events,
            **lost_while,
        },
    }


def lost_when(
    lost: dict[int, set[int]], emitting: list[str], *, first_emit: float, rate: float, stopping: float, opened: float
) -> dict[str, int]:
    """Split the raw forwarder's lost events by when they were due: before the restart, while it was down, after.

    The producer emits round-robin over ``emitting`` at a fixed rate, so a
    user's n-th event (seq n, on raw) was due at a known time.
    """
    position = {int(user): index for index, user in enumerate(emitting)}
    split = {"lost_before_restart": 0, "lost_while_down": 0, "lost_after_restart": 0}
    for user, seqs in lost.items():
        for seq in seqs:
            due = first_emit + ((seq - 1) * len(emitting) + position[user]) / rate
            when = "before_restart" if due < stopping else "while_down" if due < opened else "after_restart"
            split[f"lost_{when}"] += 1
    return split


def connection_rows(row: Callable[[str, str, Callable[[dict[str, Any]], Any]], None], plan: Any) -> None:
    """The connection runs' lines of the table: ``row(label, run, pick)``, ours beside raw."""
    storm = f"{plan.storm_connections:,}"
    lines: list[tuple[str, str, Callable[[dict[str, Any]], Any]]] = [
        (f"idle sockets held (of {plan.idle_connections:,})", "idle", lambda r: r["open_when_measured"]),
        ("  connects/s, 200 handshakes at a time", "idle", lambda r: r["connect_per_second"]),
        ("  server KiB per socket", "idle", lambda r: r["kib_per_connection"]),
        (f"  server CPU % of a core, idle {plan.idle_seconds:g} s", "idle", lambda r: r["idle_cpu_percent"]),
        ("    per 1,000 idle sockets", "idle", lambda r: r["idle_cpu_percent_per_1000"]),
        ("  PostgreSQL transactions/s, idle", "idle", lambda r: r["idle_db_transactions_per_second"]),
        ("    per 1,000 idle sockets", "idle", lambda r: r["idle_db_transactions_per_second_per_1000"]),
        (f"idle sockets held (of {plan.scale_connections:,})", "idle", lambda r: r["scale_open_when_measured"]),
        ("  server KiB per socket", "idle", lambda r: r["scale_kib_per_connection"]),
        (
            f"  server CPU % of a core, idle {plan.scale_idle_seconds:g} s",
            "idle",
            lambda r: r["scale_idle_cpu_percent"],
        ),
        (f"connect storm, {storm} at once: s to all in", "connect_storm", lambda r: r["seconds"]),
        ("  clients in (within the limit)", "connect_storm", lambda r: r["in"]),
        ("  connects/s", "connect_storm", lambda r: r["connect_per_second"]),
        ("  refused with 4503, then retried", "connect_storm", lambda r: r["refused_4503"]),
        ("  attempts, less clients in (retries)", "connect_storm", lambda r: r["attempts"] - r["in"]),
        ("  handshakes dropped, listen queue full", "connect_storm", lambda r: r["listen_overflows"]),
        ("  server CPU ms per connect", "connect_storm", lambda r: r["server_cpu_ms_per_connect"]),
        ("  client CPU % of a core", "connect_storm", lambda r: r["client_cpu_percent"]),
        (f"restart, {storm} back: s from port open to live", "reconnect_storm", lambda r: r["all_live_seconds"]),
        ("  clients back (within the limit)", "reconnect_storm", lambda r: r["back"]),
        ("  shutdown s (SIGTERM to exit)", "reconnect_storm", lambda r: r["shutdown_seconds"]),
        ("  down s (exit to port open)", "reconnect_storm", lambda r: r["down_seconds"]),
        ("  reconnects/s", "reconnect_storm", lambda r: r["reconnect_per_second"]),
        ("  attempts refused, server down", "reconnect_storm", lambda r: r["outcomes"].get("refused", 0)),
        ("  closed with 4503, then retried", "reconnect_storm", lambda r: r["refused_4503"]),
        ("  attempts, less clients back (retries)", "reconnect_storm", lambda r: r["attempts"] - r["back"]),
        ("  handshakes dropped, listen queue full", "reconnect_storm", lambda r: r["listen_overflows"]),
        ("  server CPU ms per reconnect", "reconnect_storm", lambda r: r["server_cpu_ms_per_reconnect"]),
        ("  client CPU % of a core", "reconnect_storm", lambda r: r["client_cpu_percent"]),
        ("  events sent during the storm", "reconnect_storm", lambda r: r["sent"]),
        ("  lost", "reconnect_storm", lambda r: r["lost"]),
        ("    of which due while the server was down", "reconnect_storm", lambda r: r.get("lost_while_down")),
        ("  duplicated+out of order+unexpected+pending", "reconnect_storm", lambda r: wrong(r) - r["lost"]),
        ("  max latency ms", "reconnect_storm", lambda r: r["latency_ms"]["max"]),
    ]
    for label, run, pick in lines:
        row(label, run, pick)
