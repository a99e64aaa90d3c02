"""Compare checkouts of the product on one load run, alternating, with the raw forwarder in every round.

    git worktree add /tmp/before <commit>
    .venv/bin/python bench/ab.py --rounds 3 /tmp/before .       # flat out, 10 s per run
    .venv/bin/python bench/ab.py --rate 500 --rounds 3 /tmp/before .

The machine is shared and its speed wanders between runs by more than most
changes are worth, so one ``make bench`` before and one after cannot tell a
10% change. This starts one Redis, one database (migrated by the first
checkout; the checkouts must share a schema), the raw forwarder and a
daphne per checkout, then runs the raw forwarder and each checkout in turn,
``--rounds`` times, through ``load.load`` (this checkout's harness; the
servers and producers are each checkout's own). Per run it prints the
delivered rate, its ratio to the raw forwarder's in the same round, the
producer's acknowledgement and the clients' latency (p50/p99 ms), CPU per
event, and whether any event was lost, duplicated, out of order or left
pending.
"""

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import harness
import load as load_run
from harness import Machine, setup, start_ours, start_raw, tokens, wrong


def use(root: Path) -> None:
    """Start processes from ``root``'s code: its server, its producer."""
    harness.ROOT = load_run.ROOT = root
    load_run.BENCH = root / "bench"


def summary(result: dict[str, Any], raw_rate: float) -> str:
    cpu = {key.removesuffix("_cpu_us_per_event"): value for key, value in result.items() if "cpu_us" in key}
    return json.dumps(
        {
            "delivered_rate": result["delivered_rate"],
            "of_raw": round(result["delivered_rate"] / raw_rate, 3),
            "ack_ms": [result["ack_ms"]["p50"], result["ack_ms"]["p99"]],
            "latency_ms": [result["latency_ms"]["p50"], result["latency_ms"]["p99"]],
            "cpu_us_per_event": cpu,
            "wrong": wrong(result),
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkouts", nargs="+", type=Path, help="Directories of checkouts to compare.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=0.0, help="Events/s; 0: flat out.")
    parser.add_argument("--users", type=int, default=1000)
    args = parser.parse_args()
    here = harness.ROOT
    checkouts = [checkout.resolve() for checkout in args.checkouts]
    machine = Machine(workdir=Path(tempfile.mkdtemp(prefix="bench-ab-")))
    try:
        use(checkouts[0])
        env = setup(machine, args.users)
        minted = tokens(env, args.users)
        use(here)
        raw, raw_url = start_raw(machine, env)
        servers = []
        for checkout in checkouts:
            use(checkout)
            servers.append(start_ours(machine, env, "pubsub"))
        for round_number in range(1, args.rounds + 1):
            use(here)
            anonymous = [(user, None) for user, _ in minted]
            raw_result = load_run.load(
                machine, env, mode="raw", url=raw_url, users=anonymous, rate=args.rate, seconds=args.seconds,
                server_pid=raw.pid,
            )  # fmt: skip
            print(f"round {round_number} raw {raw_result['delivered_rate']}", flush=True)
            for checkout, (server, url) in zip(checkouts, servers, strict=True):
                use(checkout)
                result = load_run.load(
                    machine, env, mode="ours", url=url, users=minted, rate=args.rate, seconds=args.seconds,
                    server_pid=server.pid,
                )  # fmt: skip
                print(f"round {round_number} {checkout} {summary(result, raw_result['delivered_rate'])}", flush=True)
    finally:
        machine.close()


if __name__ == "__main__":
    main()
