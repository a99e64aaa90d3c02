"""What every benchmark run stands on: its processes, its Redis and database, its servers.

``Machine`` owns every process a run starts and the database it made, and
stops them all at the end. The servers are started on a port of their own
(or a given one, to restart on the same port), and every wait is bounded.
"""

import os
import resource
import secrets
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BENCH = ROOT / "bench"
PYTHON = sys.executable
PG_URL = os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432/postgres")
SECRET = secrets.token_urlsafe(50)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def raise_file_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def listen_overflows() -> int:
    """Connections this machine's kernel dropped so far because a listen queue was full (TcpExt ListenOverflows).

    Machine-wide: anything else listening counts too. A dropped handshake is
    retried by the client's kernel after 1 s, then 3, 7, 15 s.
    """
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=True):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split(), values.split(), strict=True))["ListenOverflows"])
    raise RuntimeError("no TcpExt ListenOverflows in /proc/net/netstat")


def wait_line(process: subprocess.Popen[str], prefix: str, timeout: float) -> str:
    """Read the child's stdout until a line starting with ``prefix``; every wait is bounded."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([process.stdout], [], [], remaining)
        if not ready:
            break
        line = process.stdout.readline()
        if line.startswith(prefix):
            return line.strip()
        if not line:
            break
    raise RuntimeError(f"{process.args!r} gave no {prefix!r} line within {timeout}s (exit {process.poll()})")


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port} after {timeout}s")


@dataclass
class Machine:
    """What one run starts, to stop it all at the end."""

    workdir: Path
    processes: list[subprocess.Popen[Any]] = field(default_factory=list)
    database: str = ""
    redis_pid: int = 0

    def start(self, command: list[str], env: dict[str, str] | None = None, **kwargs: Any) -> subprocess.Popen[Any]:
        if "stdout" not in kwargs:  # servers: their output goes to a log file in the work directory
            log = open(self.workdir / f"{Path(command[1]).stem}-{len(self.processes)}.log", "wb")
            kwargs.update(stdout=log, stderr=subprocess.STDOUT)
        process = subprocess.Popen(
            command, cwd=ROOT, env={**os.environ, **(env or {})}, preexec_fn=raise_file_limit, **kwargs
        )
        self.processes.append(process)
        return process

    def stop(self, process: subprocess.Popen[Any]) -> None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)

    def close(self) -> None:
        for process in reversed(self.processes):
            self.stop(process)
        if self.database:
            import psycopg

            with psycopg.connect(PG_URL, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {self.database} WITH (FORCE)")


def setup(machine: Machine, users: int) -> dict[str, str]:
    """Start Redis and make the database; return the environment every process of ours gets."""
    import psycopg

    redis_port = free_port()
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (Debian: apt-get install redis-server).")
    machine.redis_pid = machine.start(
        [binary, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--maxclients", "30000", "--dir", str(machine.workdir)],
    ).pid  # fmt: skip
    wait_port(redis_port)
    machine.database = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f"CREATE DATABASE {machine.database}")
    database_url = urlunsplit(urlsplit(PG_URL)._replace(path=f"/{machine.database}"))
    env = {
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DJANGO_DEBUG": "false",
        "DJANGO_HTTPS": "false",  # plain HTTP on loopback
        "DJANGO_SECRET_KEY": SECRET,
        "DJANGO_STATIC_ROOT": str(machine.workdir / "static"),
        "DATABASE_URL": database_url,
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "LOG_LEVEL": "WARNING",
        "JWT_ACCESS_LIFETIME_SECONDS": "7200",
        "WS_HEARTBEAT_SECONDS": "25",
        "PYTHONUNBUFFERED": "1",
    }
    (machine.workdir / "static").mkdir()
    subprocess.run([PYTHON, "manage.py", "migrate", "-v0"], cwd=ROOT, env={**os.environ, **env}, check=True)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO auth_user (password, is_superuser, username, first_name, last_name, email, is_staff,"
            " is_active, date_joined) SELECT '!', false, 'bench' || i, '', '', '', false, true, now()"
            " FROM generate_series(1, %s) i",
            [users],
        )
    return env


def tokens(env: dict[str, str], count: int) -> list[tuple[int, str]]:
    """Mint access tokens for the first ``count`` users, signed with the server's key."""
    os.environ.update(env)
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from rest_framework_simplejwt.tokens import AccessToken

    users = list(get_user_model()._default_manager.order_by("id")[:count])
    return [(int(user.pk), str(AccessToken.for_user(user))) for user in users]


def start_ours(
    machine: Machine, env: dict[str, str], layer: str = "pubsub", port: int = 0
) -> tuple[subprocess.Popen[Any], str]:
    port = port or free_port()
    server = machine.start(
        [PYTHON, "-m", "config.server", "-b", "127.0.0.1", "-p", str(port)], {**env, "CHANNEL_LAYER": layer}
    )
    wait_port(port)
    return server, f"ws://127.0.0.1:{port}/ws/notifications/"


