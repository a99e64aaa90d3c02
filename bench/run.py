"""End-to-end benchmark: ours beside the raw limit, on this machine.

    .venv/bin/python bench/run.py            # the full run (about 25 minutes)
    .venv/bin/python bench/run.py --quick    # a small one (about a minute), as CI runs it
    .venv/bin/python bench/run.py --quick --only connections --set storm_connections=2000

It starts its own redis-server and a PostgreSQL database of its own (on the
local server, ``BENCH_PG_URL``), then, each in its own process: one daphne
with the production settings (``python -m config.server``), the raw
forwarder (``bench/raw_forwarder.py``), the clients (``bench/clients.py``,
and ``bench/storm_clients.py`` for the storms) and the producer
(``bench/producer.py``). The runs: load (throughput and latency), the
connection runs of ``connections.py`` (idle cost, memory at scale, a connect
storm, a restart) and ``drain_events``. It prints a table, ours beside the
raw limit, and writes every figure to ``--json``. Lost, duplicated and
out-of-order events are counted in every run; ``--check`` exits 1 if any
run of ours had one, the restart included.
"""

import argparse
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from connections import Start, connection_rows, idle, storms
from harness import (
    BENCH,
    PYTHON,
    ROOT,
    Machine,
    raise_file_limit,
    setup,
    start_ours,
    start_raw,
    tokens,
    wrong,
)
from load import load


@dataclasses.dataclass(frozen=True)
class Plan:
    users: int
    load_seconds: float
    rates: tuple[int, ...]  # fixed rates for the latency runs
    drain_events: int
    idle_connections: int  # held while their cost is measured, opened 200 at a time
    idle_seconds: float  # how long the cost is measured: a whole number of heartbeats in the full plan
    scale_connections: int  # then held in all, by two client processes, for the memory per socket
    scale_idle_seconds: float  # and their cost measured for as long
    storm_connections: int  # connect all at once, then come back after a restart
    storm_emit_users: int  # users with events during the reconnect storm
    storm_rate: float  # their events/s, in all
    storm_warm_seconds: float  # events before the restart, and after every client is back
    storm_live_limit_seconds: float  # longest wait for every client to be in (restart: from the SIGTERM)

    @property
    def accounts(self) -> int:
        return max(self.users, self.scale_connections, self.storm_connections)


FULL = Plan(
    users=1000, load_seconds=10, rates=(500, 2000), drain_events=50_000,
    idle_connections=10_000, idle_seconds=75, scale_connections=18_000, scale_idle_seconds=25,
    storm_connections=10_000, storm_emit_users=1000, storm_rate=100, storm_warm_seconds=5,
    storm_live_limit_seconds=420.0,
)  # fmt: skip
QUICK = Plan(
    users=50, load_seconds=2, rates=(200,), drain_events=2000,
    idle_connections=200, idle_seconds=5, scale_connections=300, scale_idle_seconds=2,
    storm_connections=300, storm_emit_users=20, storm_rate=50, storm_warm_seconds=2,
    storm_live_limit_seconds=120.0,
)  # fmt: skip
FEW_USERS = 8
PARTS = ("load", "connections", "drain")
CHECKED = ("max", "few_users", "reconnect_storm", *(f"at_{rate}" for rate in {*FULL.rates, *QUICK.rates}))


DRAIN_MIN_TIMED_SECONDS = 0.1


