"""Execute agent runs from the queue (AGENT_EXECUTION=worker); stop cleanly on SIGTERM."""

import asyncio
import signal
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from agents.workers import aworker_serve
from config.signals import stop_signals_handled
from notifications.services import aconnections_close

EXIT_STOPPED_BY_ITSELF = 1


class Command(BaseCommand):
    help = (
        "Take agent runs from the queue and execute them, many at once. SIGTERM or Ctrl-C: take no new run, "
        "let the runs in progress finish for AGENT_WORKER_SHUTDOWN_GRACE_SECONDS, cancel the rest, exit 0; "
        "a second signal cancels them at once."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--concurrency",
            type=int,
            default=settings.AGENT_WORKER_CONCURRENCY,
            help="How many runs execute at once (AGENT_WORKER_CONCURRENCY, default %(default)s).",
        )
        parser.add_argument(
            "--queue",
            action="append",
            dest="queues",
            help="A queue to take runs from; repeat for several (AGENT_WORKER_QUEUES, default agents).",
        )
        parser.add_argument("--name", default=None, help="The worker's name in logs.")

    def handle(self, *args: Any, concurrency: int, queues: list[str] | None, name: str | None, **options: Any) -> None:
        if settings.AGENT_EXECUTION != "worker":
            raise CommandError(
                "AGENT_EXECUTION is not worker: web servers would execute runs themselves and queue none. "
                "Set AGENT_EXECUTION=worker for the web servers and the workers alike."
            )
        if concurrency < 1:
            raise CommandError("--concurrency must be at least 1.")
        queues = queues or list(settings.AGENT_WORKER_QUEUES)
        clean = asyncio.run(self._serve(concurrency=concurrency, queues=queues, name=name))
        if not clean:
            raise SystemExit(EXIT_STOPPED_BY_ITSELF)

    async def _serve(self, *, concurrency: int, queues: list[str], name: str | None) -> bool:
        stop, stop_now = asyncio.Event(), asyncio.Event()

        def interrupt(signum: signal.Signals, count: int) -> None:
            if count > 1:
                self.stderr.write("Interrupted again: cancelling the runs in progress now.")
                stop_now.set()
                return
            grace = settings.AGENT_WORKER_SHUTDOWN_GRACE_SECONDS
            self.stderr.write(
                f"Stopping: taking no new run; runs in progress get {grace:g} s to finish "
                "(interrupt again to cancel them now)."
            )
            stop.set()

        with stop_signals_handled(interrupt):
            try:
                self.stdout.write(f"Worker started: {concurrency} runs at once, queues {', '.join(queues)}.")
                self.stdout.flush()
                clean = await aworker_serve(
                    concurrency=concurrency, queues=queues, stop=stop, stop_now=stop_now, name=name
                )
                self.stdout.write("Worker stopped." if clean else "The worker stopped by itself.")
                return clean
            finally:
                await aconnections_close()
