"""Time the admin's pages on a large event log in PostgreSQL.

    .venv/bin/python bench/admin_pages.py --events 1000000

Creates a scratch database (``admin_bench`` on the server of ``DATABASE_URL``,
default the local PostgreSQL), migrates it, fills it in SQL with generated
users, runs and events, then requests each admin page as a superuser through
Django's test client and prints the median time of ``--repeat`` requests,
the number of queries and the slowest one. For scale it also times what the
pages avoid: a full ``COUNT(*)`` and a ``SELECT DISTINCT agent``. The
database is dropped at the end unless ``--keep``.
"""

import argparse
import os
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BENCH_DB = "admin_bench"
RUN_EVENTS = [
    "agent_started",
    "agent_thinking",
    "tool_executing",
    "tool_completed",
    "agent_thinking",
    "tool_executing",
    "tool_completed",
    "agent_completed",
]


def scratch_database(base_url: str) -> str:
    """(Re)create the scratch database and return its URL."""
    import psycopg

    parts = urlsplit(base_url)
    with psycopg.connect(urlunsplit(parts._replace(path="/postgres")), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {BENCH_DB}")
        conn.execute(f"CREATE DATABASE {BENCH_DB}")
    return urlunsplit(parts._replace(path=f"/{BENCH_DB}"))


def drop_database(base_url: str) -> None:
    import psycopg

    parts = urlsplit(base_url)
    with psycopg.connect(urlunsplit(parts._replace(path="/postgres")), autocommit=True) as conn:
        # FORCE: the connection pool's idle connections outlive ``close_all``.
        conn.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")


def fill(*, events: int, users: int) -> None:
    """Generate users, events (runs of 8; 1 in 50 fails; 1 in 100 is a rare agent) and runs."""
    from django.db import connection

    per_user = events // users
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO auth_user (password, is_superuser, username, first_name, last_name, email,
                                   is_staff, is_active, date_joined)
            SELECT '!', false, 'user' || i, '', '', '', false, true, now() FROM generate_series(1, %s) i
            """,
            [users],
        )
        cursor.execute("SELECT min(id) FROM auth_user WHERE username LIKE 'user%%'")
        first_user = cursor.fetchone()[0]
        # Event n belongs to user (n % users) with seq n / users + 1; a run is 8 seqs.
        cursor.execute(
            """
            WITH raw AS (
                SELECT n, %(first)s + (n %% %(users)s) AS user_id, n / %(users)s AS k
                FROM generate_series(0, %(events)s - 1) n
            ), shaped AS (
                SELECT n, user_id, k + 1 AS seq, k / 8 AS run_key, k %% 8 AS pos,
                       now() - ((%(events)s - n) * interval '5 seconds') AS created_at
                FROM raw
            )
            , written AS (
            INSERT INTO notifications_event (id, user_id, seq, event, run_id, agent, data, created_at)
            SELECT gen_random_uuid(), user_id, seq,
                   CASE WHEN pos = 7 AND run_key %% 50 = 0 THEN 'agent_error' ELSE (%(names)s::text[])[pos + 1] END,
                   md5(user_id || '-' || run_key)::uuid,
                   CASE WHEN run_key %% 100 = 0 THEN 'rare'
                        ELSE (ARRAY['demo', 'calculator', 'planner', 'researcher'])[run_key %% 4 + 1] END,
                   '{"thought": "Counting the words."}'::jsonb, created_at
            FROM shaped
            RETURNING id, user_id, seq, created_at
            )
            -- One event in 2,000 still pending (one in 10,000 of them stuck).
            INSERT INTO notifications_pendingevent (event_id, user_id, seq, created_at, publish_attempts, last_error)
            SELECT w.id, w.user_id, w.seq, w.created_at,
                   CASE WHEN s.n %% 10000 = 0 THEN 12 ELSE 1 END, 'ConnectionError: Redis is down'
            FROM written w JOIN shaped s ON s.user_id = w.user_id AND s.seq = w.seq
            WHERE s.n %% 2000 = 0
            """,
            {"first": first_user, "users": users, "events": events, "names": RUN_EVENTS},
        )
        cursor.execute(
            """
            INSERT INTO notifications_stream (user_id, last_seq, acked_seq, pruned_seq)
            SELECT id, %s, %s, 0 FROM auth_user WHERE username LIKE 'user%%'
            """,
            [per_user, max(0, per_user - 3)],
        )
        cursor.execute(
            """
            INSERT INTO agents_agentrun (id, user_id, agent, input, status, timeout_seconds, result, error,
                                         created_at, started_at, finished_at)
            SELECT e.run_id, e.user_id, e.agent, '{}'::jsonb,
                   CASE WHEN last.event = 'agent_error' THEN 'failed' ELSE 'completed' END, 60, NULL, NULL,
                   e.created_at, e.created_at, e.created_at + interval '1500 ms'
            FROM notifications_event e
            JOIN LATERAL (SELECT event FROM notifications_event l
                          WHERE l.run_id = e.run_id ORDER BY l.seq DESC LIMIT 1) last ON true
            WHERE e.event = 'agent_started'
            """
        )
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")


def timed_sql(sql: str) -> float:
    from django.db import connection

    with connection.cursor() as cursor:
        started = time.perf_counter()
        cursor.execute(sql)
        cursor.fetchall()
        return (time.perf_counter() - started) * 1000


def measure(client: Any, url: str, repeat: int) -> tuple[float, int, float, str]:
    """Median ms of ``repeat`` requests, then the query count and slowest query of one more."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        response = client.get(url)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, (url, response.status_code)
    with CaptureQueriesContext(connection) as captured:
        client.get(url)
    slowest = max(captured.captured_queries, key=lambda query: float(query["time"]))
    return statistics.median(times), len(captured.captured_queries), float(slowest["time"]) * 1000, slowest["sql"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="Keep the scratch database.")
    parser.add_argument("--show-sql", action="store_true", help="Print each page's slowest query.")
    args = parser.parse_args()

    base_url = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    if not base_url.startswith("postgres"):
        raise SystemExit("The benchmark runs on PostgreSQL: set DATABASE_URL to a postgres:// URL.")
    os.environ["DATABASE_URL"] = scratch_database(base_url)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("DB_STATEMENT_TIMEOUT_MS", "600000")
    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.test import Client
    from django.utils import timezone

    from agents.models import AgentRun
    from notifications.models import Event

    settings.ALLOWED_HOSTS = ["*"]
    try:
        call_command("migrate", verbosity=0)
        started = time.perf_counter()
        fill(events=args.events, users=args.users)
        print(f"Filled {args.events:,} events, {args.users:,} users in {time.perf_counter() - started:.1f} s")
        admin = get_user_model().objects.create_superuser("bench-admin", password=None)
        client = Client()
        client.force_login(admin)

        some = Event.objects.filter(user__username="user7").order_by("-seq").first()
        assert some is not None
        week_ago = quote(str((timezone.now() - timedelta(days=7)).replace(hour=0, minute=0, second=0, microsecond=0)))
        pages = [
            ("events", "/admin/notifications/event/"),
            ("events, page 50", "/admin/notifications/event/?p=50"),
            ("events, pending", "/admin/notifications/event/?state=pending"),
            ("events, stuck", "/admin/notifications/event/?state=stuck"),
            ("events, published", "/admin/notifications/event/?state=published"),
            ("events, agent_error", "/admin/notifications/event/?event__exact=agent_error"),
            ("events, agent demo", "/admin/notifications/event/?agent=demo"),
            ("events, agent rare (1%)", "/admin/notifications/event/?agent=rare"),
            ("events, past 7 days", f"/admin/notifications/event/?created_at__gte={week_ago}"),
            ("events, search username", "/admin/notifications/event/?q=user7"),
            ("events, search run id", f"/admin/notifications/event/?q={some.run_id}"),
            ("runs", "/admin/agents/agentrun/"),
            ("runs, failed", "/admin/agents/agentrun/?status__exact=failed"),
            ("runs, agent rare", "/admin/agents/agentrun/?agent=rare"),
            ("runs, search username", "/admin/agents/agentrun/?q=user7"),
            ("run page with timeline", f"/admin/agents/agentrun/{some.run_id}/change/"),
        ]
        print(f"\n{Event.objects.count():,} events, {AgentRun.objects.count():,} runs; median of {args.repeat}\n")
        print(f"{'page':28} {'median ms':>10} {'queries':>8} {'slowest query ms':>17}")
        for name, url in pages:
            median, count, slowest, sql = measure(client, url, args.repeat)
            print(f"{name:28} {median:10.1f} {count:8d} {slowest:17.1f}")
            if args.show_sql:
                print(f"    {sql[:300]}")
        full_count = statistics.median(timed_sql("SELECT COUNT(*) FROM notifications_event") for _ in range(3))
        distinct = statistics.median(timed_sql("SELECT DISTINCT agent FROM notifications_event") for _ in range(3))
        print("\nWhat the pages avoid:")
        print(f"{'SELECT COUNT(*) (whole table)':40} {full_count:10.1f} ms")
        print(f"{'SELECT DISTINCT agent (whole table)':40} {distinct:10.1f} ms")
    finally:
        from django.db import connections

        connections.close_all()
        if not args.keep:
            drop_database(base_url)


if __name__ == "__main__":
    main()