def drain(env: dict[str, str], count: int) -> dict[str, Any]:
    """Publish ``count`` pending events with ``drain_events --once``; subtract the command's start-up."""
    import psycopg

    def timed() -> tuple[float, str]:
        command = [PYTHON, "manage.py", "drain_events", "--once", "--min-age", "0"]
        started = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, env={**os.environ, **env}, check=True, capture_output=True, text=True)
        return time.perf_counter() - started, done.stdout

    empty, _ = timed()
    with psycopg.connect(env["DATABASE_URL"], autocommit=True) as conn:
        users = conn.execute("SELECT id FROM auth_user ORDER BY id LIMIT 1000").fetchall()
        per_user = max(1, count // len(users))
        conn.execute(
            """
            WITH u AS (SELECT id, row_number() OVER (ORDER BY id) AS k FROM auth_user ORDER BY id LIMIT %(users)s),
                 s AS (SELECT COALESCE(MAX(last_seq), 0) AS base FROM notifications_stream)
            , written AS (
                INSERT INTO notifications_event (id, user_id, seq, event, run_id, agent, data, created_at)
                SELECT gen_random_uuid(), u.id, s.base + n, 'agent_thinking', gen_random_uuid(), 'bench',
                       jsonb_build_object('t', 0, 'i', n), now() - interval '1 minute'
                FROM u, s, generate_series(1, %(per_user)s) n
                RETURNING id, user_id, seq, created_at
            )
            INSERT INTO notifications_pendingevent (event_id, user_id, seq, created_at, publish_attempts, last_error)
            SELECT id, user_id, seq, created_at, 0, '' FROM written
            """,
            {"users": len(users), "per_user": per_user},
        )
        conn.execute(
            "INSERT INTO notifications_stream (user_id, last_seq, acked_seq, pruned_seq) "
            "SELECT user_id, MAX(seq), 0, 0 FROM notifications_event GROUP BY user_id "
            "ON CONFLICT (user_id) DO UPDATE SET last_seq = EXCLUDED.last_seq"
        )
        pending = conn.execute("SELECT count(*) FROM notifications_pendingevent").fetchone()
    full, _output = timed()
    with psycopg.connect(env["DATABASE_URL"], autocommit=True) as conn:
        left = conn.execute("SELECT count(*) FROM notifications_pendingevent").fetchone()
    published = int(pending[0]) - int(left[0])  # type: ignore[index]
    seconds = full - empty
    return {
        "events": published,
        "left_pending": int(left[0]),  # type: ignore[index]
        "seconds": round(seconds, 3),
        # Below a tenth of a second the start-up's own variation swamps it (the quick run): not a rate.
        "per_second": round(published / seconds, 1) if seconds >= DRAIN_MIN_TIMED_SECONDS else None,
    }


def ratio(ours: float | None, raw: float | None) -> str:
    return f"{ours / raw:.2f}" if ours and raw else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=str(BENCH / "results.json"))
    parser.add_argument("--check", action="store_true", help="Exit 1 if any run of ours lost, duplicated or reordered.")
    parser.add_argument("--only", default=",".join(PARTS), help=f"Comma-separated parts to run, of {', '.join(PARTS)}.")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=N", help="Change one figure of the plan.")
    args = parser.parse_args()
    plan = dataclasses.replace(
        QUICK if args.quick else FULL, **{k: type(getattr(FULL, k))(v) for k, v in (s.split("=") for s in args.set)}
    )
    parts = set(args.only.split(","))
    raise_file_limit()
    results: dict[str, Any] = {
        "plan": plan.__dict__,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "system": platform.platform()},
    }
    machine = Machine(workdir=Path(tempfile.mkdtemp(prefix="bench-")))
    try:
        env = setup(machine, plan.accounts)
        minted: list[tuple[int, str | None]] = list(tokens(env, plan.accounts))
        anonymous: list[tuple[int, str | None]] = [(user, None) for user, _ in minted]
        results["raw"], results["ours_pubsub"] = {}, {}

        def runs(
            mode: str, url: str, users: list[tuple[int, str | None]], server_pid: int, layer: str = "pubsub"
        ) -> dict[str, Any]:
            def one(rate: float, who: list[tuple[int, str | None]]) -> dict[str, Any]:
                return load(
                    machine, env, mode=mode, url=url, users=who, rate=rate, seconds=plan.load_seconds,
                    server_pid=server_pid, layer=layer,
                )  # fmt: skip

            figures = {"max": one(0, users)}
            for rate in plan.rates:
                figures[f"at_{rate}"] = one(rate, users)
            # A few users flat out: many events of one user in flight at once, published out of order.
            figures["few_users"] = one(0, users[:FEW_USERS])
            return figures

        def start_raw_on(port: int) -> tuple[subprocess.Popen[Any], str]:
            return start_raw(machine, env, port)

        def start_ours_on(port: int) -> tuple[subprocess.Popen[Any], str]:
            return start_ours(machine, env, "pubsub", port)

        if "load" in parts:
            raw, raw_url = start_raw(machine, env)
            results["raw"] = runs("raw", raw_url, anonymous[: plan.users], raw.pid)
            machine.stop(raw)
        if "connections" in parts:
            results["raw"].update(connection_runs(machine, env, plan, start_raw_on, anonymous, mode="raw"))
        if "load" in parts:
            for layer in ("pubsub", "core"):
                server, url = start_ours(machine, env, layer)
                results[f"ours_{layer}"] = runs("ours", url, minted[: plan.users], server.pid, layer)
                machine.stop(server)
        if "connections" in parts:
            results["ours_pubsub"].update(connection_runs(machine, env, plan, start_ours_on, minted, mode="ours"))
        if "drain" in parts:
            results["drain"] = drain(env, plan.drain_events)
    finally:
        machine.close()
        shutil.rmtree(machine.workdir, ignore_errors=True)

    Path(args.json).write_text(json.dumps(results, indent=2))
    report(results, plan)
    print(f"\nAll figures: {args.json}")
    if args.check:
        bad = [
            f"{name}.{run}"
            for name in ("ours_pubsub", "ours_core")
            for run, figures in results.get(name, {}).items()
            if run in CHECKED
            and (wrong(figures) or figures["logged"] != figures["sent"] or figures.get("all_live_seconds", 0) is None)
        ]
        if results["ours_pubsub"].get("connect_storm", {}).get("seconds", 0) is None:
            bad.append("ours_pubsub.connect_storm")
        if bad:
            raise SystemExit(
                f"Lost, unexpected, duplicated, out-of-order or unpublished events, or clients not in, in: "
                f"{', '.join(bad)}"
            )