def start_raw(machine: Machine, env: dict[str, str], port: int = 0) -> tuple[subprocess.Popen[Any], str]:
    port = port or free_port()
    server = machine.start(
        [PYTHON, str(BENCH / "raw_forwarder.py"), "--port", str(port), "--redis", env["REDIS_URL"]],
        stdout=subprocess.PIPE,
        text=True,
    )
    wait_line(server, "READY", 30)
    return server, f"ws://127.0.0.1:{port}/"


def cpu_seconds(pid: int) -> float:
    """CPU time (user and system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def database_processes(database: str) -> list[int]:
    """PostgreSQL's processes that work for ``database``: its backends and autovacuum, and the WAL writer.

    Backends show their database in their title; the WAL writer serves every
    database of the server (nothing else writes much while a run is measured).
    """
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            title = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if title.startswith("postgres: ") and (f" {database} " in title or "walwriter" in title):
            pids.append(int(proc.name))
    return pids


@dataclass
class CpuSampler:
    """CPU seconds used by groups of processes, sampled every 0.1 s in a thread of its own.

    A group is a callable returning its pids now; a process that starts
    meanwhile counts from zero, one that ends counts to its last sample.
    """

    groups: dict[str, Any]
    samples: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    _members: dict[str, set[int]] = field(default_factory=dict)
    _first: dict[int, float] = field(default_factory=dict)
    _last: dict[int, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._sample(first=True)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def used(self, until: float) -> dict[str, float]:
        """Each group's CPU seconds from the start to the first sample at or after ``until``."""
        at = next((totals for when, totals in self.samples if when >= until), self.samples[-1][1])
        return dict(at)

    def _loop(self) -> None:
        while not self._stop.wait(0.1):
            self._sample()

    def _sample(self, first: bool = False) -> None:
        totals = {}
        for name, pids in self.groups.items():
            members = self._members.setdefault(name, set())
            members.update(pids())
            total = 0.0
            for pid in members:
                try:
                    cpu = cpu_seconds(pid)
                except OSError:  # ended: it counts to its last sample
                    cpu = self._last.get(pid, 0.0)
                if first:
                    self._first.setdefault(pid, cpu)
                self._last[pid] = cpu
                total += cpu - self._first.get(pid, 0.0)
            totals[name] = total
        self.samples.append((time.time(), totals))


def expected_seqs(env: dict[str, str], *, mode: str, tag: str, sent: dict[str, Any]) -> tuple[dict[int, set[int]], int]:
    """What each user should receive: this run's events in the log (ours) or 1..n (raw); and how many are pending."""
    if mode == "raw":
        return {int(user): set(range(1, n + 1)) for user, n in sent["per_user"].items()}, 0
    import psycopg

    with psycopg.connect(env["DATABASE_URL"]) as conn:
        rows = conn.execute(
            "SELECT e.user_id, array_agg(e.seq), count(p.event_id) FROM notifications_event e "
            "LEFT JOIN notifications_pendingevent p ON p.event_id = e.id WHERE e.data->>'r' = %s GROUP BY e.user_id",
            [tag],
        ).fetchall()
    return {int(user): set(seqs) for user, seqs, _ in rows}, sum(int(left) for *_, left in rows)


def events_judged(
    env: dict[str, str], *, mode: str, tag: str, sent: dict[str, Any], received: dict[str, Any]
) -> dict[str, Any]:
    """Count, per user, what should have arrived and did not, what arrived and should not have, and the rest.

    ``received`` is a clients' summary; its per-user seqs are taken out of it
    (``lost_seqs`` keeps, per user, the seqs that never came).
    """
    got = {int(user): set(seqs) for user, seqs in received.pop("seqs").items()}
    expected, pending = expected_seqs(env, mode=mode, tag=tag, sent=sent)
    lost_seqs = {user: seqs - got.get(user, set()) for user, seqs in expected.items()}
    return {
        "sent": sent["sent"],
        "logged": sum(len(seqs) for seqs in expected.values()),
        "left_pending": pending,
        "received": received["received"],
        "distinct": sum(len(seqs) for seqs in got.values()),
        "lost": sum(len(seqs) for seqs in lost_seqs.values()),
        "unexpected": sum(len(seqs - expected.get(user, set())) for user, seqs in got.items()),
        "duplicates": received["duplicates"],
        "out_of_order": received["out_of_order"],
        "latency_ms": received["latency_ms"],
        "lost_seqs": lost_seqs,
    }


def wrong(figures: dict[str, Any]) -> int:
    """Everything a run got wrong: lost, unexpected, duplicated, out-of-order and still-pending events."""
    keys = ("lost", "unexpected", "duplicates", "out_of_order", "left_pending")
    return int(sum(figures[key] for key in keys))
