"""Real processes for tests: throwaway redis-server and PostgreSQL, and a daphne running this project."""

import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 10.0
POLL_SECONDS = 0.02

# What a clean server log must not contain.
LOG_PROBLEMS = re.compile(r"Traceback|\bERROR\b|\bCRITICAL\b|Task was destroyed|never retrieved|Exception inside")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    headers: Message
    body: bytes
    seconds: float  # How long the answer took, request sent to body read.

    def json(self) -> Any:
        return json.loads(self.body)


def http_request(
    url: str,
    *,
    body: Any = None,
    data: bytes | None = None,
    token: str | None = None,
    method: str | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> HttpAnswer:
    """Make one HTTP request, with ``body`` as JSON or ``data`` as it is; any status is an answer."""
    sent = {"Content-Type": "application/json", **(headers or {})}
    if token:
        sent["Authorization"] = f"Bearer {token}"
    payload = json.dumps(body).encode() if body is not None else data
    request = urllib.request.Request(url, data=payload, headers=sent, method=method)
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return HttpAnswer(response.status, response.headers, response.read(), time.monotonic() - started)
    except urllib.error.HTTPError as error:
        with error:
            return HttpAnswer(error.code, error.headers, error.read(), time.monotonic() - started)


def wait_for(predicate: Callable[[], bool], *, timeout: float, what: str) -> None:
    """Poll ``predicate`` until true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"Timed out after {timeout}s waiting for {what}")
        time.sleep(POLL_SECONDS)


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def database_url(settings_dict: dict[str, Any]) -> str:
    engine = settings_dict["ENGINE"]
    if engine.endswith("sqlite3"):
        return f"sqlite:///{settings_dict['NAME']}"
    if engine.endswith("postgresql"):
        user = quote(settings_dict.get("USER") or "")
        password = quote(settings_dict.get("PASSWORD") or "")
        auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
        host = settings_dict.get("HOST") or "127.0.0.1"
        port = settings_dict.get("PORT") or 5432
        return f"postgres://{auth}{host}:{port}/{settings_dict['NAME']}"
    raise ValueError(f"No URL form for database engine {engine}")


class RedisServer:
    def __init__(self, *, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                "--maxclients",
                "20000",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self._ready, timeout=START_TIMEOUT_SECONDS, what=f"redis-server on port {self.port}")

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Kill the server (its data goes with it, as in a crash)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.kill()
        self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
        wait_for(lambda: not port_open(self.port), timeout=STOP_TIMEOUT_SECONDS, what="Redis port to close")

    def restart(self) -> None:
        self.stop()
        self.start()


class ServiceProcess:
    """A long-running process of this project, its output in a log file (never a pipe that could fill)."""

    name = "the process"

    def __init__(self, *, env: dict[str, str], log_path: Path, args: tuple[str, ...] = ()) -> None:
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
        self.args = args
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command(), cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        wait_for(self._started, timeout=START_TIMEOUT_SECONDS, what=f"{self.name} to start")

    def _started(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log()}")
        return self.ready()

    def signal(self, signum: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float = STOP_TIMEOUT_SECONDS) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within the bound."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT_SECONDS)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_size(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def assert_log_clean(self, *, since: int = 0) -> None:
        text = self.log()[since:]
        problems = [line for line in text.splitlines() if LOG_PROBLEMS.search(line)]
        assert not problems, f"{self.name} logged problems:\n" + text


class DaphneServer(ServiceProcess):
    """This project's server (``python -m config.server``) as a subprocess."""

    name = "daphne"

    def __init__(self, *, env: dict[str, str], log_path: Path, args: tuple[str, ...] = ()) -> None:
        super().__init__(env=env, log_path=log_path, args=args)
        self.port = free_port()

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/notifications/"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "config.server", "-b", "127.0.0.1", "-p", str(self.port), *self.args]

    def ready(self) -> bool:
        return port_open(self.port)

    def restart(self) -> None:
        """Start again on the same port (after a stop or a signal), as a redeploy would."""
        if self.running():
            self.stop()
        wait_for(lambda: not port_open(self.port), timeout=STOP_TIMEOUT_SECONDS, what="daphne's port to close")
        self.start()


class WorkerProcess(ServiceProcess):
    """``manage.py run_worker`` as a subprocess, executing runs (AGENT_EXECUTION=worker)."""

    name = "run_worker"

    def __init__(self, *, env: dict[str, str], log_path: Path, args: tuple[str, ...] = ()) -> None:
        super().__init__(env={"AGENT_EXECUTION": "worker", **env}, log_path=log_path, args=args)

    def command(self) -> list[str]:
        return [sys.executable, "manage.py", "run_worker", *self.args]

    def ready(self) -> bool:
        return "Worker started" in self.log()

    def executed(self) -> set[str]:
        """The ids of the runs this worker started executing (from its log)."""
        return set(re.findall(r"executing run ([0-9a-f-]{36})", self.log()))

    def wait_log(self, text: str, *, timeout: float = 20.0) -> None:
        wait_for(lambda: text in self.log(), timeout=timeout, what=f"{text!r} in the worker's log")


class LineReader:
    """Read a child's output pipe line by line, every wait bounded (select on the raw fd)."""

    def __init__(self, stream: Any) -> None:
        self.fd = stream.fileno()
        self.buffer = b""
        self.lines: list[str] = []

    def until(self, text: str, *, timeout: float = 20.0) -> str:
        """Return the first line containing ``text``; fail after ``timeout`` seconds or at end of output."""
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\n", 1)
                line = raw.decode(errors="replace")
                self.lines.append(line)
                if text in line:
                    return line
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"No line with {text!r} within {timeout}s; got {self.lines[-5:]}")
            ready, _, _ = select.select([self.fd], [], [], remaining)
            if ready:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    raise AssertionError(f"Output ended before a line with {text!r}; got {self.lines[-5:]}")
                self.buffer += chunk


class PostgresCluster:
    """A throwaway PostgreSQL cluster of the test's own, to stop and start under a running service.

    ``initdb`` and ``pg_ctl`` run as the ``postgres`` user (PostgreSQL refuses
    to run as root), in a directory of its own under /tmp.
    """

    def __init__(self, *, bindir: Path) -> None:
        self.bindir = bindir
        self.port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="pgcluster-", dir="/tmp"))
        self.datadir = self.workdir / "data"
        self.log_path = self.workdir / "postgres.log"
        shutil.chown(self.workdir, user="postgres")
        self._as_postgres(
            str(bindir / "initdb"), "-D", str(self.datadir), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"
        )

    def url(self, database: str = "postgres") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.workdir} -c fsync=off"
        self._pg_ctl("start", "-w", "-t", "30", "-o", options, "-l", str(self.log_path))

    def stop(self) -> None:
        """Stop at once, as a crash or a failover would: sessions are terminated, nothing waits for clients."""
        self._pg_ctl("stop", "-w", "-t", "30", "-m", "fast")

    def running(self) -> bool:
        return (self.datadir / "postmaster.pid").exists()

    def destroy(self) -> None:
        if self.running():
            self._pg_ctl("stop", "-w", "-t", "30", "-m", "immediate")
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _pg_ctl(self, *args: str) -> None:
        self._as_postgres(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), *args)

    def _as_postgres(self, *command: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *command], check=True, capture_output=True, timeout=60)


def postgres_bindir() -> Path | None:
    """The newest PostgreSQL server binaries on this machine (Debian's layout), if any."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda path: int(path.parts[-3]))
    return candidates[-1].parent if candidates else None


@contextmanager
def started(command: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` from the project root, output and errors on one pipe; killed if left running."""
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        assert process.stdout is not None
        process.stdout.close()