def connection_runs(
    machine: Machine, env: dict[str, str], plan: Plan, start: Start, users: list[tuple[int, str | None]], mode: str
) -> dict[str, Any]:
    """The idle sockets, their memory at scale, and the connect and reconnect storms, on one kind of server."""
    idle_figures = idle(
        machine, start, users[: plan.idle_connections], users[plan.idle_connections : plan.scale_connections],
        seconds=plan.idle_seconds, scale_seconds=plan.scale_idle_seconds,
        database=machine.database if mode == "ours" else None,
    )  # fmt: skip
    storm_figures = storms(
        machine, env, start, users[: plan.storm_connections], mode=mode,
        emit_users=plan.storm_emit_users, rate=plan.storm_rate, warm_seconds=plan.storm_warm_seconds,
        live_limit_seconds=plan.storm_live_limit_seconds,
    )  # fmt: skip
    return {"idle": idle_figures, **storm_figures}


def report(results: dict[str, Any], plan: Plan) -> None:
    ours, core, raw = results["ours_pubsub"], results.get("ours_core", {}), results["raw"]
    print(f"\n{plan.users} users, {plan.load_seconds:g} s per run, {results['machine']['cpus']} CPUs\n")
    print(f"{'':44} {'ours (pubsub)':>14} {'ours (core)':>12} {'raw':>10} {'ours/raw':>9}")

    def row(label: str, key: str, pick: Any) -> None:
        values = [pick(run[key]) if key in run else None for run in (ours, core, raw)]
        shown = [
            (f"{v:,.2f}" if abs(v) < 10 else f"{v:,.1f}")
            if isinstance(v, float)
            else (f"{v:,}" if isinstance(v, int) else "-")
            for v in values
        ]
        print(f"{label:44} {shown[0]:>14} {shown[1]:>12} {shown[2]:>10} {ratio(values[0], values[2]):>9}")

    row("delivered events/s, flat out", "max", lambda r: r["delivered_rate"])
    row("  lost+unexpected+duplicated+out of order+pending", "max", wrong)
    row("  p99 latency ms, flat out", "max", lambda r: r["latency_ms"]["p99"])
    row("  producer CPU µs per event, flat out", "max", lambda r: r.get("producer_cpu_us_per_event"))
    row("  server CPU µs per event, flat out", "max", lambda r: r.get("server_cpu_us_per_event"))
    for name in ("postgres", "redis", "clients"):
        row(f"  {name} CPU µs per event, flat out", "max", lambda r, name=name: r.get(f"{name}_cpu_us_per_event"))
    for rate in plan.rates:
        row(f"p50 latency ms at {rate}/s", f"at_{rate}", lambda r: r["latency_ms"]["p50"])
        row(f"p99 latency ms at {rate}/s", f"at_{rate}", lambda r: r["latency_ms"]["p99"])
        row(f"max latency ms at {rate}/s", f"at_{rate}", lambda r: r["latency_ms"]["max"])
        row("  p50 ms until the producer's call returned", f"at_{rate}", lambda r: r.get("ack_ms", {}).get("p50"))
        row("  p99 ms until the producer's call returned", f"at_{rate}", lambda r: r.get("ack_ms", {}).get("p99"))
        row(f"  emitted/s (asked {rate})", f"at_{rate}", lambda r: r["emit_rate"])
        row("  lost+unexpected+duplicated+out of order+pending", f"at_{rate}", wrong)
    row(f"delivered events/s, {FEW_USERS} users flat out", "few_users", lambda r: r["delivered_rate"])
    row("  lost+unexpected+duplicated+out of order+pending", "few_users", wrong)
    connection_rows(row, plan)
    if drain := results.get("drain"):
        label = "drain_events: pending events published/s"
        rate = "too quick to time" if drain["per_second"] is None else f"{drain['per_second']:,.1f}"
        print(f"{label:44} {rate:>14}   ({drain['events']:,} in {drain['seconds']} s)")


if __name__ == "__main__":
    main()
