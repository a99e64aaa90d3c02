"""The group writer's batch statement alone: PostgreSQL's CPU and the round trip per batch size.

    .venv/bin/python bench/write_statement.py                      # batches of 1, 8, 32 and 128
    .venv/bin/python bench/write_statement.py --sizes 32 --events 64000

Creates a scratch database (``write_statement_bench`` on the local server,
``BENCH_PG_URL``), migrates it and makes ``--users`` users. Then, for each
batch size, it writes ``--events`` events in batches through
``notifications.pgwrite``'s own statement on one connection, each batch
also deleting the previous batch's outbox rows, as under load (the
published marks the next statement carries). It prints, per size, the
server process's CPU per event (user and system, from ``/proc``) and the
median and mean time of a batch's ``execute``. No Redis, no server, no
event loop: what one batch costs the database, and how that splits
between a batch's fixed cost and each event's.
"""

import argparse
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PG_URL = os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432/postgres")
BENCH_DB = "write_statement_bench"


def database(base_url: str, *, create: bool) -> str:
    """Drop the scratch database, and (re)create it if ``create``; return its URL."""
    import psycopg

    parts = urlsplit(base_url)
    with psycopg.connect(urlunsplit(parts._replace(path="/postgres")), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")
        if create:
            conn.execute(f"CREATE DATABASE {BENCH_DB}")
    return urlunsplit(parts._replace(path=f"/{BENCH_DB}"))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(url: str, *, size: int, events: int, users: int) -> dict[str, float]:
    import psycopg
    from django.utils import timezone

    from notifications import pgwrite
    from notifications.groupcommit import EventFields
    from notifications.ids import uuid7

    run_id, user, published = uuid.uuid4(), 0, []
    seconds = []
    with psycopg.connect(url, autocommit=True, prepare_threshold=5) as conn:
        pid = conn.info.backend_pid
        started = cpu_seconds(pid)
        for index in range(events // size):
            batch = []
            for _ in range(size):
                user = user % users + 1
                data = {"t": time.time(), "i": index, "r": "bench"}
                batch.append(EventFields(user_id=user, event="agent_thinking", run_id=run_id, agent="bench", data=data))
            ids = [uuid7() for _ in batch]
            params = {
                **pgwrite._insert_params(batch, ids=ids, now=timezone.now()),
                "published": pgwrite._uuid_array(published),
            }
            began = time.perf_counter()
            conn.execute(pgwrite._INSERT, params).fetchall()
            seconds.append(time.perf_counter() - began)
            published = ids
        used = cpu_seconds(pid) - started
    written = len(seconds) * size
    return {
        "size": size,
        "server_cpu_us_per_event": round(used / written * 1e6, 1),
        "execute_ms_p50": round(statistics.median(seconds) * 1000, 3),
        "execute_ms_mean": round(statistics.fmean(seconds) * 1000, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1,8,32,128", help="Comma-separated batch sizes.")
    parser.add_argument("--events", type=int, default=32_000, help="Events per batch size.")
    parser.add_argument("--users", type=int, default=1000)
    args = parser.parse_args()
    url = database(PG_URL, create=True)
    os.environ.update(DATABASE_URL=url, DJANGO_SETTINGS_MODULE="config.settings")
    import django
    import psycopg
    from django.core.management import call_command

    django.setup()
    try:
        call_command("migrate", verbosity=0)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO auth_user (password, is_superuser, username, first_name, last_name, email, is_staff,"
                " is_active, date_joined) SELECT '!', false, 'bench' || i, '', '', '', false, true, now()"
                " FROM generate_series(1, %s) i",
                [args.users],
            )
            conn.execute(
                "INSERT INTO notifications_stream (user_id, last_seq, acked_seq, pruned_seq)"
                " SELECT id, 0, 0, 0 FROM auth_user"
            )
        print(f"{'batch':>6} {'server CPU µs/event':>20} {'execute ms p50':>15} {'mean':>8}")
        for size in (int(size) for size in args.sizes.split(",")):
            row = measure(url, size=size, events=args.events, users=args.users)
            print(
                f"{row['size']:>6} {row['server_cpu_us_per_event']:>20} {row['execute_ms_p50']:>15}"
                f" {row['execute_ms_mean']:>8}",
                flush=True,
            )
    finally:
        from django.db import connections

        connections.close_all()
        database(PG_URL, create=False)


if __name__ == "__main__":
    main()
